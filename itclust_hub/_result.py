"""What a transfer returns: labels, per-cell table, probabilities, cluster table and embedding,
with ways to write them into an AnnData and to disk."""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from ._errors import ItClustError
from ._network import cell_probabilities
from ._outputs import check_output_files
from ._ontology import ONTOLOGY_COLUMNS

UNASSIGNED = "Unassigned"
TABLE_FILES = ("labels.csv", "probabilities.csv", "clusters.csv")
INFORMATIVE_GENES = 500  # genes a cluster's similarity to a reference type is measured on
# A cluster whose expression correlates best with another reference type takes that type when it matches it
# at least this well over the informative genes: known clusters on held-out Baron donors matched their type at
# >= 0.49 (14 saved runs); clusters of cells of a type the reference lacked matched their closest type at
# 0.20-0.37 (seed 0 of every benchmark pair).
RENAME_SIMILARITY = 0.5
# The noise correction of a cluster's similarity (see _noise_corrected) divides it by the square root of its
# profile's estimated reliability, taken as at least this: a profile estimated to be all noise would otherwise
# turn any correlation into +-1 (the boost is at most sqrt(10), 3.2x). Clusters of 1-30 cells on seed 0's panels
# and the bundled example ranged 0.31-0.97; a lone cell whose noise is twice its type's spread, 0.2.
MIN_RELIABILITY = 0.1


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
        ``cluster_confidence``, ``novel`` and ``empty`` (the cell has no expression in any query gene the
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
        (correlation of the cluster's mean expression, its cells weighted by their probability, with its
        type's over :func:`informative_genes`, corrected for the noise of a mean over few cells),
        ``closest_type`` (the reference type whose mean expression correlates best over every measured
        gene, corrected for the noise of each type's profile), ``renamed`` (its type is its closest type,
        not its cells' starting majority) and ``novel``.
    embedding
        Cells x latent dimensions of the fine-tuned encoder (empty cells: where it puts a cell with no
        expression).
    provenance
        Reference name, version, revision, query organism (and how it was known), gene overlap, input type
        assumed, empty cells, warnings, iterations and settings.
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
                f"{int(self.clusters['novel'].sum())} novel; {top}{', ...' if len(counts) > 6 else ''})")

    def to_adata(self, adata, *, copy: bool = True, key: str = "itclust"):
        """Write the result into ``adata`` (a copy unless ``copy=False``) and return it.

        Adds ``obs[f"{key}_label"]`` and the other per-cell columns (labels and ``cluster`` categorical, so
        scanpy colours them by category), ``obsm[f"X_{key}"]`` (embedding), ``obsm[f"{key}_probabilities"]``
        and ``uns[key]`` (clusters table, cell types, provenance as a nested dict that ``write_h5ad`` can
        store: None values left out). The UMAP of :attr:`umap`, when computed, goes to ``obsm["X_umap"]``
        (to ``obsm[f"X_{key}_umap"]`` if ``adata`` has its own ``X_umap``). A backed ``adata`` is annotated
        with ``copy=False`` (its ``X`` stays on disk).
        """
        if adata.n_obs != len(self.obs) or not (adata.obs_names == self.obs.index).all():
            raise ItClustError("the AnnData's cells differ from the annotated ones; pass the AnnData you transferred")
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
            "clusters": {c: self.clusters.reset_index()[c].to_numpy() for c in ["cluster", *self.clusters.columns]},
            "provenance": _storable(self.provenance),
        }
        return adata

    def write_tables(self, folder, *, force: bool = False) -> list[Path]:
        """Write ``labels.csv`` (per-cell table), ``probabilities.csv`` and ``clusters.csv`` into ``folder``.

        Existing tables are replaced only with ``force``; nothing else in ``folder`` is touched."""
        folder = Path(folder)
        tables = dict(zip(TABLE_FILES, (self.obs, self.probabilities, self.clusters)))
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

    def plot_markers(self, adata, model, *, n_genes: int = 3, layer=None, use_raw: bool = False, orthologs=None):
        """Dot plot of the reference's marker genes per predicted label in ``adata`` (a matplotlib Figure);
        ``layer``, ``use_raw`` and ``orthologs`` as given to the transfer."""
        from ._plot import plot_markers

        return plot_markers(self, adata, model, n_genes=n_genes, layer=layer, use_raw=use_raw, orthologs=orthologs)

    def plot_confusion(self, truth, *, truth_key: str = "query label"):
        """Heatmap of the query's own labels ``truth`` (a Series over the cells) against the predicted ones."""
        from ._plot import plot_confusion

        return plot_confusion(self, truth, truth_key=truth_key)

    def report(self, folder, *, adata=None, model=None, truth_key: str | None = None, force: bool = False,
               **options) -> list[Path]:
        """Write PNG figures and ``summary.md`` into ``folder``; returns the paths.

        Markers need ``adata`` and ``model``, the confusion heatmap ``adata`` and ``truth_key``; ``options``
        (``layer``, ``use_raw``, ``orthologs``, ``n_genes``, ``seed``, ``progress``) go to
        :func:`itclust_hub._report.write_report`.
        """
        from ._report import write_report

        return write_report(self, folder, adata=adata, model=model, truth_key=truth_key, force=force, **options)


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


class atomic_path:
    """Context manager giving a temporary path that replaces ``path`` only if the block succeeds."""

    def __init__(self, path):
        self.path = Path(path)

    def __enter__(self) -> Path:
        fd, name = tempfile.mkstemp(prefix=f".{self.path.name}.", suffix=self.path.suffix, dir=self.path.parent)
        os.close(fd)
        self.tmp = Path(name)
        return self.tmp

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(self.tmp, 0o666 & ~umask)
            os.replace(self.tmp, self.path)
        else:
            self.tmp.unlink(missing_ok=True)
        return False


def build_result(outcome, cell_types: list[str], type_profiles: np.ndarray, type_counts, present: np.ndarray,
                 obs_names, min_confidence: float, min_similarity: float, provenance: dict,
                 empty: np.ndarray | None = None) -> TransferResult:
    """Name each target cluster, score it and assemble the :class:`TransferResult`.

    ``outcome`` covers the cells that are not ``empty`` (a mask over ``obs_names``: cells with no expression
    over the genes the reference reads, left out of fine-tuning); the result has a row for every cell, in
    order, the empty ones labelled ``"Unassigned"`` with ``empty`` True, cluster -1, probabilities 0 and the
    embedding of a cell with no expression.

    A cluster is named after the reference type most of its cells started self-training with (rather than
    the type whose centroid it started from: self-training can move a population onto a neighbouring
    centroid, as alpha cells gathered at a 3-cell mast centroid on a small query with a weak reference); a
    tie goes to the tied type whose mean expression correlates best with the cluster's over every measured
    gene (on a 25% panel, human3's lone T cell shared a cluster with a beta cell that started as gamma).
    It takes another type instead when its expression correlates best with that type and matches it at
    ``RENAME_SIMILARITY`` or more over :func:`informative_genes` (ductal cells the source network called
    acinar, gathered at the acinar centroid of a donor with almost no acinar cells, were Unassigned before).
    Renaming reads the raw correlation: on blood, a 386-cell NK cluster matched macrophage at 0.4995 raw
    and 0.5005 corrected.
    Its confidence, ItClust's share of cells whose label fine-tuning kept, is the share that started with
    its type. It is novel when its confidence is low (unless renamed: its cells started as another type by
    construction), when its expression's correlation with its type's over :func:`informative_genes`,
    corrected for the noise of a mean over few cells (:func:`_noise_corrected`), is low (the level), or when
    its expression over every measured gene correlates better with another type's (the ranking: the whole
    profile told ductal cells from acinar ones where the informative genes, led by the acinar enzymes, did
    not). The ranking corrects each type's correlation for the noise of its own profile, a mean over its
    ``type_counts`` training cells (:func:`_type_attenuation`): a profile over 2 training cells is attenuated
    where one over 300 is not, and a lone T cell correlated better with the 5-cell mast profile than with
    the 2-cell T one.

    A cluster's profile is its cells' mean expression, each cell weighted by its probability of the cluster
    (``outcome.cluster_profiles``): a cell that fits no cluster well (an acinar cell at probability 0.17 in a
    2-cell cluster with a T cell at 0.67) does not decide what the cluster resembles.
    """
    names = np.asarray(cell_types, dtype=object)
    n_clusters = outcome.q.shape[1]
    votes = np.zeros((n_clusters, len(names)))
    np.add.at(votes, (outcome.clusters, outcome.start_codes), 1)
    sizes = np.bincount(outcome.clusters, minlength=n_clusters)
    genes = informative_genes(type_profiles, present)
    profiles = outcome.cluster_profiles[:, : len(present)]  # any context genes' columns follow the reference's
    similarities = _correlations(profiles[:, genes], type_profiles[:, genes])
    levels = _noise_corrected(similarities, profiles[:, genes], outcome.within_variance[genes], outcome.effective_sizes)
    measured = np.flatnonzero(present)
    correlations = np.clip(  # over every measured gene
        _correlations(profiles[:, measured], type_profiles[:, measured])
        / _type_attenuation(type_profiles, type_counts, measured)[None, :], -1, 1)
    closest = correlations.argmax(1)
    rows = np.arange(n_clusters)
    # the type most of each cluster's cells started self-training with (votes are whole numbers, the added
    # (correlation + 1) / 4 is under 1/2: it only breaks ties, for the tied type that correlates best)
    started = (votes + (correlations + 1) / 4).argmax(1)
    renamed = (closest != started) & (similarities[rows, closest] >= RENAME_SIMILARITY)
    named = np.where(renamed, closest, started)  # reference type of each cluster
    confidence = np.divide(votes[rows, named], sizes, out=np.zeros(n_clusters), where=sizes > 0)
    similarity = levels[rows, named]
    novel = ((confidence < min_confidence) & ~renamed) | (similarity < min_similarity) | (closest != named)
    cluster_names = names[named]
    clusters = pd.DataFrame({
        "label": np.where(novel, UNASSIGNED, cluster_names),
        "nearest_label": cluster_names,
        "size": sizes,
        "confidence": confidence,
        "similarity": similarity,
        "closest_type": names[closest],
        "renamed": renamed,
        "novel": novel,
    })
    clusters.index.name = "cluster"
    clusters = clusters[clusters["size"] > 0]
    c = outcome.clusters
    per_cluster = cell_probabilities(outcome.q.astype(np.float64)).astype(np.float32)  # cells x clusters
    empty = np.zeros(len(c), bool) if empty is None else np.asarray(empty, bool)
    blank = np.zeros(outcome.embedding.shape[1:], outcome.embedding.dtype) if outcome.blank_embedding is None else (
        outcome.blank_embedding)
    spread = lambda values, fill: _spread(values, empty, fill)  # noqa: E731
    obs = pd.DataFrame({
        "label": spread(clusters["label"].reindex(c).to_numpy(), UNASSIGNED),
        "nearest_label": spread(cluster_names[c], UNASSIGNED),
        "source_label": spread(names[outcome.source_codes], UNASSIGNED),
        "cluster": spread(c, -1),
        "probability": spread(per_cluster[np.arange(len(c)), c], 0.0),
        "cluster_confidence": spread(confidence[c], 0.0),
        "novel": spread(novel[c], False),
        "empty": empty,
    }, index=pd.Index(obs_names, name=None))
    probabilities = spread((per_cluster @ np.eye(len(names), dtype=np.float32)[named]).astype(np.float32), 0.0)
    return TransferResult(
        obs=obs,
        probabilities=pd.DataFrame(probabilities, index=obs.index, columns=list(names)),
        clusters=clusters,
        embedding=spread(outcome.embedding, blank),
        provenance=provenance,
    )


def _spread(values: np.ndarray, empty: np.ndarray, fill) -> np.ndarray:
    """Per-cell ``values`` of the cells that are not ``empty``, in order, spread over every cell; ``fill`` at
    the empty ones."""
    out = np.empty((len(empty), *np.shape(values)[1:]), dtype=np.asarray(values).dtype)
    out[empty] = fill
    out[~empty] = values
    return out


def informative_genes(type_profiles: np.ndarray, present: np.ndarray) -> np.ndarray:
    """Positions of the ``INFORMATIVE_GENES`` measured reference genes (all of them if fewer) whose mean
    expression varies most between reference types.

    Correlating profiles over these rather than over every gene keeps a small cluster's own noise from
    drowning its type's signal (10-cell gamma clusters: 0.3 over all 2,000 genes, 0.7 over these, on Baron).
    A fixed number rather than a share: a quarter of the genes an ortholog-mapped query measures made a
    mouse alpha cluster correlate better with human beta.
    """
    measured = np.flatnonzero(present)
    spread = type_profiles[:, measured].var(0)
    return np.sort(measured[np.argsort(spread, kind="stable")[::-1][:INFORMATIVE_GENES]])


def _attenuation(profiles: np.ndarray, noise: np.ndarray) -> np.ndarray:
    """The square root of each profile's reliability: the share of its variance over the genes (rows of
    ``profiles``) that its estimated ``noise`` variance (one per profile) does not explain, taken as at least
    ``MIN_RELIABILITY``. A correlation divided by it is corrected for that noise (Spearman's correction)."""
    spread = profiles.var(1)
    reliability = np.divide(spread - noise, spread, out=np.ones(len(spread)), where=spread > 0)
    return np.sqrt(np.clip(reliability, MIN_RELIABILITY, 1))


def _noise_corrected(similarities: np.ndarray, profiles: np.ndarray, within_variance: np.ndarray,
                     sizes: np.ndarray) -> np.ndarray:
    """``similarities`` (clusters x types), the correlations of the cluster mean ``profiles`` (clusters x
    genes) with the types' profiles, corrected for the noise of a mean over few cells: each row is divided by
    the :func:`_attenuation` of its profile, whose noise is the cells' pooled ``within_variance`` (per gene,
    averaged) / its size (the effective size of a weighted mean).

    A lone cell's profile is mostly noise, so its correlation with its own type is low where a large
    cluster's would not be (human3's one T cell on a 25% panel: 0.26); large clusters change by 0.02 or less.
    """
    noise = within_variance.mean() / np.maximum(sizes, 1)
    return np.clip(similarities / _attenuation(profiles, noise)[:, None], -1, 1)


def _type_attenuation(type_profiles: np.ndarray, type_counts, genes: np.ndarray) -> np.ndarray:
    """:func:`_attenuation` of each reference type's profile over ``genes``, a mean over its ``type_counts``
    training cells. The reference scaled every gene to unit variance over its training cells, so the variance
    within types is what the types' means leave: 1 - sum over types of (share of cells x mean squared)."""
    counts = np.asarray(type_counts, dtype=np.float64)
    means = type_profiles[:, genes].astype(np.float64)
    within = np.clip(1 - ((counts / counts.sum())[:, None] * means**2).sum(0), 0, None)
    return _attenuation(means, within.mean() / np.maximum(counts, 1))


def _correlations(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pearson correlation of every row of ``a`` with every row of ``b`` (0 where a row is constant)."""
    a = a - a.mean(1, keepdims=True)
    b = b - b.mean(1, keepdims=True)
    norms = np.outer(np.linalg.norm(a, axis=1), np.linalg.norm(b, axis=1))
    return np.divide(a @ b.T, norms, out=np.zeros(norms.shape), where=norms > 0)
