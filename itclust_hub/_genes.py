"""Align any query's genes to a reference's fixed gene list.

Genes are matched case-insensitively by symbol or by Ensembl ID (version suffix ignored), taken from
``var_names`` or a ``var`` column; the alignment is a sparse 0/1 matrix so the query is never densified.
Cross-species queries are first renamed through a one-to-one ortholog table; the organism of a query or
an atlas is read from how its gene names are written when nobody says (:func:`choose_organism`).
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
# The organisms whose genes the bundled ortholog table maps, with the spellings taken for each (compared
# lower-case, with runs of spaces, '_' and '.' read as one space; NCBI taxonomy ids also as "taxid:9606").
ORGANISMS = {
    "human": ("human", "homo sapiens", "h sapiens", "hsapiens", "hs", "hsa", "9606"),
    "mouse": ("mouse", "mus musculus", "m musculus", "mmusculus", "mm", "mmu", "10090"),
}
_ALIASES = {alias: name for name, aliases in ORGANISMS.items() for alias in aliases}
# How each organism writes gene names: Ensembl gene ids' prefix, and symbols in capitals (GCG) or with only
# the first letter capital (Gcg).
_ENSEMBL_PREFIX = {"human": r"^ENSG\d", "mouse": r"^ENSMUSG\d"}
_SYMBOL_EXAMPLE = {"human": "GCG", "mouse": "Gcg"}
DETECT_MIN_NAMES = 20  # distinct recognisable gene names needed to name a query's organism
DETECT_MIN_SHARE = 0.9  # share of them written as one organism's


def normalize_ids(names) -> np.ndarray:
    """Upper-case names and strip Ensembl version suffixes (``ENSG...1.5`` -> ``ENSG...1``)."""
    upper = pd.Index(names).astype(str).str.strip().str.upper()
    return np.where(upper.str.match(_ENSEMBL), upper.str.replace(r"\.\d+$", "", regex=True), upper)


def looks_like_ensembl(names) -> bool:
    """True when most names are Ensembl gene IDs."""
    names = pd.Index(names).astype(str)
    return len(names) > 0 and names.str.upper().str.match(_ENSEMBL).mean() > 0.5


def normalize_organism(name, *, what: str = "organism", also=(), strict: bool = True, hint: str = "") -> str:
    """The canonical name (``"human"``, ``"mouse"``) of an organism spelled any usual way: ``Homo sapiens``,
    ``mm``, ``10090``, ``taxid:9606``, ... (case-insensitive).

    ``also`` names more organisms (the columns of a user's ortholog table), kept lower-case. A name that is
    none of these is refused in one line naming ``what`` (the argument or option that gave it) and ending in
    ``hint``, unless not ``strict``: then it comes back lower-case (an organism recorded by someone else's
    reference).
    """
    key = re.sub(r"[\s_.]+", " ", str(name).strip().lower())
    key = re.sub(r"^(ncbi ?taxon|taxid|txid|taxon) ?:? ?(\d+)$", r"\2", key)
    if key in _ALIASES:
        return _ALIASES[key]
    extra = [str(o).lower() for o in also]
    if key in extra or not strict:
        return key
    known = " or ".join(f"{o} ({aliases[1].capitalize()}, {aliases[4]}, {aliases[-1]})" for o, aliases in ORGANISMS.items())
    more = f" or a column of the ortholog table ({', '.join(extra)})" if extra else ""
    raise ItClustError(f"{what} {name!r} is not an organism whose genes can be mapped; use {known}{more}{hint}")


@dataclass
class OrganismChoice:
    """Which organism a query's (or an atlas's) genes were taken to be of, and why."""

    organism: str
    how: str  # "given" (by the caller), "detected" (from its gene names) or "assumed" (the fallback)
    fallback: str  # the organism taken when the names cannot tell (a reference's)
    counts: dict[str, int]  # distinct gene names written as each organism writes them
    detected: str | None  # what the gene names say on their own (None: unclear)

    @property
    def evidence(self) -> str:
        """What the gene names say, e.g. "14,028 of 14,143 recognisable gene names written as mouse's (Gcg),
        115 as human's (GCG)"."""
        (top, n_top), *others = sorted(self.counts.items(), key=lambda item: -item[1])
        rest = "".join(f", {n:,} as {o}'s ({_SYMBOL_EXAMPLE[o]})" for o, n in others)
        return (f"{n_top:,} of {sum(self.counts.values()):,} recognisable gene names written as {top}'s "
                f"({_SYMBOL_EXAMPLE[top]}){rest}")

    @property
    def doubtful(self) -> bool:
        """The gene names speak against the organism taken: they say another one (a given organism), or
        too few of them are written as its (a fallback)."""
        if self.how == "given":
            return self.detected not in (None, self.organism)
        total = sum(self.counts.values())
        return (self.how == "assumed" and self.organism in ORGANISMS and total > 0
                and self.counts[self.organism] < DETECT_MIN_SHARE * total)

    def summary(self) -> dict:
        """Plain-JSON description for provenance."""
        return {"organism": self.organism, "how": self.how, "evidence": self.evidence}

    def message(self, what: str, detected_means: str, fallback_is: str) -> str | None:
        """One sentence when the organism was detected as another than the fallback, or is doubtful (else
        None). ``what`` names the setting that overrides it; ``detected_means`` says what a detection did
        (e.g. "its genes were mapped to human's through one-to-one orthologs"), ``fallback_is`` what the
        fallback is (e.g. "the reference's")."""
        if self.how == "detected" and self.organism != self.fallback:
            return f"{what} not set: the gene names are {self.organism}'s ({self.evidence}); {detected_means}; set {what} to override"
        if self.doubtful and self.how == "given":
            return f"{what} is {self.organism} but the gene names look {self.detected}'s ({self.evidence})"
        if self.doubtful:
            return (f"could not tell the organism from the gene names ({self.evidence}); took {self.organism}, "
                    f"{fallback_is}; set {what} if that is wrong")
        return None


def _organism_evidence(names) -> dict[str, int]:
    """Distinct names written as each organism writes them (Ensembl prefix or symbol case)."""
    names = pd.Index(pd.unique(pd.Index(names).astype(str).str.strip()))
    symbol = ((names.str.count(r"[A-Za-z]") >= 2) & names.str.match(r"^[A-Za-z][A-Za-z0-9.\-]*$")
              & ~names.str.upper().str.match(_ENSEMBL)
              & ~names.str.contains(r"\dorf\d"))  # human C1orf112 is written like a mouse symbol
    first, rest = names.str[:1], names.str[1:]
    counts = {}
    for organism, example in _SYMBOL_EXAMPLE.items():
        written = (names == names.str.upper()) if example.isupper() else (first == first.str.upper()) & (rest == rest.str.lower())
        counts[organism] = int((symbol & written | names.str.match(_ENSEMBL_PREFIX[organism])).sum())
    return counts


def choose_organism(given: str | None, fallback: str, var: pd.DataFrame, var_names, *,
                    gene_key: str | None = None) -> OrganismChoice:
    """The organism of a query or atlas: ``given`` (as :func:`normalize_organism` returns it) when not None,
    else the one its gene names are written as (mouse symbols ``Gcg``, human ``GCG``; Ensembl ``ENSMUSG`` /
    ``ENSG``) when at least ``DETECT_MIN_NAMES`` distinct names are recognisable and ``DETECT_MIN_SHARE`` of
    them agree, else ``fallback`` (also when ``fallback`` is an organism the names cannot tell). The names
    are those of ``gene_key``, or of the column among ``var_names`` and the text ``var`` columns with the
    most recognisable ones.
    """
    counts = {o: 0 for o in ORGANISMS}
    for _, names in _candidates(var, var_names, gene_key):
        found = _organism_evidence(names)
        if sum(found.values()) > sum(counts.values()):
            counts = found
    total, top = sum(counts.values()), max(counts, key=counts.get)
    detected = top if total >= DETECT_MIN_NAMES and counts[top] >= DETECT_MIN_SHARE * total else None
    if given is not None:
        return OrganismChoice(given, "given", fallback, counts, detected)
    if detected is not None and fallback in ORGANISMS:
        return OrganismChoice(detected, "detected", fallback, counts, detected)
    return OrganismChoice(fallback, "assumed", fallback, counts, detected)


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
) -> GeneAlignment:
    """Match query genes to reference genes; the column with the largest overlap wins.

    ``rename`` maps upper-cased query symbols to reference symbols (orthologs); ``gene_totals`` picks
    the most expressed copy of a duplicated name. Raises when no query gene matches; whether enough match
    is for the caller to judge (``_query._check_readable``).
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
