"""The query's own clusters: its structure over the reference genes it measures, found without the reference.

Fine-tuning has one cluster per reference type, so a population the reference lacks is absorbed by the type
it resembles most. Clustering the query on its own, as a scanpy user would (each gene scaled with the query's
own statistics, principal components, a nearest-neighbour graph, Leiden), gives such a population a cluster of
its own, which the naming step (:mod:`._naming`) then compares with the reference types. Own scaling also
takes a platform's per-gene offset out of the comparison.

Memory is bounded by the chunk size: the statistics, the principal axes (from the genes x genes covariance)
and the cluster means each take one ordered pass over the cells; only the components are held per cell.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from ._data import ScaledMatrix
from ._errors import ItClustError
from ._preprocess import mean_std

N_COMPONENTS = 30  # principal components the neighbour graph is built on
N_NEIGHBORS = 15  # scanpy's default
RESOLUTION = 1.0  # Leiden resolution, scanpy's default
MAX_PCA_CELLS = 10_000  # the principal axes of a larger query come from a sample of this many cells
MAX_GRAPH_CELLS = 50_000  # a larger query is clustered on a sample of this many cells
CHUNK_ROWS = 8192  # cells per chunk of a pass


@dataclass(frozen=True)
class QueryClusters:
    """The query's own clusters and what naming reads from them."""

    labels: np.ndarray  # cells: own cluster, 0 .. n-1
    profiles: np.ndarray  # own clusters x reference genes: mean expression scaled with the query's own statistics


def query_clusters(data: ScaledMatrix, present: np.ndarray, *, seed: int = 0) -> QueryClusters:
    """Cluster the cells of ``data`` (the prepared query; its first ``len(present)`` columns are the reference
    genes, of which it measures those ``present``) on their own structure: the measured genes scaled with the
    query's own mean and standard deviation, ``N_COMPONENTS`` principal components, the graph joining each
    cell to its ``N_NEIGHBORS`` nearest cells, and its Leiden communities at ``RESOLUTION`` (modularity).

    The principal axes of a query of more than ``MAX_PCA_CELLS`` cells come from that many cells drawn at
    random (``seed``); a query of more than ``MAX_GRAPH_CELLS`` cells is clustered on that many, every other
    cell joining the cluster whose centre is nearest in the components."""
    columns = np.flatnonzero(present)
    mean, std = _own_statistics(data, columns)
    scaled = lambda block: np.clip((block[:, columns].toarray() - mean) / std, -data.max_value, data.max_value)  # noqa: E731
    n_cells = data.n_cells
    rng = np.random.default_rng(seed)
    in_pca = _sample(n_cells, MAX_PCA_CELLS, rng)
    total, gram, start = np.zeros(len(columns)), np.zeros((len(columns), len(columns))), 0
    for block in _chunks(data):
        z = scaled(block[in_pca[start : start + block.shape[0]]])  # only the sampled rows made dense
        start += block.shape[0]
        total += z.sum(0)
        gram += z.T @ z
    n_pca = int(in_pca.sum())
    centre = total / n_pca
    covariance = gram / n_pca - np.outer(centre, centre)
    axes = _principal_axes(covariance, max(1, min(N_COMPONENTS, len(columns) - 1, n_pca - 2)))
    components = np.concatenate([(scaled(block) - centre) @ axes for block in _chunks(data)])
    sample = np.flatnonzero(_sample(n_cells, MAX_GRAPH_CELLS, rng))
    labels = _leiden(components[sample], seed)
    if len(sample) < n_cells:
        centres = np.stack([components[sample[labels == k]].mean(0) for k in range(labels.max() + 1)])
        labels = np.concatenate([_nearest(components[i : i + CHUNK_ROWS], centres)
                                 for i in range(0, n_cells, CHUNK_ROWS)])
    sums, start = np.zeros((labels.max() + 1, len(columns))), 0
    for block in _chunks(data):
        members = labels[start : start + block.shape[0]]
        start += block.shape[0]
        sums += sp.csr_matrix((np.ones(len(members)), (members, np.arange(len(members)))),
                              shape=(len(sums), len(members))) @ scaled(block)
    profiles = np.zeros((len(sums), len(present)))
    profiles[:, columns] = sums / np.maximum(np.bincount(labels, minlength=len(sums)), 1)[:, None]
    return QueryClusters(labels, profiles)


def _sample(n: int, size: int, rng: np.random.Generator) -> np.ndarray:
    """A mask over ``n`` cells: all of them, or ``size`` drawn at random when there are more."""
    if n <= size:
        return np.ones(n, bool)
    mask = np.zeros(n, bool)
    mask[rng.choice(n, size, replace=False)] = True
    return mask


def _principal_axes(covariance: np.ndarray, n: int) -> np.ndarray:
    """The ``n`` leading eigenvectors of ``covariance`` (columns), each signed so its largest entry is positive."""
    from scipy.sparse.linalg import eigsh

    if n >= len(covariance) - 1:
        values, vectors = np.linalg.eigh(covariance)
    else:
        values, vectors = eigsh(covariance, k=n, v0=np.ones(len(covariance)))
    axes = vectors[:, np.argsort(values)[::-1][:n]]
    return axes * np.sign(axes[np.abs(axes).argmax(0), np.arange(axes.shape[1])])


def _leiden(components: np.ndarray, seed: int) -> np.ndarray:
    """Leiden communities (modularity, ``RESOLUTION``) of the graph joining each row to its ``N_NEIGHBORS``
    nearest rows, numbered by size (0 the largest)."""
    from sklearn.neighbors import NearestNeighbors

    try:
        import igraph
    except ImportError:
        raise ItClustError("finding the query's own clusters needs igraph; pip install igraph") from None
    k = min(N_NEIGHBORS, len(components) - 1)
    if k < 1:
        return np.zeros(len(components), int)
    neighbours = NearestNeighbors(n_neighbors=k + 1).fit(components).kneighbors(return_distance=False)[:, 1:]
    edges = np.column_stack([np.repeat(np.arange(len(components)), k), neighbours.ravel()])
    graph = igraph.Graph(n=len(components), edges=edges, directed=False).simplify()
    igraph.set_random_number_generator(random.Random(seed))
    try:
        found = graph.community_leiden(objective_function="modularity", resolution=RESOLUTION, n_iterations=-1)
    finally:
        igraph.set_random_number_generator(random)
    labels = np.asarray(found.membership)
    order = np.argsort(-np.bincount(labels), kind="stable")
    return np.argsort(order)[labels]


def _nearest(rows: np.ndarray, centres: np.ndarray) -> np.ndarray:
    """Index of the nearest of ``centres`` for each of ``rows``."""
    return (((rows**2).sum(1)[:, None] - 2 * rows @ centres.T) + (centres**2).sum(1)).argmin(1)


def _chunks(data: ScaledMatrix):
    """The log-normalised rows of ``data`` in order, ``CHUNK_ROWS`` at a time."""
    for start in range(0, data.n_cells, CHUNK_ROWS):
        yield data.block(start, min(start + CHUNK_ROWS, data.n_cells))


def _own_statistics(data: ScaledMatrix, columns: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and standard deviation of the log-normalised ``columns`` over the cells of ``data``."""
    sums, squares = np.zeros(len(columns)), np.zeros(len(columns))
    for block in _chunks(data):
        values = block[:, columns]
        sums += np.asarray(values.sum(0)).ravel()
        squares += np.asarray(values.multiply(values).sum(0)).ravel()
    return mean_std(sums, squares, data.n_cells)
