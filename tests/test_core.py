"""The core algorithm on real Baron pancreas data: training, transfer, round trip, gene alignment,
input-type detection, cluster naming and every bad input of the public API."""

import json

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import scanpy as sc
import torch
from sklearn.metrics import accuracy_score

import itclust_hub as ih
from itclust_hub._errors import ItClustError
from itclust_hub._preprocess import detect_input_type
from itclust_hub._query import prepare_query
from itclust_hub._naming import NOVEL_SIMILARITY, build_result, informative_genes
from itclust_hub._query_clusters import QueryClusters
from itclust_hub._transfer import FineTuneOutcome, _starting_centroids

from _data import read, small_reference


@pytest.fixture(scope="module")
def model():
    return small_reference()


@pytest.fixture(scope="module")
def query():
    human = read("baron_human_pancreas")
    return human[human.obs["donor"] == "human3"].copy()


def _snapshot(adata):
    return adata.X.copy(), adata.obs.copy(), adata.var.copy(), dict(adata.uns), list(adata.obsm)


def _same(adata, snap):
    X, obs, var, uns, obsm = snap
    return ((adata.X != X).nnz == 0 and adata.obs.equals(obs) and adata.var.equals(var)
            and dict(adata.uns) == uns and list(adata.obsm) == obsm)


def test_held_out_donor_accuracy_and_contract(model, query):
    snap = _snapshot(query)
    result = model.transfer(query, progress=False)
    assert _same(query, snap), "transfer modified the user's AnnData"
    truth = query.obs["cell_type1"].astype(str)
    assert accuracy_score(truth, result.obs["nearest_label"]) >= 0.90
    assert accuracy_score(truth, result.labels) >= 0.88
    assert list(result.labels.index) == list(query.obs_names)
    assert result.probabilities.shape == (query.n_obs, len(model.cell_types))
    assert np.allclose(result.probabilities.sum(axis=1), 1, atol=1e-4)
    assert result.embedding.shape[0] == query.n_obs
    assert set(result.clusters.columns) >= {"label", "size", "confidence", "novel"}
    assert result.clusters["size"].sum() == query.n_obs
    assert {"label", "nearest_label", "source_label", "probability", "cluster_confidence"} <= set(result.obs.columns)
    assert result.provenance["input_type"] == "counts"
    annotated = result.to_adata(query)
    assert "itclust_label" in annotated.obs and "X_itclust" in annotated.obsm and "itclust_label" not in query.obs


def test_annotation_survives_h5ad_and_annotates_a_backed_anndata(model, query, tmp_path):
    small = query[:200].copy()
    result = model.transfer(small, progress=False)
    small.write_h5ad(tmp_path / "query.h5ad")
    backed = ad.read_h5ad(tmp_path / "query.h5ad", backed="r")
    with pytest.raises(ItClustError, match="backed .*pass copy=False") as info:
        result.to_adata(backed)
    assert "\n" not in str(info.value)
    result.to_adata(backed, copy=False).write_h5ad(tmp_path / "annotated.h5ad")
    annotated = ad.read_h5ad(tmp_path / "annotated.h5ad")
    assert (annotated.obs["itclust_label"].astype(str) == result.labels).all()
    assert annotated.obs["itclust_cluster"].dtype == "category"
    assert list(annotated.obs["itclust_cluster"].cat.categories) == list(result.clusters.index)
    provenance = annotated.uns["itclust"]["provenance"]  # nested, None values left out
    assert provenance["reference"] == result.provenance["reference"] and "revision" not in provenance
    assert provenance["settings"]["min_confidence"] == result.provenance["settings"]["min_confidence"]
    assert list(provenance["changed"]) == pytest.approx(result.provenance["changed"])


def test_fine_tuning_does_not_lose_to_the_source_network(model, query):
    result = model.transfer(query, progress=False)
    truth = query.obs["cell_type1"].astype(str)
    assert accuracy_score(truth, result.obs["nearest_label"]) >= accuracy_score(truth, result.obs["source_label"])


def test_round_trip_gives_identical_results(model, query, tmp_path):
    model.save_pretrained(tmp_path / "ref")
    loaded = ih.ItClust.from_pretrained(tmp_path / "ref")
    a = model.transfer(query, progress=False, seed=3)
    b = loaded.transfer(query, progress=False, seed=3)
    assert a.labels.equals(b.labels)
    np.testing.assert_array_equal(a.embedding, b.embedding)
    np.testing.assert_array_equal(a.probabilities.to_numpy(), b.probabilities.to_numpy())
    assert loaded.genes == model.genes and loaded.cell_types == model.cell_types


def test_fine_tuning_settings_travel_with_the_reference(query, tmp_path):
    bundled = ih.ItClust.from_pretrained("pancreas-human")  # written before references carried settings
    assert bundled.fine_tuning == ih.FineTuning()
    bundled.fine_tuning = {"max_iter": 2}  # the settings a lab validated its reference with
    bundled.save_pretrained(tmp_path / "ref")
    assert json.loads((tmp_path / "ref" / "config.json").read_text())["fine_tuning"]["max_iter"] == 2
    loaded = ih.ItClust.from_pretrained(tmp_path / "ref")
    assert loaded.fine_tuning == ih.FineTuning(max_iter=2)
    cells = query[:600].copy()
    shipped = loaded.transfer(cells, progress=False)
    assert shipped.provenance["n_iter"] == shipped.provenance["settings"]["max_iter"] == 2
    assert shipped.provenance["settings"]["tol"] == ih.FineTuning().tol
    overridden = loaded.transfer(cells, progress=False, fine_tuning={"max_iter": 1})
    assert overridden.provenance["n_iter"] == 1
    assert loaded.fine_tuning.max_iter == 2  # an override is for that call only
    with pytest.raises(ItClustError, match="no setting 'epochs'.*epochs_per_iter"):
        loaded.transfer(cells, fine_tuning={"epochs": 2})
    with pytest.raises(ItClustError, match="max_cells_per_iter must be at least batch_size"):
        loaded.transfer(cells, fine_tuning={"max_cells_per_iter": 10})
    with pytest.raises(ItClustError, match="max_iter must be an integer"):
        ih.FineTuning(max_iter=2.5)
    with pytest.raises(ItClustError, match="lr must be positive"):
        loaded.fine_tuning = {"lr": -1}


def test_training_is_deterministic_under_a_seed():
    human = read("baron_human_pancreas")
    ref = human[human.obs["donor"] == "human2"].copy()
    kw = dict(small_types="drop", pretrain_epochs=2, epochs=5, seed=7, progress=False)
    a, b = ih.train_reference(ref, "cell_type1", "a", **kw), ih.train_reference(ref, "cell_type1", "a", **kw)
    for key, value in a.tensors().items():
        assert np.array_equal(value.numpy(), b.tensors()[key].numpy()), key


def test_absent_type_keeps_cluster_names(model, query):
    # alpha (index 2 of 14 types) is missing from the query: every later type must keep its own name
    no_alpha = query[query.obs["cell_type1"] != "alpha"].copy()
    result = model.transfer(no_alpha, progress=False)
    table = pd.crosstab(no_alpha.obs["cell_type1"].astype(str), result.obs["nearest_label"])
    big = table[table.sum(axis=1) >= 20]
    assert len(big) >= 5
    assert (big.idxmax(axis=1) == big.index).all(), big.idxmax(axis=1).to_dict()


def test_clusters_named_by_their_cells_starting_types():
    # Clusters 0, 1, 2, 3 started at the centroids of types a, c, a, a. Self-training moved the cells that
    # started as "c" into cluster 0 (as a population gathers at a neighbour's centroid): cluster 0 is named c.
    # Cluster 1 is a tie (novel by confidence). Clusters 2 and 3 started as a but their mean expression is
    # closer to c's: cluster 2 matches c well (0.78) and is renamed c; cluster 3 only weakly (0.46): it keeps a.
    outcome = FineTuneOutcome(
        source_codes=np.array([0, 0, 2, 2, 0, 0, 0, 0, 0]), start_codes=np.array([0, 2, 2, 2, 0, 0, 0, 0, 0]),
        clusters=np.array([0, 0, 0, 1, 1, 2, 2, 3, 3]), q=np.tile([[0.6, 0.3, 0.1, 0.0]], (9, 1)),
        embedding=np.zeros((9, 2)),
        cluster_profiles=np.array([[0, 1, 0, 0], [1, 0, 0, 0], [2, 3, 0, 0], [1, 1.05, 0.8, 0]], dtype=float),
        n_iter=1, converged=True, changed=[0.0])
    profiles = np.array([[1, 0, 0, 0], [0, 0, 1, 0], [0, 1, 0, 0]], dtype=float)
    res = build_result(outcome, known_population(9), ["a", "b", "c"], list("ABCD"), profiles, np.ones(4, bool),
                       list("rstuvwxyz"), 0.6, {})
    # a tie goes to the tied type whose expression correlates best with the cluster's (cluster 1: a)
    assert list(res.obs["nearest_label"]) == ["c", "c", "c", "a", "a", "c", "c", "a", "a"]
    assert list(res.obs["source_label"]) == ["a", "a", "c", "c", "a", "a", "a", "a", "a"]
    assert res.clusters["confidence"].tolist() == pytest.approx([2 / 3, 0.5, 0.0, 1.0])  # started as its type
    assert res.clusters["similarity"].tolist() == pytest.approx(
        [1.0, 1.0, np.corrcoef([2, 3, 0, 0], [0, 1, 0, 0])[0, 1], np.corrcoef([1, 1.05, 0.8, 0], [1, 0, 0, 0])[0, 1]])
    assert res.clusters["similarity"][3] > 0.3  # similar enough to a, but more similar to c
    assert res.clusters["closest_type"].tolist() == ["c", "a", "c", "c"]
    assert res.clusters["renamed"].tolist() == [False, False, True, False]
    assert res.clusters["novel"].tolist() == [False, True, False, False]
    assert list(res.labels) == ["c"] * 3 + ["Unassigned"] * 2 + ["c"] * 2 + ["a"] * 2
    assert list(res.probabilities.columns) == ["a", "b", "c"] and (res.probabilities["b"] == 0).all()
    # each cell's q (0.6, 0.3, 0.1, 0.0) squared and renormalised, summed over the clusters each type names
    assert res.probabilities.to_numpy() == pytest.approx(np.tile([[0.09 / 0.46, 0.0, 0.37 / 0.46]], (9, 1)))
    assert res.obs["probability"].tolist() == pytest.approx([0.36 / 0.46] * 3 + [0.09 / 0.46] * 2 + [0.01 / 0.46] * 2 + [0.0] * 2)


def known_population(n_cells: int) -> QueryClusters:
    """The query's own structure as one cluster that matches reference type a (profile [1, 0, 0, 0]) exactly."""
    return QueryClusters(np.zeros(n_cells, int), np.array([[1.0, 0, 0, 0]]))


def test_a_query_cluster_no_type_matches_is_novel_within_a_species_only():
    # Fine-tuning put every cell in cluster 0 (type a, full confidence). The query's own structure has two
    # clusters: 0 matches a exactly; 1 (cells 2, 3) correlates with no type at NOVEL_SIMILARITY: novel.
    outcome = FineTuneOutcome(
        source_codes=np.zeros(4, int), start_codes=np.zeros(4, int), clusters=np.zeros(4, int),
        q=np.ones((4, 1)), embedding=np.zeros((4, 2)), cluster_profiles=np.array([[1.0, 0, 0, 0]]),
        n_iter=1, converged=True, changed=[0.0])
    types = np.array([[1, 0, 0, 0], [0, 0, 1, 0], [0, 1, 0, 0]], dtype=float)
    own = QueryClusters(np.array([0, 0, 1, 1]), np.array([[1.0, 0, 0, 0], [0.2, 0.3, 0.2, 1.0]]))
    args = (outcome, own, ["a", "b", "c"], ["G1", "G2", "G3", "G4"], types, np.ones(4, bool), list("wxyz"), 0.5, {})
    res = build_result(*args)
    assert list(res.labels) == ["a", "a", "Unassigned", "Unassigned"]
    assert list(res.obs["nearest_label"]) == ["a"] * 4 and list(res.obs["query_cluster"]) == [0, 0, 1, 1]
    assert res.obs["novel"].tolist() == [False, False, True, True]
    assert not res.clusters["novel"].any()  # the fine-tuned cluster itself is confident
    table = res.query_clusters
    assert table["novel"].tolist() == [False, True] and table["size"].tolist() == [2, 2]
    assert table["similarity"].max() == pytest.approx(1.0) and table["similarity"][1] < NOVEL_SIMILARITY
    assert res.obs["novelty"].tolist() == pytest.approx([0, 0, 1 - table["similarity"][1], 1 - table["similarity"][1]])
    assert table["top_genes"][1].split(", ")[0] == "G4"  # most above its nearest type
    across = build_result(*args, same_organism=False)  # across species the level separates nothing: not applied
    assert list(across.labels) == ["a"] * 4 and not across.query_clusters["novel"].any()


def test_a_tie_between_starting_types_goes_to_the_type_the_cluster_resembles():
    # One cell started as a, one as c: named c, whose expression the cluster's matches best, not the first type.
    # It matches c at 0.47, too weakly to rename a cluster named a (which would be novel).
    outcome = FineTuneOutcome(
        source_codes=np.array([0, 2]), start_codes=np.array([0, 2]), clusters=np.array([0, 0]),
        q=np.ones((2, 1)), embedding=np.zeros((2, 2)),
        cluster_profiles=np.array([[0.8, 1, 0.9, 0]]), n_iter=1, converged=True, changed=[0.0])
    profiles = np.array([[1, 0, 0, 0], [0, 0, 1, 0], [0, 1, 0, 0]], dtype=float)
    res = build_result(outcome, known_population(2), ["a", "b", "c"], list("ABCD"), profiles, np.ones(4, bool),
                       ["x", "y"], 0.5, {})
    assert list(res.labels) == ["c", "c"] and res.clusters["confidence"].tolist() == [0.5]


def test_reported_probability_is_calibrated_on_a_held_out_donor(model, query):
    result = model.transfer(query, progress=False)
    correct = (result.labels == query.obs["cell_type1"].astype(str)).to_numpy()
    probability = result.obs["probability"].to_numpy()
    frame = pd.DataFrame({"correct": correct, "probability": probability,
                          "bin": pd.cut(probability, [0, 0.5, 0.7, 0.8, 0.9, 0.95, 1.0], include_lowest=True)})
    table = frame.groupby("bin", observed=True).agg(n=("correct", "size"), accuracy=("correct", "mean"),
                                                    probability=("probability", "mean"))
    error = float((table["accuracy"] - table["probability"]).abs() @ table["n"]) / len(frame)  # cell-weighted
    print(f"accuracy {correct.mean():.3f}, mean probability {probability.mean():.3f}, calibration error {error:.3f}")
    print(table.round(3))
    assert error < 0.1
    assert abs(probability.mean() - correct.mean()) < 0.1


def test_starting_centroids_weight_cells_by_the_source_networks_certainty():
    z = torch.tensor([[0.0, 0.0], [2.0, 0.0], [34.0, 0.0], [0.0, 5.0]])
    q_source = torch.tensor([[1.0, 0.0, 0.0, 0.0], [1.0, 0.0, 0.0, 0.0],
                             [0.5, 0.3, 0.1, 0.1],  # a far cell the source network barely calls type 0
                             [0.1, 0.8, 0.05, 0.05]])
    centroids = _starting_centroids(z, q_source)
    # type 0: (1 * 0 + 1 * 2 + 0.5**4 * 34) / (1 + 1 + 0.5**4) = 2.0; squared weights give 4.67, the plain mean 12
    assert centroids[:2].flatten().tolist() == pytest.approx([2.0, 0.0, 0.0, 5.0])
    assert torch.isnan(centroids[2:]).all()  # types no cell is assigned to


def test_similarity_is_measured_on_genes_that_tell_types_apart():
    rng = np.random.default_rng(0)
    profiles = rng.normal(0, 0.05, (3, 3000))
    profiles[:, :1200] = rng.normal(0, 2, (3, 1200))  # genes 0-1199 differ between types, the rest barely
    present = np.ones(3000, bool)
    present[::2] = False  # the query measures the odd genes only
    genes = informative_genes(profiles, present)
    assert len(genes) == 500 and present[genes].all() and (genes < 1200).all()
    assert len(informative_genes(profiles, np.arange(3000) < 300)) == 300  # fewer than 500 measured: all of them


def test_small_clusters_of_known_types_are_not_called_novel(model, query):
    result = model.transfer(query, progress=False)
    truth = pd.crosstab(result.obs["cluster"], query.obs["cell_type1"].astype(str).to_numpy())
    pure = truth[(truth.max(axis=1) >= 0.8 * truth.sum(axis=1)) & (truth.sum(axis=1) >= 10)]
    known = pure[pure.idxmax(axis=1).isin(model.cell_types)]
    assert (known.sum(axis=1) < 30).any()  # the case that matters: a small cluster (gamma, 11 cells)
    table = result.clusters.loc[known.index]
    assert not table["novel"].any() and (table["similarity"] > 0.5).all(), table  # well clear of 0.3 (gamma: 0.3 over all genes)


def test_a_cluster_whose_expression_is_another_known_type_takes_that_type():
    # Donor human2 has almost no acinar cells; on a reference of the other donors, the ductal cells the source
    # network calls acinar gather in a cluster that most cells entered as "acinar" but whose expression is
    # ductal. It is labelled ductal (it was Unassigned, and fine-tuning lost 4 points to the source network).
    model = small_reference(donors=("human1", "human3"))
    human = read("baron_human_pancreas")
    query = human[human.obs["donor"] == "human2"].copy()
    result = model.transfer(query, progress=False)
    truth = query.obs["cell_type1"].astype(str)
    renamed = result.clusters[result.clusters["renamed"]]
    assert len(renamed) and not renamed["novel"].any()
    for cluster, row in renamed.iterrows():
        assert truth[(result.obs["cluster"] == cluster).to_numpy()].value_counts().idxmax() == row["label"], row
    assert accuracy_score(truth, result.labels) > accuracy_score(truth, result.obs["source_label"])


def test_cross_species_through_orthologs():
    model = small_reference()
    mouse = read("baron_mouse_pancreas")
    result = model.transfer(mouse, query_organism="mouse", progress=False)
    genes = result.provenance["genes"]
    assert genes["ortholog_mapped"] > 10000 and genes["fraction"] > 0.6
    truth = mouse.obs["cell_type1"].str.lower()
    shared = truth.isin([t.lower() for t in model.cell_types])
    assert accuracy_score(truth[shared], result.obs["nearest_label"].str.lower()[shared]) >= 0.75
    # across species ItClust's confidence rule applies by default (under half of a cluster's cells started as
    # its type: novel), where the query's own clusters do not; within a species it is off
    assert result.provenance["settings"]["min_confidence"] == 0.5
    clusters = result.clusters
    assert (clusters["novel"] == ((clusters["confidence"] < 0.5) & ~clusters["renamed"])).all()
    human = read("baron_human_pancreas")
    within = model.transfer(human[human.obs["donor"] == "human3"][:400].copy(), progress=False)
    assert within.provenance["settings"]["min_confidence"] == 0 and not within.clusters["novel"].any()
    with pytest.raises(ItClustError, match="ortholog"):
        model.transfer(mouse, query_organism="zebrafish", progress=False)


def test_wrong_tissue_gets_no_pancreatic_label(model):
    # Blood on a pancreas reference: no cell may get an endocrine, exocrine or stromal type. No query cluster of
    # blood matches a pancreas type, so (rule 4 of name_clusters) nearly every cell is Unassigned; the nearest
    # types still say where each population sits: the monocytes (LYZ) nearest the macrophage type.
    pbmc = read("pbmc3k_raw_unlabeled")
    result = model.transfer(pbmc, progress=False)
    assert result.provenance["genes"]["fraction"] > 0.5
    labels = result.labels.to_numpy()
    assert set(labels) <= {"Unassigned", "t_cell", "macrophage", "mast"}, set(labels)
    assert (labels == "Unassigned").mean() > 0.9
    nearest = result.obs["nearest_label"].to_numpy()
    assert (nearest == "macrophage").any()
    lyz = np.asarray(pbmc[nearest == "macrophage", "LYZ"].X.todense()).ravel() > 0
    assert lyz.mean() > 0.9, lyz.mean()


# --- gene alignment -------------------------------------------------------------------------------

def _prepared(model, adata, **kw):
    return prepare_query(adata, genes=model.genes, gene_ids=model.gene_ids, organism=model.organism,
                         recipe=model.recipe, **kw)


def test_alignment_by_symbol_is_case_insensitive(model, query):
    lower = query.copy()
    lower.var_names = lower.var_names.str.lower()
    a, b = _prepared(model, query), _prepared(model, lower)
    assert a.alignment.n_overlap == b.alignment.n_overlap == len(model.genes)
    assert (a.data.X != b.data.X).nnz == 0


def test_alignment_by_ensembl_ids_from_var_names_or_column(model):
    pbmc = read("pbmc3k_raw_unlabeled")
    by_symbol = _prepared(model, pbmc, gene_key="gene_symbols")
    ensembl = pbmc.copy()
    ensembl.var = pd.DataFrame(index=ensembl.var["gene_ids"].astype(str).to_numpy())
    by_id = _prepared(model, ensembl)
    assert by_id.alignment.id_type == "ensembl" and by_symbol.alignment.id_type == "symbol"
    assert by_id.alignment.n_overlap >= 0.9 * by_symbol.alignment.n_overlap
    assert _prepared(model, pbmc, gene_key="gene_ids").alignment.id_type == "ensembl"


def test_partial_overlap_is_reported_and_missing_genes_sit_at_zero(model, query):
    keep = np.random.default_rng(0).choice(model.genes, size=len(model.genes) // 4, replace=False)
    partial = query[:, query.var_names.isin(keep)].copy()
    prepared = _prepared(model, partial)
    assert prepared.alignment.n_overlap == len(keep)
    assert prepared.summary()["genes"]["fraction"] == pytest.approx(0.25, abs=0.01)
    missing = ~prepared.alignment.present
    assert np.all(prepared.data.rows(np.arange(20)).numpy()[:, missing] == 0)
    result = model.transfer(partial, progress=False)
    assert accuracy_score(partial.obs["cell_type1"], result.obs["nearest_label"]) >= 0.8


def _scaled(model, adata, scale):
    prepared = _prepared(model, adata, scale=scale, reference_stats=(model.gene_mean.numpy(), model.gene_std.numpy()))
    return prepared.scale, prepared.data.rows(np.arange(adata.n_obs)).numpy()


def test_reference_scaling_does_not_depend_on_the_query_composition(model, query):
    beta = (query.obs["cell_type1"] == "beta").to_numpy()
    _, whole = _scaled(model, query, "reference")
    _, beta_only = _scaled(model, query[beta].copy(), "reference")
    np.testing.assert_array_equal(whole[beta], beta_only)
    _, own_whole = _scaled(model, query, "own")
    _, own_beta_only = _scaled(model, query[beta].copy(), "own")
    assert np.abs(own_whole[beta] - own_beta_only).max() > 1  # own statistics move with the composition


def test_scale_auto_picks_reference_statistics_unless_few_genes_or_another_species(model, query):
    assert _scaled(model, query[:50].copy(), "auto")[0] == "reference"
    half = model.genes[: len(model.genes) // 2 - 1]
    assert _scaled(model, query[:50, query.var_names.isin(half)].copy(), "auto")[0] == "own"
    mouse = read("baron_mouse_pancreas")[:300].copy()
    assert model.transfer(mouse, query_organism="mouse", progress=False, fine_tuning={"max_iter": 1}).provenance["scale"] == "own"
    result = model.transfer(query[:300].copy(), progress=False, fine_tuning={"max_iter": 1}, scale="own")
    assert result.provenance["scale"] == "own"
    with pytest.raises(ItClustError, match="scale must be one of"):
        model.transfer(query, scale="query", progress=False)


def test_duplicated_query_genes_keep_the_most_expressed_copy(model, query):
    gene = model.genes[0]
    col = query[:, [gene]].X
    extra = ad.AnnData(sp.csr_matrix(col * 0), obs=query.obs[[]], var=pd.DataFrame(index=[gene]))
    doubled = ad.concat([query, extra], axis=1, merge="first")
    prepared = _prepared(model, doubled)
    assert prepared.alignment.n_duplicates == 1
    assert (prepared.data.X != _prepared(model, query).data.X).nnz == 0


# --- input type -----------------------------------------------------------------------------------

def test_input_type_detection(query):
    counts = query.X
    logged = query.copy()
    sc.pp.normalize_total(logged, target_sum=1e4)
    tpm = logged.X.copy()
    sc.pp.log1p(logged)
    assert detect_input_type(counts) == "counts"
    assert detect_input_type(logged.X) == "lognorm"
    tpm_scaled = query.copy()
    sc.pp.normalize_total(tpm_scaled, target_sum=1e6)
    assert detect_input_type(tpm_scaled.X) == "tpm"
    assert detect_input_type(tpm) == "tpm"


def test_lognormalised_and_tpm_queries_give_the_same_input(model, query):
    tpm = query.copy()
    sc.pp.normalize_total(tpm, target_sum=1e6)
    base = _prepared(model, query).data.X
    assert _prepared(model, tpm).input_type == "tpm"
    np.testing.assert_allclose(_prepared(model, tpm).data.X.toarray(), base.toarray(), rtol=1e-4, atol=1e-4)
    forced = _prepared(model, query, input_type="lognorm")
    assert forced.input_type == "lognorm" and forced.input_type_detected == "counts"


# --- bad input ------------------------------------------------------------------------------------

def _one_line_error(call, match):
    with pytest.raises(ItClustError, match=match) as info:
        call()
    assert "\n" not in str(info.value)


def test_bad_queries_give_one_line_errors_and_leave_adata_alone(model, query):
    _one_line_error(lambda: model.transfer("query.h5ad"), "expected an AnnData")
    _one_line_error(lambda: model.transfer(query[:0].copy()), "empty")
    unrelated = query.copy()
    unrelated.var_names = [f"G{i}" for i in range(unrelated.n_vars)]
    _one_line_error(lambda: model.transfer(unrelated), "no query gene matches")
    few = query[:, query.var_names.isin(model.genes[:20])].copy()
    _one_line_error(lambda: model.transfer(few), "below the minimum")
    for bad_value in (np.nan, np.inf, -1.0):
        bad = query.copy()
        bad.X = bad.X.copy()
        bad.X.data[0] = bad_value
        snap = _snapshot(bad)
        _one_line_error(lambda: model.transfer(bad), "NaN or inf|negative")
        X, *_ = snap
        assert bad.X.data[0] == X.data[0] or np.isnan(bad.X.data[0])
    _one_line_error(lambda: model.transfer(query, layer="counts"), "layer 'counts' not found")
    _one_line_error(lambda: model.transfer(query, use_raw=True), "no .raw")


def test_bad_training_input():
    human = read("baron_human_pancreas")
    ref = human[human.obs["donor"] == "human2"].copy()
    train = lambda adata, key="cell_type1", **kw: ih.train_reference(adata, key, "x", epochs=1, pretrain_epochs=1, progress=False, **kw)
    _one_line_error(lambda: train(ref, "celltype"), "label key 'celltype'")
    one = ref.copy()
    one.obs["one"] = "beta"
    _one_line_error(lambda: train(one, "one"), "fewer than 2 cell types")
    _one_line_error(lambda: train(ref, min_cells_per_type=5), "fewer than 5 cells: .*pass small_types='drop'")
    dup = ref.copy()
    dup.var_names = [dup.var_names[0]] + list(dup.var_names[1:-1]) + [dup.var_names[0]]
    _one_line_error(lambda: train(dup, small_types="drop"), "duplicated gene names")
    _one_line_error(lambda: train(ad.AnnData(np.zeros((0, 3))), small_types="drop"), "empty")
    _one_line_error(lambda: train([[1, 2]]), "expected an AnnData")


@pytest.fixture()
def saved(model, tmp_path):
    return model.save_pretrained(tmp_path / "ref")


def test_save_refuses_to_overwrite_without_force(model, saved):
    _one_line_error(lambda: model.save_pretrained(saved), "force")
    model.save_pretrained(saved, force=True)
    ih.ItClust.from_pretrained(saved)


@pytest.mark.parametrize("damage, match", [
    (lambda p: (p / "genes.json").unlink(), "lacks genes.json"),
    (lambda p: (p / "model.safetensors").write_bytes((p / "model.safetensors").read_bytes()[:1000]), "checksum"),
    (lambda p: (p / "config.json").write_text("{not json"), "not valid JSON"),
    (lambda p: _edit_config(p, lambda c: c["architecture"].update(n_genes=c["architecture"]["n_genes"] + 1)), "shape"),
    (lambda p: _edit_config(p, lambda c: c["architecture"].update(n_types=3)), "shape"),
    (lambda p: _edit_config(p, lambda c: c["architecture"].update(n_context_genes=5)), "shape"),
    (lambda p: _edit_config(p, lambda c: c.update(format_version=99)), "format version 99"),
    (lambda p: _edit_config(p, lambda c: c.pop("organism")), "config.json lacks organism"),
    (lambda p: _edit_config(p, lambda c: c.update(n_cells=-1)), "n_cells must be a non-negative integer"),
    (lambda p: _edit_config(p, lambda c: c["architecture"].update(hidden_dims=["64"])), "hidden_dims must be"),
    (lambda p: _edit_config(p, lambda c: c.update(fine_tuning={"max_iter": 0})), "max_iter must be at least 1"),
    (lambda p: _edit_config(p, lambda c: c.update(surprise=1)), "does not know \\(surprise\\)"),
    (lambda p: _rewrite_json(p, "genes.json", lambda g: g["symbols"].pop()), "checksum"),
])
def test_damaged_reference_folders_are_refused(saved, damage, match):
    damage(saved)
    _one_line_error(lambda: ih.ItClust.from_pretrained(saved), match)


@pytest.mark.parametrize("gene_list", ["symbols", "context_symbols"])
def test_wrong_gene_count_with_matching_checksum_is_refused(saved, gene_list):
    from itclust_hub._artifact import sha256

    _rewrite_json(saved, "genes.json", lambda g: g[gene_list].pop())
    _edit_config(saved, lambda c: c["files"].update({"genes.json": sha256(saved / "genes.json")}))
    _one_line_error(lambda: ih.ItClust.from_pretrained(saved), "genes.json lists")


def test_a_format_2_reference_without_expression_shares_still_transfers_a_panel(saved, query):
    from safetensors.torch import load_file, save_file

    from itclust_hub._artifact import sha256

    tensors = load_file(saved / "model.safetensors")
    save_file({k: v for k, v in tensors.items() if not k.endswith("_share")}, saved / "model.safetensors")
    _edit_config(saved, lambda c: (c.update(format_version=2),
                                   c["files"].update({"model.safetensors": sha256(saved / "model.safetensors")})))
    old = ih.ItClust.from_pretrained(saved)
    assert old.gene_share is None and "share" not in old.context
    panel = query[:, np.random.default_rng(0).random(query.n_vars) < 0.1].copy()
    result = old.transfer(panel, progress=False, fine_tuning={"max_iter": 2})
    assert result.provenance["context_genes"] > 0 and result.provenance["depth_share"] is None
    _edit_config(saved, lambda c: c.update(format_version=3))  # format 3 requires the shares
    _one_line_error(lambda: ih.ItClust.from_pretrained(saved), "expected")


def _edit_config(folder, change):
    _rewrite_json(folder, "config.json", change)


def _rewrite_json(folder, name, change):
    obj = json.loads((folder / name).read_text())
    change(obj)
    (folder / name).write_text(json.dumps(obj))
