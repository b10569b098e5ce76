import pytest

from synthaug.data import LabelSchema
from synthaug.plan import balance_counts, fixed_counts, load_plan, make_items, ratio_counts, save_plan


def test_balance_fills_to_largest_or_target():
    assert balance_counts([400, 100, 4]).tolist() == [0, 300, 396]
    assert balance_counts([400, 100, 4], target=150).tolist() == [0, 50, 146]


def test_fixed_and_ratio():
    assert fixed_counts(4, {3: 500, 2: 500}).tolist() == [0, 0, 500, 500]
    assert ratio_counts([400, 10, 4], 0.5).tolist() == [200, 5, 2]
    with pytest.raises(ValueError, match="out of range"):
        fixed_counts(3, {3: 1})
    with pytest.raises(ValueError, match="ratio"):
        ratio_counts([1], -1)


def test_items_have_stable_ids_and_seeds(tmp_path):
    schema = LabelSchema.single(["a", "b"])
    small = make_items(schema, [1, 2], seed=7)
    grown = make_items(schema, [3, 2], seed=7)
    assert [it.item_id for it in small] == ["a-00000", "b-00000", "b-00001"]
    by_id = {it.item_id: it for it in grown}
    assert all(by_id[it.item_id] == it for it in small), "growing a plan must keep existing items' seeds"
    assert len({it.seed for it in grown}) == len(grown)
    assert make_items(schema, [1, 2], seed=8)[0].seed != small[0].seed
    save_plan(grown, tmp_path / "plan.jsonl")
    assert load_plan(tmp_path / "plan.jsonl") == grown
