"""What a transfer returns: labels, per-cell table, probabilities, cluster table and embedding,
with ways to write them into an AnnData and to disk."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from ._errors import ItClustError
from ._outputs import atomic_path, check_output_files
from ._ontology import ONTOLOGY_COLUMNS

if TYPE_CHECKING:
    from ._naming import ClusterEvidence

TABLE_FILES = ("labels.csv", "probabilities.csv", "clusters.csv", "query_clusters.csv")
@dataclass
class TransferResult:
    """The annotation of one query by one reference.

    Attributes
    ----------
    obs
        One row a cell (index = the query's ``obs_names``): ``label`` (``"Unassigned"`` where the cell's
        cluster is judged novel), ``nearest_label`` (the cluster's reference type),
        ``source_label`` (the source network's direct prediction, before fine-tuning), ``cluster``,
        ``probability`` (of its cluster: its soft assignment to the clusters, squared and renormalised; see
        ``_network.PROBABILITY_POWER``; it ranks the reference's clusters, ``novel`` says whether any fits),
        ``cluster_confidence``, ``novel`` (its cluster or its query cluster is novel), ``query_cluster`` (its
        cluster in the query's own structure), ``novelty`` (one minus its query cluster's best correlation with
        a reference type) and ``empty`` (the cell has no expression in any query gene the
        reference reads: it is left out of fine-tuning, labelled ``"Unassigned"`` in every label column, in
        cluster -1 at probability 0, and not novel); when the reference carries Cell Ontology terms, also
        ``fine_label``, ``coarse_label``, ``ontology_id`` (of the fine label) and ``coarse_ontology_id``
        (``label``, ``nearest_label`` and ``source_label`` are at the ``level`` the transfer was asked for).
    probabilities
        Cells x reference types: a type's probability is the sum over the clusters named by it (types that
        name no cluster are 0; every type is 0 for an empty cell).
    clusters
        One row a target cluster: ``label``, ``nearest_label``, ``size``, ``confidence`` (share of its cells
        that started self-training with its type: ItClust's share of labels kept), ``similarity``
        (correlation of the cluster's mean expression with its type's over the 500 measured genes that
        differ most between types), ``closest_type`` (the reference type whose mean expression correlates
        best over every measured gene), ``renamed`` (its type is its closest type, not its cells' starting
        majority) and ``novel``; see
        :func:`itclust_hub.name_clusters`.
    query_clusters
        One row a cluster of the query's own structure (found without the reference): ``size``,
        ``nearest_type`` and ``similarity`` (the reference type its mean expression correlates best with, over
        every measured gene, and that correlation), ``novel`` (no type matches it; see
        :func:`itclust_hub.name_clusters`) and ``top_genes`` (the genes most above its nearest type: where to
        start naming a novel population).
    embedding
        Cells x latent dimensions of the fine-tuned encoder (empty cells: where it puts a cell with no
        expression).
    provenance
        Reference name, version, revision, the query matrix read (``layer``, ``use_raw``), query organism (and
        how it was known), gene overlap, input type assumed, empty cells, warnings, iterations and settings.
    evidence
        What the naming step read (:class:`itclust_hub._naming.ClusterEvidence`), so that
        :func:`itclust_hub.name_clusters` can name the clusters again without fine-tuning.
    umap
        Cells x 2 UMAP of the embedding, the last that :meth:`plot_umap` or :meth:`report` computed for every
        cell (None before, and when they drew a sample of a large query); :meth:`to_adata` keeps it.
    """

    obs: pd.DataFrame
    probabilities: pd.DataFrame
    clusters: pd.DataFrame
    embedding: np.ndarray
    provenance: dict = field(default_factory=dict)
    umap: np.ndarray | None = None
    query_clusters: pd.DataFrame | None = None
    evidence: ClusterEvidence | None = field(default=None, repr=False)

    @property
    def labels(self) -> pd.Series:
        """Cell-type name per cell, ``"Unassigned"`` in novel clusters and for empty cells."""
        return self.obs["label"]

    @property
    def changed_fraction(self) -> float:
        """Share of cells whose label fine-tuning changed from the source network's prediction (of the cells
        that are not empty)."""
        kept = self.obs[~self.obs["empty"]] if "empty" in self.obs else self.obs
        return float((kept["nearest_label"] != kept["source_label"]).mean()) if len(kept) else 0.0

    def __repr__(self) -> str:
        counts = self.labels.value_counts()
        top = ", ".join(f"{k}: {v}" for k, v in counts.head(6).items())
        return (f"TransferResult({len(self.obs)} cells, {len(self.clusters)} clusters, "
                f"{int(self.obs['novel'].sum())} cells novel; {top}{', ...' if len(counts) > 6 else ''})")

    def to_adata(self, adata, *, copy: bool = True, key: str = "itclust"):
        """Write the result into ``adata`` (a copy unless ``copy=False``) and return it.

        Adds ``obs[f"{key}_label"]`` and the other per-cell columns (labels and ``cluster`` categorical, so
        scanpy colours them by category), ``obsm[f"X_{key}"]`` (embedding), ``obsm[f"{key}_probabilities"]``
        and ``uns[key]`` (clusters and query clusters tables, cell types, provenance as a nested dict that ``write_h5ad`` can
        store: None values left out). The UMAP of :attr:`umap`, when computed, goes to ``obsm["X_umap"]``
        (to ``obsm[f"X_{key}_umap"]`` if ``adata`` has its own ``X_umap``). A backed ``adata`` is annotated
        with ``copy=False`` (its ``X`` stays on disk).
        """
        self._check_cells(adata)
        if copy and adata.isbacked:
            raise ItClustError("the AnnData is backed (X on disk) and cannot be copied; pass copy=False to annotate "
                               "it in place, or load it with adata.to_memory() first")
        adata = adata.copy() if copy else adata
        for col in self.obs.columns:
            adata.obs[f"{key}_{col}"] = self.obs[col].to_numpy()
        for col in ("label", "nearest_label", "source_label", *ONTOLOGY_COLUMNS):
            if col in self.obs:
                adata.obs[f"{key}_{col}"] = pd.Categorical(adata.obs[f"{key}_{col}"])
        adata.obs[f"{key}_cluster"] = pd.Categorical(self.obs["cluster"].to_numpy(), categories=self.clusters.index)
        adata.obsm[f"X_{key}"] = self.embedding
        adata.obsm[f"{key}_probabilities"] = self.probabilities.to_numpy()
        if self.umap is not None:
            adata.obsm["X_umap" if "X_umap" not in adata.obsm else f"X_{key}_umap"] = self.umap
        adata.uns[key] = {
            "cell_types": list(self.probabilities.columns),
            "clusters": _columns(self.clusters),
            **({"query_clusters": _columns(self.query_clusters)} if self.query_clusters is not None else {}),
            "provenance": _storable(self.provenance),
        }
        return adata

    def _check_cells(self, adata) -> None:
        """Refuse an AnnData whose cells (in order) are not the annotated ones (plots and the report check it too)."""
        if adata.n_obs != len(self.obs) or not (adata.obs_names == self.obs.index).all():
            raise ItClustError("the AnnData's cells differ from the annotated ones; pass the AnnData you transferred")

    def write_tables(self, folder, *, force: bool = False) -> list[Path]:
        """Write ``labels.csv`` (per-cell table), ``probabilities.csv``, ``clusters.csv`` and
        ``query_clusters.csv`` into ``folder``.

        Existing tables are replaced only with ``force``; nothing else in ``folder`` is touched."""
        folder = Path(folder)
        tables = dict(zip(TABLE_FILES, (self.obs, self.probabilities, self.clusters, self.query_clusters)))
        tables = {name: frame for name, frame in tables.items() if frame is not None}
        check_output_files([folder / name for name in tables], force=force)
        folder.mkdir(parents=True, exist_ok=True)
        written = []
        for name, frame in tables.items():
            path = folder / name
            with atomic_path(path) as tmp:
                frame.to_csv(tmp)
            written.append(path)
        return written

    def plot_umap(self, *, seed: int = 0):
        """UMAP of the embedding coloured by label and by cluster confidence (a matplotlib Figure)."""
        from ._plot import plot_umap

        return plot_umap(self, seed=seed)

    def plot_confidence(self):
        """Per-cluster size, confidence and similarity, novel clusters marked (a matplotlib Figure)."""
        from ._plot import plot_confidence

        return plot_confidence(self)

    def plot_markers(self, adata, model, *, n_genes: int = 3, orthologs=None):
        """Dot plot of the reference's marker genes per predicted label in ``adata`` (a matplotlib Figure), from
        the matrix the transfer read (``provenance["layer"]``, ``provenance["use_raw"]``); ``orthologs`` as
        given to the transfer."""
        from ._plot import plot_markers

        return plot_markers(self, adata, model, n_genes=n_genes, orthologs=orthologs)

    def plot_confusion(self, truth, *, truth_key: str = "query label"):
        """Heatmap of the query's own labels ``truth`` (a Series over the cells) against the predicted ones."""
        from ._plot import plot_confusion

        return plot_confusion(self, truth, truth_key=truth_key)

    def report(self, folder, *, adata=None, model=None, truth_key: str | None = None, force: bool = False,
               **options) -> list[Path]:
        """Write PNG figures and ``summary.md`` into ``folder``; returns the paths.

        Markers need ``adata`` and ``model``, the confusion heatmap ``adata`` and ``truth_key``; ``options``
        (``orthologs``, ``n_genes``, ``seed``, ``progress``) go to
        :func:`itclust_hub._report.write_report`.
        """
        from ._report import write_report

        return write_report(self, folder, adata=adata, model=model, truth_key=truth_key, force=force, **options)


def _columns(table: pd.DataFrame) -> dict:
    """A table as a dict of its index and columns (arrays), as ``write_h5ad`` stores it."""
    table = table.reset_index()
    return {column: table[column].to_numpy() for column in table.columns}


def _storable(value):
    """``value`` (plain JSON-like data) as ``write_h5ad`` can store it: None left out, keys as strings, lists
    of numbers or strings as arrays, other lists as dicts keyed by position."""
    if isinstance(value, dict):
        return {str(k): _storable(v) for k, v in value.items() if v is not None}
    if isinstance(value, (list, tuple)):
        if all(isinstance(v, (bool, int, float, str, np.generic)) for v in value):
            return np.asarray(value)
        return _storable(dict(enumerate(value)))
    return str(value) if isinstance(value, Path) else value
