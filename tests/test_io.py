"""read_query end to end: the real PBMC 3k counts written in every supported format and read back."""

from __future__ import annotations

import gzip
from pathlib import Path

import anndata
import h5py
import numpy as np
import pandas as pd
import pytest
import scipy.io
import scipy.sparse as sp

from itclust_hub._errors import ItClustError
from itclust_hub._io import read_query

from _data import read

N_CELLS, N_TEXT_GENES = 300, 2000


@pytest.fixture(scope="module")
def source() -> anndata.AnnData:
    """The first 300 PBMC cells, all 32,738 genes, raw counts, symbols as var_names and Ensembl IDs."""
    adata = read("pbmc3k_raw_unlabeled")[:N_CELLS].copy()
    adata.var = adata.var[["gene_ids"]]
    adata.obs = adata.obs.iloc[:, :0]
    return adata


@pytest.fixture(scope="module")
def text_source(source) -> anndata.AnnData:
    """The 2,000 most detected genes, to keep dense text files small."""
    detected = np.asarray((source.X > 0).sum(axis=0)).ravel()
    return source[:, np.sort(np.argsort(-detected, kind="stable")[:N_TEXT_GENES])].copy()


def assert_same(read: anndata.AnnData, expected: anndata.AnnData, ids_column: str | None = "gene_ids") -> None:
    """Same cells, genes (symbols and Ensembl IDs) and counts."""
    assert read.shape == expected.shape
    assert list(read.obs_names) == list(expected.obs_names)
    assert list(read.var_names) == list(expected.var_names)
    if ids_column is not None:
        assert list(read.var[ids_column]) == list(expected.var["gene_ids"])
    difference = sp.csr_matrix(read.X) - sp.csr_matrix(expected.X)
    assert difference.count_nonzero() == 0


def write_10x_mtx(folder: Path, adata: anndata.AnnData, *, gz: bool, features: str, prefix: str = "") -> Path:
    """A 10x matrix folder: genes x cells MatrixMarket, features/genes table, barcodes."""
    folder.mkdir()
    ext = ".gz" if gz else ""
    with (gzip.open if gz else open)(folder / f"{prefix}matrix.mtx{ext}", "wb") as handle:
        scipy.io.mmwrite(handle, sp.coo_matrix(adata.X.T.astype(np.int64)))
    table = pd.DataFrame({"id": adata.var["gene_ids"], "name": adata.var_names})
    if features == "features":
        table["type"] = "Gene Expression"
    table.to_csv(folder / f"{prefix}{features}.tsv{ext}", sep="\t", header=False, index=False)
    pd.Series(adata.obs_names).to_csv(folder / f"{prefix}barcodes.tsv{ext}", header=False, index=False)
    return folder


def write_10x_h5(path: Path, adata: anndata.AnnData) -> Path:
    """A CellRanger v3 filtered_feature_bc_matrix.h5: genes x cells stored as CSC."""
    counts = sp.csr_matrix(adata.X)  # cells x genes CSR == genes x cells CSC
    with h5py.File(path, "w") as f:
        m = f.create_group("matrix")
        m["barcodes"] = np.array(adata.obs_names, dtype="S")
        m["data"] = counts.data.astype(np.int32)
        m["indices"] = counts.indices.astype(np.int64)
        m["indptr"] = counts.indptr.astype(np.int64)
        m["shape"] = np.array([adata.n_vars, adata.n_obs], dtype=np.int32)
        feats = m.create_group("features")
        feats["id"] = np.array(adata.var["gene_ids"], dtype="S")
        feats["name"] = np.array(adata.var_names, dtype="S")
        feats["feature_type"] = np.array(["Gene Expression"] * adata.n_vars, dtype="S")
        feats["genome"] = np.array(["GRCh38"] * adata.n_vars, dtype="S")
        feats["_all_tag_keys"] = np.array([b"genome"])
    return path


def write_loompy(path: Path, adata: anndata.AnnData) -> Path:
    """A loom in loompy's own convention: row attrs Gene/Accession, col attr CellID."""
    import loompy

    loompy.create(
        str(path),
        sp.coo_matrix(adata.X.T),
        row_attrs={"Gene": np.array(adata.var_names), "Accession": np.array(adata.var["gene_ids"])},
        col_attrs={"CellID": np.array(adata.obs_names)},
    )
    return path


# ---- every reader path --------------------------------------------------------------------------


def test_h5ad(source, tmp_path):
    source.write_h5ad(tmp_path / "q.h5ad")
    assert_same(read_query(tmp_path / "q.h5ad"), source)


def test_h5ad_backed_keeps_x_on_disk(source, tmp_path):
    source.write_h5ad(tmp_path / "q.h5ad")
    adata = read_query(str(tmp_path / "q.h5ad"), backed=True)
    assert adata.isbacked and adata.file.is_open
    assert_same(adata.to_memory(), source)
    adata.file.close()


@pytest.mark.parametrize(
    ("gz", "features", "prefix", "point_at_matrix"),
    [(True, "features", "", False), (False, "genes", "", False), (True, "genes", "GSM1_", True)],
    ids=["v3-gz-features", "v2-plain-genes", "geo-prefixed-matrix-file"],
)
def test_10x_mtx(source, tmp_path, gz, features, prefix, point_at_matrix):
    folder = write_10x_mtx(tmp_path / "mtx", source, gz=gz, features=features, prefix=prefix)
    path = folder / f"{prefix}matrix.mtx{'.gz' if gz else ''}" if point_at_matrix else folder
    adata = read_query(path)
    assert_same(adata, source)
    assert adata.var["gene_ids"].str.startswith("ENSG").all()


def test_10x_h5(source, tmp_path):
    assert_same(read_query(write_10x_h5(tmp_path / "filtered_feature_bc_matrix.h5", source)), source)


def test_loom_loompy_convention(source, tmp_path):
    pytest.importorskip("loompy", reason="reading .loom needs loompy")
    assert_same(read_query(write_loompy(tmp_path / "q.loom", source)), source, ids_column="Accession")


def test_loom_written_by_anndata(source, tmp_path):
    pytest.importorskip("loompy", reason="reading .loom needs loompy")
    source.write_loom(tmp_path / "q.loom")
    assert_same(read_query(tmp_path / "q.loom"), source)


def test_text_csv_cells_by_genes(text_source, tmp_path):
    text_source.to_df().to_csv(tmp_path / "q.csv")
    assert_same(read_query(tmp_path / "q.csv"), text_source, ids_column=None)


def test_text_tsv_gz_genes_by_cells_with_ensembl_and_symbols(text_source, tmp_path):
    table = text_source.to_df().T
    table.insert(0, "gene_symbols", table.index)
    table.index = text_source.var["gene_ids"].rename("gene_ids")
    table.to_csv(tmp_path / "q.tsv.gz", sep="\t")
    adata = read_query(tmp_path / "q.tsv.gz")
    expected = text_source.copy()
    expected.var_names = expected.var["gene_ids"]
    assert_same(adata, expected, ids_column=None)
    assert list(adata.var["gene_symbols"]) == list(text_source.var_names)


@pytest.mark.filterwarnings("ignore:Observation names are not unique")
def test_text_orientation_guessed_from_shape_and_forced_by_transpose(tmp_path):
    counts = np.arange(50 * 10).reshape(50, 10)
    genes = ["GENE0", "GENE0"] + [f"GENE{i}" for i in range(2, 50)]
    pd.DataFrame(counts, index=genes, columns=[f"cell{i}" for i in range(10)]).to_csv(tmp_path / "q.txt", sep="\t")
    guessed = read_query(tmp_path / "q.txt")
    assert guessed.shape == (10, 50) and list(guessed.var_names[:3]) == ["GENE0", "GENE0-1", "GENE2"]
    np.testing.assert_array_equal(guessed.X.toarray(), counts.T)
    forced = read_query(tmp_path / "q.txt", transpose=False)
    assert forced.shape == (50, 10) and forced.var_names[0] == "cell0"


def test_layer_and_raw(source, tmp_path):
    normalized = source.copy()
    normalized.layers["counts"] = source.X.copy()
    normalized.raw = source
    normalized.X = source.X.multiply(0.5).tocsr()
    normalized.write_h5ad(tmp_path / "q.h5ad")
    assert_same(read_query(tmp_path / "q.h5ad", layer="counts"), source)
    assert_same(read_query(tmp_path / "q.h5ad", use_raw=True), source)
    assert_same(read_query(tmp_path / "q.h5ad"), normalized)


# ---- bad input: one clear ItClustError each ----------------------------------------------------


def raises(match: str):
    return pytest.raises(ItClustError, match=match)


def test_missing_path(tmp_path):
    with raises("does not exist"):
        read_query(tmp_path / "nope.h5ad")


@pytest.mark.parametrize("name", ["q.h5ad", "q.csv", "q.loom"])
def test_empty_file(tmp_path, name):
    (tmp_path / name).touch()
    with raises(r"is empty \(0 bytes\)"):
        read_query(tmp_path / name)


def test_truncated_h5ad(source, tmp_path):
    source.write_h5ad(tmp_path / "full.h5ad")
    data = (tmp_path / "full.h5ad").read_bytes()
    (tmp_path / "cut.h5ad").write_bytes(data[: len(data) // 2])
    with raises(r"cannot read .*cut\.h5ad as h5ad .*not truncated\)"):
        read_query(tmp_path / "cut.h5ad")


def test_truncated_gz_text(text_source, tmp_path):
    text_source.to_df().to_csv(tmp_path / "full.csv.gz")
    data = (tmp_path / "full.csv.gz").read_bytes()
    (tmp_path / "cut.csv.gz").write_bytes(data[: len(data) // 2])
    with raises(r"cannot read .*cut\.csv\.gz as text"):
        read_query(tmp_path / "cut.csv.gz")


def test_truncated_10x_matrix(source, tmp_path):
    folder = write_10x_mtx(tmp_path / "mtx", source, gz=True, features="features")
    matrix = folder / "matrix.mtx.gz"
    matrix.write_bytes(matrix.read_bytes()[:2000])
    with raises("cannot read .* as 10x-mtx"):
        read_query(folder)


def test_text_without_gene_names(tmp_path):
    np.savetxt(tmp_path / "q.csv", np.arange(60).reshape(6, 10), delimiter=",", fmt="%d")
    with raises("has no gene names"):
        read_query(tmp_path / "q.csv")


def test_h5ad_without_gene_names(tmp_path):
    anndata.AnnData(sp.csr_matrix(np.ones((4, 5), dtype=np.float32))).write_h5ad(tmp_path / "q.h5ad")
    with raises("has no gene names"):
        read_query(tmp_path / "q.h5ad")


@pytest.mark.parametrize(("remove", "named"), [("matrix.mtx.gz", "matrix.mtx"), ("features.tsv.gz", "features.tsv"), ("barcodes.tsv.gz", "barcodes.tsv")])
def test_10x_folder_missing_a_file(source, tmp_path, remove, named):
    folder = write_10x_mtx(tmp_path / "mtx", source, gz=True, features="features")
    (folder / remove).unlink()
    with raises(named):
        read_query(folder)


@pytest.mark.parametrize(("table", "message"), [("barcodes", "lists 299 barcodes but matrix.mtx has 300 columns"), ("genes", "lists 32737 genes but matrix.mtx has 32738 rows")])
def test_10x_mismatched_dimensions(source, tmp_path, table, message):
    folder = write_10x_mtx(tmp_path / "mtx", source, gz=False, features="genes")
    lines = (folder / f"{table}.tsv").read_text().splitlines()
    (folder / f"{table}.tsv").write_text("\n".join(lines[:-1]) + "\n")
    with raises(message):
        read_query(folder)


def test_10x_h5_mismatched_dimensions(source, tmp_path):
    path = write_10x_h5(tmp_path / "q.h5", source)
    with h5py.File(path, "a") as f:
        barcodes = f["matrix/barcodes"][:-1]
        del f["matrix/barcodes"]
        f["matrix/barcodes"] = barcodes
    with raises(r"cannot read .* as 10x-h5 \(.*300.*299"):
        read_query(path)


def test_10x_h5_missing_a_dataset(source, tmp_path):
    path = write_10x_h5(tmp_path / "q.h5", source)
    with h5py.File(path, "a") as f:
        del f["matrix/indptr"]
    with raises(r"cannot read .* as 10x-h5 \(File is missing one or more required datasets"):
        read_query(path)


def test_unknown_extension(tmp_path):
    (tmp_path / "q.xlsx").write_bytes(b"PK")
    with raises(r"unknown file type '\.xlsx'.*\.h5ad.*format="):
        read_query(tmp_path / "q.xlsx")


def test_format_override_and_bad_format(source, tmp_path):
    source.write_h5ad(tmp_path / "q.bin")
    assert_same(read_query(tmp_path / "q.bin", format="h5ad"), source)
    with raises("unknown format='excel'; use one of h5ad, 10x-mtx"):
        read_query(tmp_path / "q.bin", format="excel")


def test_layer_not_found_lists_layers(source, tmp_path):
    adata = source.copy()
    adata.layers["spliced"] = adata.X
    adata.write_h5ad(tmp_path / "q.h5ad")
    with raises("layer 'counts' not found; available layers: spliced"):
        read_query(tmp_path / "q.h5ad", layer="counts")


def test_use_raw_without_raw(source, tmp_path):
    source.write_h5ad(tmp_path / "q.h5ad")
    with raises("no .raw"):
        read_query(tmp_path / "q.h5ad", use_raw=True)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"backed": True, "format": "text"}, "backed=True works for .h5ad only"),
        ({"backed": True, "layer": "counts"}, "backed=True reads .X only"),
        ({"layer": "counts", "use_raw": True}, "not both"),
        ({"transpose": True}, "transpose= applies to text matrices only"),
    ],
)
def test_conflicting_options(source, tmp_path, options, message):
    source.write_h5ad(tmp_path / "q.h5ad")
    with raises(message):
        read_query(tmp_path / "q.h5ad", **options)


def test_source_file_is_not_modified(source, tmp_path):
    path = tmp_path / "q.h5ad"
    source.write_h5ad(path)
    before = path.read_bytes()
    read_query(path, backed=True).file.close()
    read_query(path).X.data[:] = 0
    assert path.read_bytes() == before
