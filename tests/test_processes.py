"""synthaug/processes.py: the one Processes type; generation also takes accelerate's PartialState."""

from synthaug.data import LabelSchema
from synthaug.generators import create_generator, fill_store
from synthaug.plan import make_items
from synthaug.processes import Processes
from synthaug.store import SyntheticStore


def test_fill_store_takes_accelerates_partial_state(tmp_path):
    from accelerate import PartialState

    state = PartialState(cpu=True)  # what accelerate gives a plain process; bench/store.py passes it
    assert (Processes.of(state).index, Processes.of(state).count) == (0, 1) and Processes.of(None) == Processes()
    schema = LabelSchema.single(["a", "b"], name="class")
    items = make_items(schema, [2, 3], seed=0)
    gen = create_generator("noise", {"image_size": 8, "channels": 1}, schema)
    stores = {}
    for name, processes in (("alone", None), ("partial-state", state), ("processes", Processes())):
        stores[name] = SyntheticStore(tmp_path / name, schema)
        assert fill_store(gen, items, stores[name], batch_size=2, progress=False, processes=processes) == 5
    made = {name: sorted((r["item_id"], r["seed"]) for r in store.records()) for name, store in stores.items()}
    assert made["alone"] == sorted((it.item_id, it.seed) for it in items)
    assert made["partial-state"] == made["processes"] == made["alone"]
