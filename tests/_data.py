"""Real data for tests: files shipped in ``examples/`` are read from there, the rest from the data folder
(the ``ITCLUST_HUB_DATA`` environment variable, default ../shared/data). A test whose file is absent skips
with a reason naming it, or fails under CI (``CI=true``); ``conftest.py`` sums the skips up in one line."""

from __future__ import annotations

import functools
import os
from pathlib import Path

import anndata as ad
import pytest

from training.recipe import DATA_DIR as DATA
from training.recipe import DATA_ENV

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
ABSENT = "real data absent: "  # the start of every skip reason for a missing file (counted by conftest.py)


def in_ci() -> bool:
    """Whether the tests run under CI (``CI`` set to true, as CI services do)."""
    return os.environ.get("CI", "").strip().lower() in ("true", "1", "yes")


def path(file: str) -> Path:
    """Where the data file ``file`` is (``examples/`` first); skips the test when it is absent (fails under CI)."""
    for folder in (EXAMPLES, DATA):
        if (folder / file).is_file():
            return folder / file
    reason = f"{ABSENT}{file} not in {DATA}"
    if in_ci():
        pytest.fail(f"{reason}; under CI every data file must be present (set {DATA_ENV} to the data folder)")
    pytest.skip(reason)


def read(name: str) -> ad.AnnData:
    """A copy of ``name``.h5ad (see :func:`path`), read once per test session."""
    return _read(path(f"{name}.h5ad")).copy()


@functools.lru_cache(maxsize=None)
def _read(file: Path) -> ad.AnnData:
    return ad.read_h5ad(file)


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
    from itclust_hub._transfer import FineTuning, fine_tune

    data = prepare_query(query, genes=model.genes, gene_ids=model.gene_ids, organism=model.organism,
                         recipe=model.recipe).data
    outcome = fine_tune(model.encoder, model.centroids, data, FineTuning(max_iter=max_iter), seed=0, progress=False)
    return outcome, data.rows(slice(None)).double().numpy()
