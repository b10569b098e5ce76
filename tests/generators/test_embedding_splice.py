"""MVC embedding splicing (Algorithm 1): shapes, provenance of every value, determinism."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from synthaug.generators.embedding_splice import splice_embeddings


def _class_embeddings(n: int, m: int = 7, d: int = 5, offset: float = 0.0) -> torch.Tensor:
    """n embeddings, embedding i filled with the constant offset + i, so a value names its source."""
    return offset + torch.arange(n, dtype=torch.float32).view(n, 1, 1).expand(n, m, d).clone()


@pytest.mark.parametrize("coarse,fine", [(0, 0), (1, 0), (0, 3), (2, 5), (10, 40)])
def test_values_come_only_from_the_class_and_shape_is_kept(coarse, fine):
    cat, dog = _class_embeddings(4), _class_embeddings(3, offset=100.0)
    for seed in range(20):
        out = splice_embeddings(cat, coarse_steps=coarse, fine_steps=fine, rng=np.random.default_rng(seed))
        assert out.embedding.shape == cat.shape[1:]
        values = set(out.embedding.unique().tolist())
        assert values <= set(range(4)), "a value was copied from outside the class"
        assert values.isdisjoint(dog.unique().tolist())
        assert values <= set(out.sources), "a value's source is not recorded"
        assert len(out.sources) <= 1 + coarse + fine


def test_no_mixing_returns_one_original_unchanged():
    emb = torch.randn(5, 7, 6)
    for seed in range(10):
        out = splice_embeddings(emb, coarse_steps=0, fine_steps=0, rng=np.random.default_rng(seed))
        assert len(out.sources) == 1
        assert torch.equal(out.embedding, emb[out.sources[0]])
    assert out.embedding.data_ptr() != emb[out.sources[0]].data_ptr(), "the input must not be aliased"


def test_coarse_copies_whole_rows_and_fine_copies_part_of_one_row():
    emb = _class_embeddings(2, m=9, d=8)
    rng = np.random.default_rng(0)
    coarse = splice_embeddings(emb, coarse_steps=1, fine_steps=0, rng=rng, start=0).embedding
    changed_rows = (coarse != 0).any(dim=1)
    assert changed_rows.any() and torch.equal((coarse != 0).all(dim=1), changed_rows)  # whole rows
    idx = changed_rows.nonzero().flatten()
    assert torch.equal(idx, torch.arange(idx[0], idx[-1] + 1))  # one contiguous block r:s
    fine = splice_embeddings(emb, coarse_steps=0, fine_steps=1, rng=rng, start=0).embedding
    rows, cols = (fine != 0).nonzero(as_tuple=True)
    assert len(rows.unique()) == 1  # one row w
    assert torch.equal(cols, torch.arange(cols[0], cols[-1] + 1))  # columns u:v


def test_same_rng_seed_gives_same_embedding_and_input_is_untouched():
    emb = torch.randn(6, 7, 5)
    before = emb.clone()
    a = splice_embeddings(emb, coarse_steps=3, fine_steps=4, rng=np.random.default_rng(42))
    b = splice_embeddings(emb, coarse_steps=3, fine_steps=4, rng=np.random.default_rng(42))
    c = splice_embeddings(emb, coarse_steps=3, fine_steps=4, rng=np.random.default_rng(43))
    assert torch.equal(a.embedding, b.embedding) and a.sources == b.sources
    assert not torch.equal(a.embedding, c.embedding)
    assert torch.equal(emb, before)


def test_single_embedding_class_and_bad_arguments():
    emb = torch.randn(1, 4, 3)
    out = splice_embeddings(emb, coarse_steps=3, fine_steps=3, rng=np.random.default_rng(0))
    assert torch.equal(out.embedding, emb[0]) and out.sources == (0,)
    with pytest.raises(ValueError, match="coarse_steps"):
        splice_embeddings(emb, coarse_steps=-1, fine_steps=0, rng=np.random.default_rng(0))
    with pytest.raises(ValueError, match="shape"):
        splice_embeddings(torch.randn(4, 3), coarse_steps=0, fine_steps=0, rng=np.random.default_rng(0))
    with pytest.raises(ValueError, match="start"):
        splice_embeddings(emb, coarse_steps=0, fine_steps=0, rng=np.random.default_rng(0), start=1)
