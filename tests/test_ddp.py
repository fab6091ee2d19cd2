"""Training from a backed (on-disk) AnnData, in one process and data-parallel under torchrun: statistics
summed chunk by chunk select what scanpy selects, a backed atlas trains to the same bytes as in memory, and
two CPU processes (gloo) on two Baron donors reach the quality of single-process training on the third."""

import subprocess
import sys

import anndata as ad
import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import accuracy_score

import itclust_hub as ih
from itclust_hub._errors import ItClustError

from _data import read

SETTINGS = dict(small_types="drop", pretrain_epochs=5, epochs=30, seed=0, progress=False)


@pytest.fixture(scope="module")
def donors(tmp_path_factory):
    """Donors human1 + human2 written to an .h5ad (the atlas), and donor human3 (the query)."""
    human = read("baron_human_pancreas")
    path = tmp_path_factory.mktemp("atlas") / "atlas.h5ad"
    atlas = human[human.obs["donor"].isin(["human1", "human2"])].copy()
    atlas.write_h5ad(path)
    return atlas, path, human[human.obs["donor"] == "human3"].copy()


def test_chunked_statistics_select_what_scanpy_selects(donors, monkeypatch):
    import scanpy as sc

    from itclust_hub import _atlas
    from itclust_hub._preprocess import Recipe, as_csr, lognormalize

    atlas, _, _ = donors
    monkeypatch.setattr(_atlas, "CHUNK_CELLS", 100)  # many chunks, summed
    recipe = Recipe()
    scanned = _atlas.scan_atlas(atlas, np.zeros(atlas.n_obs, dtype=np.int64), ["any"], recipe)
    cells = atlas[scanned.cells]
    X = as_csr(cells.X)
    qc = ~cells.var_names.str.upper().str.startswith(("ERCC", "MT-")) & (np.bincount(X.indices, minlength=X.shape[1]) >= 10)
    logged = sc.AnnData(lognormalize(X[:, qc], "counts", 1e4), var=pd.DataFrame(index=cells.var_names[qc]))
    sc.pp.highly_variable_genes(logged, n_top_genes=recipe.n_top_genes, flavor="seurat")
    assert scanned.genes == list(logged.var_names[logged.var["highly_variable"].to_numpy()])
    scaled_input = scanned.in_memory().X.toarray()
    np.testing.assert_allclose(scanned.mean, scaled_input.mean(axis=0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(scanned.std, scaled_input.std(axis=0, ddof=1), rtol=1e-4, atol=1e-6)


def _same_tensors(a, b) -> bool:
    return a.tensors().keys() == b.tensors().keys() and all(
        np.array_equal(v.numpy(), b.tensors()[k].numpy()) for k, v in a.tensors().items())


def test_backed_atlas_streams_to_the_same_reference(donors):
    atlas, path, _ = donors
    one = atlas[atlas.obs["donor"] == "human2"].copy()
    one_path = path.with_name("human2.h5ad")
    one.write_h5ad(one_path)
    settings = dict(SETTINGS, pretrain_epochs=2, epochs=5)
    in_memory = ih.train_reference(one, "cell_type1", "x", **settings)
    backed = ad.read_h5ad(one_path, backed="r")
    streamed = ih.train_reference(backed, "cell_type1", "x", **settings)
    assert backed.isbacked and streamed.genes == in_memory.genes
    assert _same_tensors(streamed, in_memory)


def test_two_processes_match_single_process_quality(donors, tmp_path):
    atlas, path, query = donors
    command = [sys.executable, "-c", "from itclust_hub.cli import main; main()", "train", str(path),
               "--label-key", "cell_type1", "--name", "ddp-test", "-o", str(tmp_path / "ddp"), "--small-types", "drop",
               "--pretrain-epochs", "5", "--epochs", "30", "--processes", "2", "--no-progress"]
    run = subprocess.run(command, capture_output=True, text=True, timeout=180)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "Trained ddp-test on 2 processes" in run.stdout
    ddp = ih.ItClust.from_pretrained(tmp_path / "ddp")
    single = ih.train_reference(atlas, "cell_type1", "single", **SETTINGS)
    assert ddp.config.training["processes"] == 2 and single.config.training["processes"] == 1
    # statistics summed across the processes' chunks select the same genes and types
    assert ddp.genes == single.genes and ddp.cell_types == single.cell_types
    np.testing.assert_allclose(ddp.type_profiles.numpy(), single.type_profiles.numpy(), atol=1e-4)
    truth = query.obs["cell_type1"].astype(str)
    scores = [accuracy_score(truth, m.transfer(query, progress=False).obs["nearest_label"]) for m in (ddp, single)]
    assert min(scores) >= 0.85 and abs(scores[0] - scores[1]) <= 0.04, scores


def test_distributed_outside_torchrun_is_a_one_line_error(donors, monkeypatch):
    atlas, _, _ = donors
    for var in ("RANK", "WORLD_SIZE"):
        monkeypatch.delenv(var, raising=False)
    with pytest.raises(ItClustError, match="torchrun") as info:
        ih.train_reference(atlas, "cell_type1", "x", distributed=True, **SETTINGS)
    assert "\n" not in str(info.value)
