"""Align any query's genes to a reference's fixed gene list.

Genes are matched case-insensitively by symbol or by Ensembl ID (version suffix ignored), taken from
``var_names`` or a ``var`` column; the alignment is a sparse 0/1 matrix so the query is never densified.
Cross-species queries are first renamed through a one-to-one ortholog table.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from importlib import resources

import numpy as np
import pandas as pd
import scipy.sparse as sp

from ._errors import ItClustError

_ENSEMBL = re.compile(r"^ENS[A-Z]*G\d{6,}")


def normalize_ids(names) -> np.ndarray:
    """Upper-case names and strip Ensembl version suffixes (``ENSG...1.5`` -> ``ENSG...1``)."""
    upper = pd.Index(names).astype(str).str.strip().str.upper()
    return np.where(upper.str.match(_ENSEMBL), upper.str.replace(r"\.\d+$", "", regex=True), upper)


def looks_like_ensembl(names) -> bool:
    """True when most names are Ensembl gene IDs."""
    names = pd.Index(names).astype(str)
    return len(names) > 0 and names.str.upper().str.match(_ENSEMBL).mean() > 0.5


@dataclass
class GeneAlignment:
    """How a query's columns map onto the reference genes."""

    matrix: sp.csr_matrix  # query genes x reference genes, 1 where a query column feeds a reference gene
    source: str  # "var_names" or the var column used
    id_type: str  # "symbol" or "ensembl"
    n_overlap: int
    n_reference: int
    n_duplicates: int  # query names seen more than once; the most expressed copy is used
    ortholog_mapped: int | None = None  # query genes renamed through the ortholog table

    @property
    def present(self) -> np.ndarray:
        """Boolean mask over reference genes that the query measures."""
        return np.asarray(self.matrix.sum(axis=0)).ravel() > 0

    @property
    def fraction(self) -> float:
        return self.n_overlap / self.n_reference

    def summary(self) -> dict:
        """Plain-JSON description for provenance and reports."""
        return {
            "source": self.source,
            "id_type": self.id_type,
            "n_overlap": int(self.n_overlap),
            "n_reference_genes": int(self.n_reference),
            "fraction": round(self.fraction, 4),
            "n_duplicates": int(self.n_duplicates),
            "ortholog_mapped": self.ortholog_mapped,
        }


def load_orthologs(orthologs=None) -> pd.DataFrame:
    """The one-to-one ortholog table with one column per organism (upper-cased symbols).

    ``orthologs`` may be None (the bundled human/mouse table), a DataFrame or a CSV path whose
    columns name the organisms.
    """
    if orthologs is None:
        path = resources.files("itclust_hub") / "data" / "orthologs_human_mouse.csv.gz"
        with resources.as_file(path) as p:
            table = pd.read_csv(p, usecols=["human.gene.name", "gene.name"])
        table.columns = ["human", "mouse"]
    elif isinstance(orthologs, pd.DataFrame):
        table = orthologs.copy()
    else:
        table = pd.read_csv(orthologs)
    table.columns = [str(c).lower() for c in table.columns]
    return table.dropna().astype(str).apply(lambda col: col.str.upper())


def ortholog_map(from_organism: str, to_organism: str, orthologs=None) -> dict[str, str]:
    """Map upper-cased symbols of ``from_organism`` onto ``to_organism`` through a one-to-one table."""
    table = load_orthologs(orthologs)
    missing = [o for o in (from_organism, to_organism) if o not in table.columns]
    if missing:
        raise ItClustError(
            f"no ortholog table column for {missing[0]!r} (have {list(table.columns)}); "
            "pass orthologs= a table with one column per organism"
        )
    pairs = table[[from_organism, to_organism]].drop_duplicates()
    one2one = ~pairs[from_organism].duplicated(keep=False) & ~pairs[to_organism].duplicated(keep=False)
    pairs = pairs[one2one]
    return dict(zip(pairs[from_organism], pairs[to_organism]))


def _candidates(var: pd.DataFrame, var_names, gene_key: str | None):
    if gene_key is not None:
        if gene_key not in var.columns:
            raise ItClustError(f"gene_key {gene_key!r} is not a var column (have {list(var.columns)})")
        return [(gene_key, var[gene_key].astype(str).to_numpy())]
    found = [("var_names", np.asarray(var_names, dtype=str))]
    for col in var.columns:
        if var[col].dtype == object or isinstance(var[col].dtype, pd.CategoricalDtype | pd.StringDtype):
            found.append((col, var[col].astype(str).to_numpy()))
    return found


def align_genes(
    var: pd.DataFrame,
    var_names,
    ref_symbols,
    ref_ensembl=None,
    *,
    gene_key: str | None = None,
    rename: dict[str, str] | None = None,
    gene_totals: np.ndarray | None = None,
    min_overlap: float = 0.05,
) -> GeneAlignment:
    """Match query genes to reference genes; the column with the largest overlap wins.

    ``rename`` maps upper-cased query symbols to reference symbols (orthologs); ``gene_totals`` picks
    the most expressed copy of a duplicated name. Raises when fewer than ``min_overlap`` of the
    reference genes are found.
    """
    ref_keys = {"symbol": normalize_ids(ref_symbols)}
    if ref_ensembl is not None:
        ref_keys["ensembl"] = normalize_ids(ref_ensembl)
    best = None
    for source, names in _candidates(var, var_names, gene_key):
        ids = normalize_ids(names)
        id_type = "ensembl" if looks_like_ensembl(ids) else "symbol"
        mapped = None
        if rename is not None and id_type == "symbol":
            renamed = pd.Series(ids).map(rename)
            mapped = int(renamed.notna().sum())
            ids = renamed.fillna("").to_numpy()
        if id_type not in ref_keys:
            continue
        lookup = {key: i for i, key in reversed(list(enumerate(ref_keys[id_type]))) if key}
        if id_type == "symbol":  # R-mangled names such as HLA.DRA stand for HLA-DRA
            lookup = {key.replace(".", "-"): i for key, i in lookup.items()} | lookup
        pos = pd.Series(ids).map(lookup).fillna(-1).astype(int).to_numpy()
        n_overlap = len(np.unique(pos[pos >= 0]))
        if best is None or n_overlap > best[0]:
            best = (n_overlap, source, id_type, pos, ids, mapped)
    n_ref = len(ref_symbols)
    if best is None or best[0] == 0:
        raise ItClustError(
            "no query gene matches the reference genes; check that var_names (or gene_key=...) hold "
            "gene symbols or Ensembl IDs of the reference organism, or pass query_organism=..."
        )
    n_overlap, source, id_type, pos, ids, mapped = best
    if n_overlap < min_overlap * n_ref:
        raise ItClustError(
            f"only {n_overlap} of {n_ref} reference genes ({n_overlap / n_ref:.1%}) are in the query, "
            f"below the minimum {min_overlap:.0%}; check gene names, gene_key=... or query_organism=..."
        )
    totals = np.zeros(len(pos)) if gene_totals is None else np.asarray(gene_totals, dtype=float)
    frame = pd.DataFrame({"query": np.arange(len(pos)), "ref": pos, "total": totals})
    frame = frame[frame.ref >= 0]
    n_duplicates = int(frame.ref.duplicated().sum())
    frame = frame.sort_values("total", ascending=False, kind="stable").drop_duplicates("ref")
    matrix = sp.csr_matrix(
        (np.ones(len(frame), dtype=np.float32), (frame["query"].to_numpy(), frame["ref"].to_numpy())),
        shape=(len(pos), n_ref),
    )
    return GeneAlignment(matrix, source, id_type, n_overlap, n_ref, n_duplicates, mapped)


def ensembl_ids_for(symbols) -> list[str | None]:
    """Ensembl gene IDs of human symbols from the bundled 10x annotation (None where unknown)."""
    path = resources.files("itclust_hub") / "data" / "human_gene_ids.tsv.gz"
    with resources.as_file(path) as p:
        table = pd.read_csv(p, sep="\t")
    lookup = dict(zip(table["symbol"].str.upper(), table["ensembl"]))
    return [lookup.get(s.upper()) for s in symbols]
