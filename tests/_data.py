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
