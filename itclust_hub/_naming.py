"""Naming the target clusters: which reference type each cluster is, and whether it is novel.

The rules are listed once, in :func:`name_clusters`. They read only what fine-tuning left on the result
(:class:`ClusterEvidence`), so naming can be re-run with other thresholds or at another level without
fine-tuning again, as CellTypist's ``majority_vote`` runs after ``annotate``."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import pandas as pd

from ._errors import ItClustError
from ._network import cell_probabilities
from ._ontology import UNASSIGNED, at_level, check_level
from ._query_clusters import QueryClusters
from ._result import TransferResult

# Why each constant has its value, and the studies it was checked on: benchmarks/RESULTS.md, "Naming rules".
INFORMATIVE_GENES = 500  # genes a cluster's similarity to a reference type is measured on
RENAME_SIMILARITY = 0.5  # least similarity to the closest type for a cluster to take that type
NOVEL_SIMILARITY = 0.5  # a query cluster matching no reference type this well (every measured gene) is novel
CROSS_SPECIES_CONFIDENCE = 0.5  # rule 3's default for a query of another organism (ItClust's); within one: off
TOP_GENES = 5  # genes listed per query cluster: most above its nearest reference type


@dataclass(frozen=True)
class ClusterEvidence:
    """What the naming step reads, kept on a :class:`TransferResult` (``result.evidence``).

    Per cell arrays cover the cells that are not ``empty`` (a mask over every cell)."""

    cell_types: list[str]
    ontology: dict | None  # reference type -> Cell Ontology terms (see _ontology), or None
    type_profiles: np.ndarray  # types x reference genes: mean scaled expression of each type's training cells
    present: np.ndarray  # reference genes: whether the query measures it
    votes: np.ndarray  # clusters x types: cells of each cluster by the type they started self-training with
    profiles: np.ndarray  # clusters x genes: mean scaled expression of each cluster's cells
    clusters: np.ndarray  # cells: final cluster
    cluster_probabilities: np.ndarray  # cells x clusters: soft assignment, squared and renormalised
    source_codes: np.ndarray  # cells: the source network's direct prediction (type index)
    empty: np.ndarray  # every cell: no expression in any gene the reference reads
    genes: list[str]  # the reference genes (columns of the profiles)
    query_clusters: np.ndarray  # cells: the query's own cluster (see _query_clusters)
    query_profiles: np.ndarray  # query clusters x genes: mean expression scaled with the query's own statistics
    same_organism: bool  # the query is of the reference's organism (the novel-population rule applies)


def build_result(outcome, query: QueryClusters, cell_types: list[str], genes: list[str], type_profiles: np.ndarray,
                 present: np.ndarray, obs_names, min_confidence: float | None, provenance: dict,
                 empty: np.ndarray | None = None, *, same_organism: bool = True, ontology: dict | None = None,
                 level: str = "fine") -> TransferResult:
    """The :class:`TransferResult` of a fine-tuning ``outcome`` and the ``query``'s own clusters: its evidence,
    named by :func:`name_clusters`.

    ``outcome`` and ``query`` cover the cells that are not ``empty`` (a mask over ``obs_names``: cells with no
    expression over the genes the reference reads, left out of fine-tuning); the result has a row for every
    cell, in order, the empty ones labelled ``"Unassigned"`` with ``empty`` True, cluster and query cluster -1,
    probabilities 0 and the embedding of a cell with no expression.
    """
    n_clusters = outcome.q.shape[1]
    votes = np.zeros((n_clusters, len(cell_types)))
    np.add.at(votes, (outcome.clusters, outcome.start_codes), 1)
    empty = np.zeros(len(outcome.clusters), bool) if empty is None else np.asarray(empty, bool)
    evidence = ClusterEvidence(
        cell_types=list(cell_types), ontology=ontology, type_profiles=np.asarray(type_profiles),
        present=np.asarray(present, bool), votes=votes, profiles=outcome.cluster_profiles, clusters=outcome.clusters,
        cluster_probabilities=cell_probabilities(outcome.q.astype(np.float64)).astype(np.float32),
        source_codes=outcome.source_codes, empty=empty, genes=list(genes), query_clusters=query.labels,
        query_profiles=query.profiles, same_organism=same_organism)
    blank = np.zeros(outcome.embedding.shape[1:], outcome.embedding.dtype) if outcome.blank_embedding is None else (
        outcome.blank_embedding)
    unnamed = TransferResult(obs=pd.DataFrame(index=pd.Index(obs_names, name=None)), probabilities=pd.DataFrame(),
                             clusters=pd.DataFrame(), embedding=_spread(outcome.embedding, empty, blank),
                             provenance=provenance, evidence=evidence)
    return name_clusters(unnamed, min_confidence=min_confidence, level=level)


def name_clusters(result: TransferResult, *, min_confidence: float | None = None,
                  level: str = "fine") -> TransferResult:
    """Name the clusters of a transfer's ``result`` again, with these thresholds or at this ``level``; a new
    :class:`TransferResult` (``result`` is not modified; its embedding and evidence are shared). No fine-tuning
    is repeated: ``ItClust.transfer(...)`` followed by ``name_clusters(result, min_confidence=0.8)`` is
    what ``transfer(..., min_confidence=0.8)`` returns.

    The rules, in order:

    1. **Name.** A cluster is named after the reference type most of its cells started self-training with
       (ties go to the tied type whose expression correlates best with the cluster's over every measured
       gene).
    2. **Rename.** It takes another type instead when its mean expression correlates best with that type
       over every measured gene and matches it at ``RENAME_SIMILARITY`` or more over
       :func:`informative_genes` (``renamed``).
    3. **Confidence.** Its ``confidence`` is the share of its cells that started with its type (ItClust's
       share of labels kept); below ``min_confidence`` it is novel (renamed clusters excepted: their cells
       started as another type by construction). By default (``min_confidence=None``) it applies across
       species only, at ``CROSS_SPECIES_CONFIDENCE`` (0.5, ItClust's threshold), where rule 4 does not: within
       a species it flagged no novel cell that rule 4 missed on any pair measured, and flagged a known cell
       line; across species it is the only rule that finds a novel population. A number applies it to any
       query (0: never).
    4. **Novel population.** The query's own clusters (its structure alone: ``_query_clusters``) are compared
       with the reference types: one whose mean expression (the query scaled with its own statistics)
       correlates with no type's at ``NOVEL_SIMILARITY`` or more over every measured gene is novel, whatever
       fine-tuned clusters its cells are in. Only for a query of the reference's organism: across species
       the correlations of known populations fall as low as those of novel ones.

    ``similarity`` is the correlation of a cluster's mean expression with its type's over the informative
    genes (it decides renaming). Cells of novel clusters and novel query clusters are labelled
    ``"Unassigned"`` (``novel``); ``nearest_label`` keeps the fine-tuned cluster's type. ``query_cluster`` is
    a cell's own cluster and ``novelty`` one minus that cluster's best correlation with a reference type;
    ``result.query_clusters`` lists them, with the genes most above their nearest type. ``level="coarse"``
    reports labels, probabilities and cluster names at the reference's coarse Cell Ontology level. Why each rule and constant is kept, and the studies it was checked on:
    ``benchmarks/RESULTS.md``, "Naming rules".
    """
    evidence = result.evidence
    if evidence is None:
        raise ItClustError("this result carries no cluster evidence to name clusters from; pass the result that "
                           "ItClust.transfer returned")
    check_min_confidence(min_confidence)
    check_level(level, evidence.ontology, result.provenance.get("reference", "this"))
    if min_confidence is None:
        min_confidence = 0.0 if evidence.same_organism else CROSS_SPECIES_CONFIDENCE
    clusters, cluster_types = _name(evidence, min_confidence)
    query_clusters = _name_query_clusters(evidence)
    names = np.asarray(evidence.cell_types, dtype=object)
    c, own, empty = evidence.clusters, evidence.query_clusters, evidence.empty
    novel = clusters["novel"].to_numpy()[c] | query_clusters["novel"].to_numpy()[own]
    probability = evidence.cluster_probabilities
    spread = lambda values, fill: _spread(values, empty, fill)  # noqa: E731
    obs = pd.DataFrame({
        "label": spread(np.where(novel, UNASSIGNED, names[cluster_types][c]), UNASSIGNED),
        "nearest_label": spread(names[cluster_types][c], UNASSIGNED),
        "source_label": spread(names[evidence.source_codes], UNASSIGNED),
        "cluster": spread(c, -1),
        "probability": spread(probability[np.arange(len(c)), c], 0.0),
        "cluster_confidence": spread(clusters["confidence"].to_numpy()[c], 0.0),
        "novel": spread(novel, False),
        "query_cluster": spread(own, -1),
        "novelty": spread(1 - query_clusters["similarity"].to_numpy()[own], 0.0),
        "empty": empty,
    }, index=result.obs.index)
    probabilities = spread((probability @ np.eye(len(names), dtype=np.float32)[cluster_types]).astype(np.float32), 0.0)
    settings = {**result.provenance.get("settings", {}), "min_confidence": min_confidence, "level": level}
    named = dataclasses.replace(
        result, obs=obs, probabilities=pd.DataFrame(probabilities, index=obs.index, columns=list(names)),
        clusters=clusters[clusters["size"] > 0].copy(), query_clusters=query_clusters,
        provenance={**result.provenance, "settings": settings})
    return at_level(named, evidence.ontology, level)


def check_min_confidence(min_confidence: float | None) -> None:
    """Refuse a ``min_confidence`` that is not a share (0 to 1) or None (the default)."""
    if min_confidence is not None and not 0 <= min_confidence <= 1:
        raise ItClustError(f"min_confidence must be between 0 and 1, not {min_confidence}")


def _name(evidence: ClusterEvidence, min_confidence: float):
    """The cluster table (every cluster, empty ones included) and each cluster's reference type index."""
    names = np.asarray(evidence.cell_types, dtype=object)
    votes, type_profiles, present = evidence.votes, evidence.type_profiles, evidence.present
    n_clusters = len(votes)
    sizes = votes.sum(1).astype(int)
    genes = informative_genes(type_profiles, present)
    profiles = evidence.profiles[:, : len(present)]  # any context genes' columns follow the reference's
    similarities = _correlations(profiles[:, genes], type_profiles[:, genes])
    measured = np.flatnonzero(present)
    correlations = _correlations(profiles[:, measured], type_profiles[:, measured])  # over every measured gene
    closest = correlations.argmax(1)
    rows = np.arange(n_clusters)
    # the type most of each cluster's cells started self-training with (votes are whole numbers, the added
    # (correlation + 1) / 4 is under 1/2: it only breaks ties, for the tied type that correlates best)
    started = (votes + (correlations + 1) / 4).argmax(1)
    renamed = (closest != started) & (similarities[rows, closest] >= RENAME_SIMILARITY)
    named = np.where(renamed, closest, started)
    confidence = np.divide(votes[rows, named], sizes, out=np.zeros(n_clusters), where=sizes > 0)
    novel = (confidence < min_confidence) & ~renamed
    table = pd.DataFrame({
        "label": np.where(novel, UNASSIGNED, names[named]),
        "nearest_label": names[named],
        "size": sizes,
        "confidence": confidence,
        "similarity": similarities[rows, named],
        "closest_type": names[closest],
        "renamed": renamed,
        "novel": novel,
    })
    table.index.name = "cluster"
    return table, named


def _name_query_clusters(evidence: ClusterEvidence) -> pd.DataFrame:
    """The query's own clusters: size, nearest reference type and correlation with it over every measured
    gene, whether novel (rule 4 of :func:`name_clusters`), and the genes most above that type."""
    names = np.asarray(evidence.cell_types, dtype=object)
    measured = np.flatnonzero(evidence.present)
    profiles = evidence.query_profiles[:, : len(evidence.present)]
    correlations = _correlations(profiles[:, measured], evidence.type_profiles[:, measured])
    nearest = correlations.argmax(1)
    similarity = correlations.max(1)
    above = profiles[:, measured] - evidence.type_profiles[nearest][:, measured]
    genes = np.asarray(evidence.genes, dtype=object)[measured]
    table = pd.DataFrame({
        "size": np.bincount(evidence.query_clusters, minlength=len(profiles)),
        "nearest_type": names[nearest],
        "similarity": similarity,
        "novel": evidence.same_organism & (similarity < NOVEL_SIMILARITY),
        "top_genes": [", ".join(genes[np.argsort(-row, kind="stable")[:TOP_GENES]]) for row in above],
    })
    table.index.name = "query_cluster"
    return table


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
    drowning its type's signal; a fixed number rather than a share of the measured genes (see
    ``benchmarks/RESULTS.md``, "Naming rules").
    """
    measured = np.flatnonzero(present)
    spread = type_profiles[:, measured].var(0)
    return np.sort(measured[np.argsort(spread, kind="stable")[::-1][:INFORMATIVE_GENES]])


def _correlations(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pearson correlation of every row of ``a`` with every row of ``b`` (0 where a row is constant)."""
    a = a - a.mean(1, keepdims=True)
    b = b - b.mean(1, keepdims=True)
    norms = np.outer(np.linalg.norm(a, axis=1), np.linalg.norm(b, axis=1))
    return np.divide(a @ b.T, norms, out=np.zeros(norms.shape), where=norms > 0)
