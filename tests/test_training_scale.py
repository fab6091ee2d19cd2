"""Training on a large atlas, at CI size on real Baron human cells (``LARGE_ATLAS`` and the chunk lowered so
the large-atlas schedule runs on a few thousand cells): its cost counts cells seen, not the atlas's size; a
backed atlas is read in chunks of consecutive rows, never row by row per minibatch, and trains to the same
reference as in memory; and training memory does not grow with the atlas (20k vs 80k backed cells, measured
in fresh processes)."""

import json
import subprocess
import sys
import textwrap
from unittest import mock

import anndata as ad
import numpy as np
import pytest
import scipy.sparse as sp
import torch

import itclust_hub as ih
from itclust_hub import _atlas, _train

from _data import read

SETTINGS = dict(small_types="drop", hidden_dims=[64, 32], pretrain_epochs=2, epochs=4, patience=2, seed=0, progress=False)
LARGE, PRETRAIN, CHUNK = 1000, 800, 256


def resampled(n_cells: int, seed: int = 0, thinned: bool = True) -> ad.AnnData:
    """``n_cells`` Baron human cells drawn with replacement, each cell's counts binomially thinned to 40-100%
    (``thinned``; without, copies of the cells: enough to measure memory, and quick at 80k cells)."""
    human = read("baron_human_pancreas")
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, human.n_obs, n_cells)
    X = sp.csr_matrix(human.X, dtype=np.float32)[picks]
    if thinned:
        X.data = rng.binomial(X.data.astype(np.int64), np.repeat(rng.uniform(0.4, 1.0, n_cells), np.diff(X.indptr)))
        X.data = X.data.astype(np.float32)
        X.eliminate_zeros()
    obs = human.obs[["cell_type1"]].iloc[picks].set_axis([f"c{i}" for i in range(n_cells)])
    return ad.AnnData(X, obs=obs, var=human.var[[]].copy())


@pytest.fixture
def large(monkeypatch):
    monkeypatch.setattr(_train, "LARGE_ATLAS", LARGE)
    monkeypatch.setattr(_train, "SAMPLE_CELLS", PRETRAIN)
    monkeypatch.setattr(_train, "CHUNK_CELLS", CHUNK)
    monkeypatch.setattr(_atlas, "CHUNK_CELLS", CHUNK)


def _steps(adata) -> tuple[int, int, ih.ItClust]:
    """Optimizer steps of pretraining (SGD) and supervised training (Adam) while training on ``adata``, and
    the reference (no early stop: every epoch runs)."""
    with mock.patch.object(torch.optim.SGD, "step", autospec=True, side_effect=torch.optim.SGD.step) as sgd, \
            mock.patch.object(torch.optim.Adam, "step", autospec=True, side_effect=torch.optim.Adam.step) as adam:
        model = ih.train_reference(adata, "cell_type1", "x", **dict(SETTINGS, patience=100))
    return sgd.call_count, adam.call_count, model


def test_large_atlas_cost_counts_cells_not_atlas_size(large):
    one = _steps(resampled(2000))
    two = _steps(ad.concat([resampled(2000), resampled(2000, seed=1)], index_unique="-"))
    assert abs(one[0] - two[0]) <= 3 and abs(one[1] - two[1]) <= 4, (one[:2], two[:2])  # a minibatch per stage or epoch
    # 3 stages (2 layers, then end to end) x 2 epochs of 800 cells in minibatches of about 256 within a
    # chunk; 4 epochs of the 750 cells a 1000-cell atlas trains on (250 validate)
    assert 3 * 2 * PRETRAIN / 256 <= one[0] <= 3 * 2 * PRETRAIN / 128 + 3
    assert 4 * 750 / 256 <= one[1] <= 4 * 750 / 128 + 4
    recorded = dict(two[2].config.training["large_atlas"])
    # the imputation model's covariances from evenly spaced chunks of about LARGE cells (the last one shorter)
    assert LARGE - CHUNK < recorded.pop("covariance_cells") <= LARGE + CHUNK
    assert recorded == dict(pretrain_cells_per_stage=2 * PRETRAIN, cells_per_epoch=750, validation_cells=250,
                            max_epochs=4, chunk_cells=CHUNK)  # 4 x 800 cells would allow 5 epochs of 750


def test_large_atlas_supervised_training_stops_after_epochs_times_sample_cells(large, monkeypatch):
    monkeypatch.setattr(_train, "SAMPLE_CELLS", 300)
    _, adam, model = _steps(resampled(2000))
    # 4 epochs x 300 cells = 1,200 cells: two epochs of the 750 cells a 1000-cell atlas trains on
    assert model.config.training["epochs_run"] == model.config.training["large_atlas"]["max_epochs"] == 2
    assert model.config.training["epochs"] == 4  # what was asked stays recorded
    assert 2 * 750 / 256 <= adam <= 2 * 750 / 128 + 2


def test_large_backed_atlas_is_read_in_chunks_and_trains_as_in_memory(large, tmp_path, monkeypatch):
    adata = resampled(2000)
    path = tmp_path / "atlas.h5ad"
    adata.write_h5ad(path)
    in_memory = ih.train_reference(adata, "cell_type1", "x", **SETTINGS)
    reads = []  # how every block of rows read from the backed matrix was indexed
    backed = ad.read_h5ad(path, backed="r")
    dataset = type(backed.X)
    getitem = dataset.__getitem__
    monkeypatch.setattr(dataset, "__getitem__", lambda self, index: reads.append(index) or getitem(self, index))
    streamed = ih.train_reference(backed, "cell_type1", "x", **SETTINGS)
    assert streamed.genes == in_memory.genes
    assert all(np.array_equal(v.numpy(), in_memory.tensors()[k].numpy()) for k, v in streamed.tensors().items())
    by_row = sum(len(np.atleast_1d(index)) for index in reads if not isinstance(index, slice))
    # one array read: the validation sample (250 cells); every other read a slice of at most one chunk
    assert by_row <= 250 + 1, by_row
    assert sum(isinstance(index, slice) for index in reads) >= 3 * 2 * PRETRAIN / CHUNK


MEMORY_SCRIPT = textwrap.dedent("""
    import json, sys
    import anndata as ad
    import itclust_hub as ih
    from itclust_hub import _train

    _train.LARGE_ATLAS, _train.SAMPLE_CELLS = 5_000, 5_000
    def rss(key):
        with open("/proc/self/status") as status:
            return next(int(line.split()[1]) * 1024 for line in status if line.startswith(key))
    adata = ad.read_h5ad(sys.argv[1], backed="r")
    before = rss("VmRSS:")
    ih.train_reference(adata, "cell_type1", "x", small_types="drop", hidden_dims=[64, 32],
                       pretrain_epochs=1, epochs=1, seed=0, progress=False)
    print(json.dumps({"before": before, "peak": rss("VmHWM:")}))
""")


def test_training_memory_does_not_grow_with_the_atlas(tmp_path):
    growth, runs = {}, {}
    for n in (20_000, 80_000):  # each trains in a fresh process of its own, the two at once
        path = tmp_path / f"atlas-{n}.h5ad"
        resampled(n, seed=n, thinned=False).write_h5ad(path)
        runs[n] = subprocess.Popen([sys.executable, "-c", MEMORY_SCRIPT, str(path)], stdout=subprocess.PIPE,
                                   stderr=subprocess.PIPE, text=True)
    for n, run in runs.items():
        stdout, stderr = run.communicate(timeout=600)
        assert run.returncode == 0, stderr[-2000:]
        measured = json.loads(stdout.strip().splitlines()[-1])
        growth[n] = measured["peak"] - measured["before"]
    # 4x the cells: per-cell vectors (a few bytes each) may add a few MB, nothing in proportion to the cells
    assert growth[80_000] <= growth[20_000] * 1.15 + 16 * 2**20, growth
