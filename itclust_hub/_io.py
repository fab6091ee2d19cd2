"""Read a query from any common single-cell file format into an AnnData (cells x genes).

Formats: ``.h5ad``, a 10x Genomics matrix folder (CellRanger v2 or v3, gzipped or not), a 10x ``.h5``,
``.loom`` and delimited text (``.csv``/``.tsv``/``.txt``, optionally ``.gz``). Every bad input raises
:class:`ItClustError` with a one-line reason; the file is never modified.
"""

from __future__ import annotations

import gzip
import logging
import warnings
from pathlib import Path

import anndata
import h5py
import pandas as pd
import scanpy as sc
import scipy.sparse as sp

from ._errors import ItClustError
from ._genes import looks_like_ensembl
from ._query import _matrix

FORMATS = ("h5ad", "10x-mtx", "10x-h5", "loom", "text")
_SUFFIX_FORMATS = {".h5ad": "h5ad", ".h5": "10x-h5", ".loom": "loom", ".csv": "text", ".tsv": "text", ".txt": "text"}
_MTX_NAMES = ("matrix.mtx.gz", "matrix.mtx")
_FEATURE_NAMES = ("features.tsv.gz", "features.tsv", "genes.tsv.gz", "genes.tsv")
_BARCODE_NAMES = ("barcodes.tsv.gz", "barcodes.tsv")
_LOOM_GENE_ATTRS = ("Gene", "var_names", "gene_symbols", "gene_name", "gene", "index")
_LOOM_CELL_ATTRS = ("CellID", "obs_names", "barcode", "cell", "index")
_BARCODE = r"[ACGTN]{8,}"
logger = logging.getLogger(__name__)


def read_query(path, *, format=None, layer=None, use_raw=False, transpose=None, backed=False) -> anndata.AnnData:
    """Read a query dataset from disk as an AnnData with cells as rows.

    Parameters
    ----------
    path
        An ``.h5ad``; a 10x Genomics matrix folder (``matrix.mtx[.gz]`` with ``features.tsv[.gz]`` or
        ``genes.tsv[.gz]`` and ``barcodes.tsv[.gz]``, file names may share a prefix such as ``GSM1_``)
        or the path of its matrix file; a 10x ``.h5`` (CellRanger v2 or v3); a ``.loom``; or a
        delimited text matrix ``.csv``/``.tsv``/``.txt`` (optionally ``.gz``) whose first row and
        first column hold the labels. The delimiter of text is taken from the first line (tab, comma,
        else whitespace).
    format
        Override the format detected from ``path``: one of ``"h5ad"``, ``"10x-mtx"``, ``"10x-h5"``,
        ``"loom"``, ``"text"``.
    layer
        Return ``adata.layers[layer]`` as ``.X`` (e.g. ``"counts"``).
    use_raw
        Return ``adata.raw`` (its ``X`` and ``var``) instead of ``.X``.
    transpose
        Text only. ``True``: the file is genes x cells (genes are rows); ``False``: cells x genes.
        ``None`` guesses: the axis whose labels are mostly Ensembl IDs is genes; otherwise the axis
        whose labels are mostly cell barcodes (runs of 8+ A/C/G/T/N) or numbers is cells; otherwise
        the longer axis is genes (more rows than columns means genes x cells).
    backed
        ``.h5ad`` only: open in backed ``'r'`` mode, leaving ``.X`` on disk.

    Returns
    -------
    AnnData, cells x genes. For 10x input ``var_names`` are gene symbols made unique and
    ``var["gene_ids"]`` the Ensembl IDs; other formats keep the names and ``var`` columns they carry.
    """
    path = Path(path).expanduser()
    if not path.exists():
        raise ItClustError(f"{path} does not exist; give an .h5ad, .loom, 10x .h5, 10x matrix folder or .csv/.tsv/.txt file")
    fmt = format if format is not None else detect_format(path)
    if fmt not in FORMATS:
        raise ItClustError(f"unknown format={fmt!r}; use one of {', '.join(FORMATS)}")
    if transpose is not None and fmt != "text":
        raise ItClustError(f"transpose= applies to text matrices only, not {fmt}; drop it")
    if backed and fmt != "h5ad":
        raise ItClustError(f"backed=True works for .h5ad only, not {fmt}; drop backed or convert the file to .h5ad")
    if backed and (layer is not None or use_raw):
        raise ItClustError("backed=True reads .X only; drop backed to use layer= or use_raw=")
    if layer is not None and use_raw:
        raise ItClustError("pass layer= or use_raw=, not both; .raw has no layers")
    if path.is_file():
        _check_not_empty(path)
    with warnings.catch_warnings():  # anndata's two-line warning on duplicated names: one line of ours below
        warnings.filterwarnings("ignore", message=r"(Variable|Observation) names are not unique", category=UserWarning)
        try:
            adata = _read(path, fmt, transpose, backed)
        except ItClustError:
            raise
        except Exception as exc:  # five libraries' readers raise many types, scanpy's 10x .h5 a bare Exception
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ItClustError(
                f"cannot read {path} as {fmt} ({reason}); check the file is complete (not truncated) or pass the right "
                "format="
            ) from exc
        adata = _select_matrix(adata, layer, use_raw)
    for axis, names in (("gene", adata.var_names), ("cell", adata.obs_names)):
        repeated = names[names.duplicated()].unique()
        if len(repeated):
            logger.warning("%s: %s %s more than once (e.g. %r)", path, f"{len(repeated):,}",
                           f"{axis} name occurs" if len(repeated) == 1 else f"{axis} names occur", repeated[0])
    if not _has_gene_names(adata):
        raise ItClustError(f"{path} has no gene names (genes are labelled {list(adata.var_names[:3])}); label genes with symbols or Ensembl IDs")
    return adata


def detect_format(path: Path) -> str:
    """The format of ``path`` from its name: one of :data:`FORMATS`; a folder is a 10x matrix folder."""
    if path.is_dir() or path.name.endswith(_MTX_NAMES):
        return "10x-mtx"
    suffixes = path.suffixes[-2:] if path.suffix == ".gz" else path.suffixes[-1:]
    fmt = _SUFFIX_FORMATS.get(suffixes[0].lower()) if suffixes else None
    if fmt is None or (fmt != "text" and path.suffix == ".gz"):
        raise ItClustError(
            f"unknown file type {''.join(suffixes) or path.name!r}; use .h5ad, .loom, 10x .h5, a 10x matrix folder "
            f"or .csv/.tsv/.txt[.gz], or pass format= one of {', '.join(FORMATS)}"
        )
    return fmt


def _check_not_empty(path: Path) -> None:
    if path.stat().st_size == 0:
        raise ItClustError(f"{path} is empty (0 bytes); the download or copy did not finish, get the file again")


def _read(path: Path, fmt: str, transpose: bool | None, backed: bool) -> anndata.AnnData:
    if fmt == "h5ad":
        return anndata.read_h5ad(path, backed="r" if backed else None)
    if fmt == "text":
        return _read_text(path, transpose)
    return {"10x-mtx": _read_10x_mtx, "10x-h5": _read_10x_h5, "loom": _read_loom}[fmt](path)


def _read_10x_h5(path):
    adata = sc.read_10x_h5(path)
    adata.var_names_make_unique()
    return adata


def _read_loom(path):
    with h5py.File(path, "r") as f:
        gene_attr = next((a for a in _LOOM_GENE_ATTRS if a in f["row_attrs"]), _LOOM_GENE_ATTRS[0])
        cell_attr = next((a for a in _LOOM_CELL_ATTRS if a in f["col_attrs"]), _LOOM_CELL_ATTRS[0])
    adata = sc.read_loom(path, X_name="", var_names=gene_attr, obs_names=cell_attr)
    adata.var_names_make_unique()
    return adata


def _read_10x_mtx(path):
    """A 10x matrix folder, assembled from scanpy's mtx reader and pandas.

    ``sc.read_10x_mtx`` accepts only CellRanger's exact layouts (v2 all plain, v3 all gzipped); GEO
    often publishes other mixes (e.g. gzipped ``genes.tsv.gz``), so the three files are located here
    and the result follows ``sc.read_10x_mtx``'s conventions.
    """
    folder, prefix = _mtx_location(path)
    matrix, features, barcodes = (_find_file(folder, prefix, names) for names in (_MTX_NAMES, _FEATURE_NAMES, _BARCODE_NAMES))
    adata = sc.read_mtx(matrix).T
    genes = pd.read_csv(features, sep="\t", header=None, dtype=str)
    cells = pd.read_csv(barcodes, sep="\t", header=None, dtype=str)
    if len(genes) != adata.n_vars:
        raise ItClustError(f"{features.name} lists {len(genes)} genes but {matrix.name} has {adata.n_vars} rows; use the files of one run")
    if len(cells) != adata.n_obs:
        raise ItClustError(f"{barcodes.name} lists {len(cells)} barcodes but {matrix.name} has {adata.n_obs} columns; use the files of one run")
    adata.obs_names = cells[0].to_numpy()
    adata.var_names = _unique(genes[min(1, genes.shape[1] - 1)])
    if genes.shape[1] > 1:
        adata.var["gene_ids"] = genes[0].to_numpy()
    if genes.shape[1] > 2:
        adata.var["feature_types"] = genes[2].to_numpy()
        adata = adata[:, adata.var["feature_types"] == "Gene Expression"].copy()
    return adata


def _mtx_location(path: Path) -> tuple[Path, str]:
    """The folder and file-name prefix of a 10x matrix, from the folder or the matrix file."""
    if path.is_file():
        if not path.name.endswith(_MTX_NAMES):
            raise ItClustError(f"{path.name} is not a 10x matrix.mtx[.gz]; pass the 10x folder or its matrix file")
        return path.parent, path.name.rsplit("matrix.mtx", 1)[0]
    prefixes = sorted({m.name.rsplit("matrix.mtx", 1)[0] for name in _MTX_NAMES for m in path.glob(f"*{name}")})
    if not prefixes:
        raise ItClustError(f"{path} has no matrix.mtx or matrix.mtx.gz; a 10x folder needs matrix.mtx, features.tsv (or genes.tsv) and barcodes.tsv")
    if len(prefixes) > 1:
        raise ItClustError(f"{path} holds several 10x matrices ({', '.join(p + 'matrix.mtx' for p in prefixes)}); pass the path of one matrix file")
    return path, prefixes[0]


def _find_file(folder: Path, prefix: str, names: tuple[str, ...]) -> Path:
    for name in names:
        candidate = folder / f"{prefix}{name}"
        if candidate.is_file():
            _check_not_empty(candidate)
            return candidate
    wanted = " or ".join(prefix + n for n in names)
    raise ItClustError(f"10x folder {folder} is missing {wanted}; a 10x folder needs matrix.mtx, features.tsv (or genes.tsv) and barcodes.tsv")


def _read_text(path, transpose):
    frame = pd.read_csv(path, sep=_delimiter(path), index_col=0)
    counts = frame.select_dtypes("number")
    if counts.empty:
        raise ItClustError(f"{path} has no numeric columns; the first row and column must be labels and the rest counts")
    if transpose is None:
        transpose = _rows_are_genes(counts.index, counts.columns)
    matrix = sp.csr_matrix(counts.to_numpy(dtype="float32"))
    annotations = frame.drop(columns=counts.columns)
    if transpose:
        return anndata.AnnData(
            matrix.T.tocsr(), obs=pd.DataFrame(index=counts.columns.astype(str)), var=annotations.set_axis(_unique(counts.index))
        )
    return anndata.AnnData(matrix, obs=annotations.set_axis(counts.index.astype(str)), var=pd.DataFrame(index=_unique(counts.columns)))


def _unique(labels) -> pd.Index:
    """Labels as strings made unique the way scanpy does (``GENE``, ``GENE-1``, ...)."""
    return anndata.utils.make_index_unique(pd.Index(pd.Index(labels).astype(str).to_numpy()))


def _delimiter(path: Path) -> str:
    with (gzip.open if path.suffix == ".gz" else open)(path, "rt") as handle:
        first = handle.readline()
    return "\t" if "\t" in first else "," if "," in first else r"\s+"


def _rows_are_genes(rows: pd.Index, columns: pd.Index) -> bool:
    """Guess the orientation of a text matrix: Ensembl IDs, then barcodes or numbers, then shape."""
    genes = looks_like_ensembl(rows), looks_like_ensembl(columns)
    if genes[0] != genes[1]:
        return genes[0]
    cells = _looks_like_cells(rows), _looks_like_cells(columns)
    if cells[0] != cells[1]:
        return cells[1]
    return len(rows) > len(columns)


def _looks_like_cells(labels: pd.Index) -> bool:
    labels = pd.Index(labels).astype(str)
    return bool((labels.str.contains(_BARCODE) | _is_number(labels)).mean() > 0.5)


def _is_number(labels: pd.Index):
    return pd.to_numeric(pd.Series(labels, dtype=str), errors="coerce").notna().to_numpy()


def _has_gene_names(adata) -> bool:
    """True when ``var_names`` or a text ``var`` column holds mostly distinct, non-numeric labels."""
    candidates = [adata.var_names] + [adata.var[c] for c in adata.var.columns if not pd.api.types.is_numeric_dtype(adata.var[c])]
    for labels in candidates:
        labels = pd.Index(labels).astype(str)
        if len(labels) and (~_is_number(labels)).mean() > 0.5 and labels.nunique() > len(labels) / 2:
            return True
    return False


def _select_matrix(adata, layer, use_raw) -> anndata.AnnData:
    """Put the counts the user asked for in ``.X``: a layer, ``.raw``, or ``.X`` as read (chosen as a
    transfer chooses them, :func:`itclust_hub._query._matrix`)."""
    X, _, _ = _matrix(adata, layer, use_raw)
    if use_raw:
        return adata.raw.to_adata()
    if layer is not None:
        adata.X = X
    return adata

