"""Evaluation pairs for the accuracy benchmark, built from the Baron pancreas data in ``DATA_DIR``
(the ``ITCLUST_HUB_DATA`` environment variable, default ``../shared/data``).

Each generator yields ``Pair`` tuples ``(name, reference, label_key, query, truth, query_organism)``:
the reference and the query are raw-count AnnData objects, ``truth`` the query's own labels (in its
dataset's vocabulary) and ``query_organism`` is ``"mouse"``/``"human"`` when the query comes from the
other species, else ``None``. The query keeps its own genes, which is what ItClust-hub is handed;
``peer_inputs`` puts a pair on shared genes for the peers. ``harmonise`` maps both label vocabularies
onto one, for scoring only.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, NamedTuple

import anndata as ad
import numpy as np
import pandas as pd

DATA_DIR = Path(os.environ.get("ITCLUST_HUB_DATA") or Path(__file__).resolve().parents[2] / "shared" / "data")
FILES = {
    "human": "baron_human_pancreas.h5ad",
    "mouse": "baron_mouse_pancreas.h5ad",
    "orthologs": "homologs_human_mouse_one2one.csv.gz",
}
LABEL_KEY = "cell_type1"
DONOR_KEY = "donor"
GENE_FRACTIONS = (0.25, 0.10)
NOVEL_TYPES = ("acinar", "ductal")

# Baron mouse names that differ from Baron human ones beyond case. b_cell and immune_other have no human
# counterpart (immune_other is unspecified, so it is not equated with the human "mast"); human epsilon,
# acinar and mast have no mouse counterpart. Every other name matches once lower-cased.
_MOUSE_TO_HUMAN = {"T_cell": "t_cell", "B_cell": "b_cell", "immune_other": "immune_other"}


class Pair(NamedTuple):
    """One evaluation: annotate ``query`` with a model of ``reference``; ``truth`` is the query's labels."""

    name: str
    reference: ad.AnnData
    label_key: str
    query: ad.AnnData
    truth: np.ndarray
    query_organism: str | None


@dataclass
class BaronData:
    """The two Baron datasets and the one-to-one ortholog table (human symbol, mouse symbol)."""

    human: ad.AnnData
    mouse: ad.AnnData
    orthologs: pd.DataFrame


def missing_files(data_dir: Path = DATA_DIR) -> list[str]:
    """Names of the data files absent from ``data_dir``."""
    return [name for name in FILES.values() if not (Path(data_dir) / name).exists()]


def load_orthologs(data_dir: Path = DATA_DIR) -> pd.DataFrame:
    """The one-to-one ortholog table: columns ``human`` and ``mouse`` (symbols)."""
    table = pd.read_csv(Path(data_dir) / FILES["orthologs"], usecols=["human.gene.name", "gene.name"])
    return table.rename(columns={"human.gene.name": "human", "gene.name": "mouse"})


def load_baron(data_dir: Path = DATA_DIR) -> BaronData:
    """Read the Baron human and mouse pancreas data and the ortholog table."""
    data_dir = Path(data_dir)
    return BaronData(human=ad.read_h5ad(data_dir / FILES["human"]), mouse=ad.read_h5ad(data_dir / FILES["mouse"]),
                     orthologs=load_orthologs(data_dir))


def harmonise(labels) -> np.ndarray:
    """Map Baron human and mouse cell-type names onto one lower-case vocabulary (scoring only)."""
    return np.array([_MOUSE_TO_HUMAN.get(str(label), str(label)).lower() for label in labels])


def _pair(name, reference, query, query_organism=None) -> Pair:
    """A Pair on the Baron label column, with the query's own labels as truth."""
    return Pair(name, reference, LABEL_KEY, query,
                query.obs[LABEL_KEY].astype(str).to_numpy(), query_organism)


def donor_split(adata: ad.AnnData, donor: str) -> tuple[ad.AnnData, ad.AnnData]:
    """(cells of the other donors, cells of ``donor``), as copies."""
    held_out = (adata.obs[DONOR_KEY] == donor).to_numpy()
    return adata[~held_out].copy(), adata[held_out].copy()


def lodo_pairs(data: BaronData) -> Iterator[Pair]:
    """Leave one donor out within Baron human: reference = two donors, query = the third."""
    for donor in sorted(data.human.obs[DONOR_KEY].unique()):
        yield _pair(f"lodo:{donor}", *donor_split(data.human, donor))


def cross_species_pairs(data: BaronData) -> Iterator[Pair]:
    """Whole mouse data as reference for the human query, and the reverse."""
    yield _pair("mouse->human", data.mouse, data.human, query_organism="human")
    yield _pair("human->mouse", data.human, data.mouse, query_organism="mouse")


def fewer_gene_pairs(data: BaronData, seed: int) -> Iterator[Pair]:
    """A leave-one-donor-out query that measures only a random share of the reference's genes.

    The query is the largest donor (the most cells per random gene panel); for each fraction in
    ``GENE_FRACTIONS`` its genes are a random subset of the data's genes drawn from ``seed`` and the
    fraction, so every seed draws new panels.
    """
    donor = data.human.obs[DONOR_KEY].value_counts().idxmax()
    reference, query = donor_split(data.human, donor)
    for fraction in GENE_FRACTIONS:
        rng = np.random.default_rng([seed, round(fraction * 1000)])
        keep = np.sort(rng.choice(query.n_vars, size=round(fraction * query.n_vars), replace=False))
        yield _pair(f"genes{fraction:.0%}:{donor}", reference, query[:, keep].copy())


def novel_type_pairs(data: BaronData) -> Iterator[Pair]:
    """A reference that lacks one type, queried with a donor that has it (all of the donor's cells).

    For each type in ``NOVEL_TYPES`` the query donor is the one with the most cells of that type; the
    reference is the other two donors without that type.
    """
    for cell_type in NOVEL_TYPES:
        of_type = data.human.obs[LABEL_KEY] == cell_type
        donor = data.human.obs.loc[of_type, DONOR_KEY].value_counts().idxmax()
        reference, query = donor_split(data.human, donor)
        reference = reference[reference.obs[LABEL_KEY] != cell_type].copy()
        yield _pair(f"novel-{cell_type}:{donor}", reference, query)


def evaluation_pairs(data: BaronData, seed: int) -> Iterator[Pair]:
    """Every pair of the benchmark, in order: within-donor, cross-species, fewer genes, novel type."""
    yield from lodo_pairs(data)
    yield from cross_species_pairs(data)
    yield from fewer_gene_pairs(data, seed)
    yield from novel_type_pairs(data)


def _upper(names) -> pd.Index:
    return pd.Index(names).astype(str).str.upper()


def _positions(names: pd.Index) -> pd.Series:
    """Column position of each name; names that are missing or seen before are left out."""
    positions = pd.Series(np.arange(len(names)), index=names)
    return positions[positions.index.notna() & ~positions.index.duplicated()]


def reference_organism(pair: Pair) -> str | None:
    """The reference's organism for a cross-species pair (the one that is not the query's), else None."""
    if pair.query_organism is None:
        return None
    return "human" if pair.query_organism == "mouse" else "mouse"


def peer_inputs(pair: Pair, orthologs: pd.DataFrame) -> tuple[ad.AnnData, ad.AnnData]:
    """The pair's reference and query restricted to their shared genes, in the same order.

    A cross-species query is first renamed to the reference organism's symbols through the one-to-one
    ortholog table; query genes without an ortholog are dropped. Names match case-insensitively (the
    first of two names equal but for case is used). The returned objects carry the reference's gene names.
    """
    query_names = _upper(pair.query.var_names)
    ref_organism = reference_organism(pair)
    if ref_organism is not None:
        table = orthologs.assign(**{col: _upper(orthologs[col]) for col in ("human", "mouse")})
        rename = table.drop_duplicates(pair.query_organism).set_index(pair.query_organism)[ref_organism]
        query_names = pd.Index(rename.reindex(query_names).to_numpy())
    ref_pos, query_pos = _positions(_upper(pair.reference.var_names)), _positions(query_names)
    shared = ref_pos.index.intersection(query_pos.index).sort_values()
    reference = pair.reference[:, ref_pos[shared].to_numpy()].copy()
    query = pair.query[:, query_pos[shared].to_numpy()].copy()
    query.var_names = reference.var_names
    return reference, query
