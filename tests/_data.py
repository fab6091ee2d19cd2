"""Real data for tests, read from ../shared/data; tests skip with a reason when it is absent."""

from __future__ import annotations

import functools
from pathlib import Path

import anndata as ad
import pytest

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def read(name: str) -> ad.AnnData:
    """Read ``name``.h5ad from the shared data folder, or skip the test."""
    path = DATA / f"{name}.h5ad"
    if not path.exists():
        pytest.skip(f"real data {path} is absent")
    return _read(path).copy()


@functools.lru_cache(maxsize=None)
def _read(path: Path) -> ad.AnnData:
    return ad.read_h5ad(path)


@functools.lru_cache(maxsize=None)
def _small_reference(donors: tuple[str, ...]):
    import itclust_hub as ih

    human = read("baron_human_pancreas")
    ref = human[human.obs["donor"].isin(donors)].copy()
    return ih.train_reference(ref, "cell_type1", "test-pancreas", small_types="drop", seed=0, progress=False)


def small_reference(donors=("human1", "human2")):
    """A reference with default settings trained on two Baron human donors (trained once per test session)."""
    read("baron_human_pancreas")
    return _small_reference(tuple(donors))


def fine_tuned(model, query, *, max_iter: int):
    """``query`` prepared for ``model`` and fine-tuned (test settings): the outcome and the scaled rows, dense."""
    from itclust_hub._query import prepare_query
    from itclust_hub._transfer import fine_tune

    data = prepare_query(query, genes=model.genes, gene_ids=model.gene_ids, organism=model.organism,
                         recipe=model.recipe).data
    outcome = fine_tune(model.encoder, model.centroids, data, tol=0.003, max_iter=max_iter, epochs_per_iter=1,
                        batch_size=256, lr=0.01, seed=0, progress=False)
    return outcome, data.rows(slice(None)).double().numpy()
