"""Labels with meaning: every bundled reference's types carry a Cell Ontology id and a coarse parent,
transfers report both levels, references without terms still load, and the blood reference reads an
independent PBMC study at the CD4 T / CD8 T / B / NK / monocyte level."""

import json
import shutil
from pathlib import Path

import anndata as ad

import numpy as np
import pandas as pd
import pytest
import scanpy as sc
from click.testing import CliRunner
from sklearn.metrics import f1_score

import itclust_hub as ih
from itclust_hub._artifact import sha256
from itclust_hub._ontology import is_ontology_id
from itclust_hub._plot import agreement
from itclust_hub._registry import REFERENCES_DIR
from itclust_hub.cli import main

from _data import read

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "pbmc3k_raw.h5ad"
HARMONIZATION = Path(__file__).resolve().parents[1] / "benchmarks" / "harmonization" / "blood.csv"
BUNDLED = sorted(json.loads((REFERENCES_DIR / "index.json").read_text())["references"])
# pbmc3k's curated labels at the resolution both studies have (DC and platelets: no sorted population)
PBMC3K_COARSE = {"Naive CD4 T": "CD4 T", "Memory CD4 T": "CD4 T", "CD8 T": "CD8 T", "B": "B", "NK": "NK",
                 "CD14+ Mono": "monocyte", "FCGR3A+ Mono": "monocyte"}


def baron_query(n=300):
    human = read("baron_human_pancreas")
    return human[human.obs["donor"] == "human3"][:n].copy()


@pytest.mark.parametrize("name", BUNDLED)
def test_every_bundled_reference_carries_ontology_ids_and_a_coarse_parent(name):
    labels = json.loads((REFERENCES_DIR / name / "labels.json").read_text())
    ontology = labels["ontology"]
    assert list(ontology) == labels["cell_types"]
    for entry in ontology.values():
        assert is_ontology_id(entry["id"]) and is_ontology_id(entry["coarse_id"]) and entry["coarse"]
    coarse = {e["coarse"] for e in ontology.values()}
    assert 1 < len(coarse) <= len(ontology)  # a level that still tells types apart
    assert ih.ItClust.from_pretrained(name).ontology == ontology


def test_pancreas_ids_are_the_ones_baron_ships():
    human = read("baron_human_pancreas")
    shipped = human.obs.groupby("cell_type1", observed=True)["cell_ontology_id"].agg(lambda s: s.mode()[0])
    ontology = ih.ItClust.from_pretrained("pancreas-human").ontology
    assert {t: e["id"] for t, e in ontology.items()} == {t: str(shipped[t]) for t in ontology}


def test_coarse_level_reports_parents_and_obs_carries_the_ids():
    model = ih.ItClust.from_pretrained("pancreas-human")
    query = baron_query()
    fine = model.transfer(query, progress=False)
    coarse = model.transfer(query, level="coarse", progress=False)
    terms = model.ontology
    to_coarse = {t: e["coarse"] for t, e in terms.items()}
    assert fine.obs["label"].equals(fine.obs["fine_label"])
    named = fine.labels != "Unassigned"
    assert (fine.obs["coarse_label"][named] == fine.labels[named].map(to_coarse)).all()
    assert (fine.obs["ontology_id"][named] == fine.labels[named].map({t: e["id"] for t, e in terms.items()})).all()
    assert fine.obs["ontology_id"][~named].isna().all()
    # the same fine-tuning, reported one level up
    assert (coarse.labels[named] == fine.labels[named].map(to_coarse)).all()
    assert coarse.obs["fine_label"].equals(fine.labels) and coarse.obs["nearest_label"].isin(set(to_coarse.values())).all()
    assert list(coarse.probabilities.columns) == list(dict.fromkeys(to_coarse[t] for t in model.cell_types))
    np.testing.assert_allclose(coarse.probabilities.sum(1), fine.probabilities.sum(1), rtol=1e-5)
    # the naming step re-run one level up, without fine-tuning, is the coarse transfer
    again = ih.name_clusters(fine, level="coarse")
    assert again.labels.equals(coarse.labels) and again.probabilities.equals(coarse.probabilities)
    assert again.clusters.equals(coarse.clusters) and fine.obs["label"].equals(fine.obs["fine_label"])
    annotated = coarse.to_adata(query)
    assert {"itclust_coarse_label", "itclust_ontology_id"} <= set(annotated.obs.columns)
    # the query's own ids compare by meaning: Baron's cell_ontology_id against the reference's ids
    assert agreement(fine, query.obs["cell_ontology_id"]) >= 0.9
    with pytest.raises(ih.ItClustError, match="level must be one of fine, coarse"):
        model.transfer(query, level="lineage", progress=False)


def test_naming_reruns_with_other_thresholds_without_fine_tuning():
    # the bundled PBMC example, whose clusters' confidence ranges 0.06-0.99 after 13 iterations
    model = ih.ItClust.from_pretrained("pbmc-human")
    query = ad.read_h5ad(EXAMPLE)
    default = model.transfer(query, progress=False)
    before = default.obs.copy()
    strict = model.transfer(query, min_confidence=0.9, progress=False)
    again = ih.name_clusters(default, min_confidence=0.9)
    assert strict.clusters["novel"].sum() > default.clusters["novel"].sum()  # the thresholds matter here
    assert again.obs.equals(strict.obs) and again.clusters.equals(strict.clusters)
    assert again.probabilities.equals(strict.probabilities)
    assert again.provenance["settings"] == strict.provenance["settings"]
    assert default.obs.equals(before)  # the result named again is not modified
    assert ih.name_clusters(again).obs.equals(default.obs)  # and naming with the defaults gives it back
    with pytest.raises(ih.ItClustError, match="level must be one of fine, coarse"):
        ih.name_clusters(default, level="lineage")
    with pytest.raises(ih.ItClustError, match="min_confidence must be between 0 and 1"):
        ih.name_clusters(default, min_confidence=50)
    with pytest.raises(ih.ItClustError, match="min_confidence must be between 0 and 1"):  # before fine-tuning
        model.transfer(query, min_confidence=-0.1, progress=False)
    with pytest.raises(ih.ItClustError, match="no cluster evidence"):
        ih.name_clusters(ih.TransferResult(default.obs, default.probabilities, default.clusters, default.embedding))


def test_the_annotated_h5ad_stores_the_terms_under_keys_hdf5_accepts(tmp_path):
    # the blood types' names hold slashes ("CD4+/CD25 T Reg"), which anndata is dropping as HDF5 keys
    import warnings

    model = ih.ItClust.from_pretrained("pbmc-human")
    query = ad.read_h5ad(EXAMPLE)[:300].copy()
    annotated = model.transfer(query, progress=False).to_adata(query)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        annotated.write_h5ad(tmp_path / "annotated.h5ad")
    assert not [w for w in caught if "slash" in str(w.message).lower()], [str(w.message) for w in caught]
    terms = ad.read_h5ad(tmp_path / "annotated.h5ad").uns["itclust"]["provenance"]["ontology"]
    assert sorted(entry["type"] for entry in terms.values()) == sorted(model.cell_types)


def without_ontology(tmp_path):
    """pancreas-human as a reference written before ontology terms: labels.json without them."""
    folder = shutil.copytree(REFERENCES_DIR / "pancreas-human", tmp_path / "old")
    labels = json.loads((folder / "labels.json").read_text())
    labels.pop("ontology", None)  # bundled copies carry terms now
    (folder / "labels.json").write_text(json.dumps(labels))
    config = json.loads((folder / "config.json").read_text())
    config["files"]["labels.json"] = sha256(folder / "labels.json")
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def test_labels_without_ontology_still_load_and_transfer(tmp_path):
    model = ih.ItClust.from_pretrained(without_ontology(tmp_path))
    assert model.ontology is None
    result = model.transfer(baron_query(100), progress=False)
    assert "coarse_label" not in result.obs and result.labels.isin([*model.cell_types, "Unassigned"]).all()
    with pytest.raises(ih.ItClustError, match="no coarse labels") as info:
        model.transfer(baron_query(100), level="coarse", progress=False)
    assert "\n" not in str(info.value)


def test_a_damaged_ontology_is_refused_on_load_and_at_training(tmp_path):
    folder = without_ontology(tmp_path)
    labels = json.loads((folder / "labels.json").read_text())
    labels["ontology"] = {"alpha": {"id": "CL:0000171", "coarse": "endocrine", "coarse_id": "CL:0008024"}}
    (folder / "labels.json").write_text(json.dumps(labels))
    config = json.loads((folder / "config.json").read_text())
    config["files"]["labels.json"] = sha256(folder / "labels.json")
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ih.ItClustError, match="cell type 'acinar' has no ontology entry"):
        ih.ItClust.from_pretrained(folder)
    atlas = baron_query(200)
    with pytest.raises(ih.ItClustError, match="not a Cell Ontology id"):  # before any training
        ih.train_reference(atlas, "cell_type1", "x", small_types="drop", ontology={
            t: {"id": "alpha cell", "coarse": "endocrine", "coarse_id": None} for t in atlas.obs["cell_type1"].unique()})


def test_self_training_goes_on_past_a_first_iteration_that_changes_few_labels_across_species():
    """The bundled blood reference on Tabula Muris mouse immune cells (another study and species): re-centring
    changes under ``tol`` of the labels at the first iteration, which stopped self-training there before the
    floor on iterations; it now runs ``MIN_ITER`` iterations and reads the known lineages at least as well as
    one iteration does (benchmarks/RESULTS.md, "Fine-tuning schedule")."""
    from itclust_hub._transfer import MIN_ITER

    query = read("tabula_muris_immune_mouse")
    lineage = pd.read_csv(HARMONIZATION).set_index(["study", "label"])["lineage"]
    truth = query.obs["cell_type"].astype(str).map(lineage.loc["tabula_muris_immune_mouse"]).to_numpy()
    model = ih.ItClust.from_pretrained("pbmc-human")
    to_lineage = lineage.loc["zheng2017_sorted_pbmc"].to_dict()
    known = np.isin(truth, [to_lineage[t] for t in model.cell_types])
    assert known.sum() > 900 and (~known).sum() > 0  # granulocytes: a type the reference lacks

    def accuracy(result):
        return (result.labels.map(lambda label: to_lineage.get(label, label)).to_numpy() == truth)[known].mean()

    result = model.transfer(query, progress=False)
    one = model.transfer(query, fine_tuning={"max_iter": 1}, progress=False)
    tol = result.provenance["settings"]["tol"]
    assert result.provenance["changed"][0] < tol  # where the stopping rule alone would have stopped
    assert result.provenance["n_iter"] >= MIN_ITER
    assert accuracy(result) >= accuracy(one) > 0.8


def test_list_finds_the_blood_reference():
    result = CliRunner().invoke(main, ["list", "--tissue", "blood"])
    assert result.exit_code == 0, result.output
    assert [row.split()[0] for row in result.stdout.splitlines()[1:]] == ["pbmc-human"]


def test_blood_reference_reads_an_independent_pbmc_study_better_than_a_retrained_peer():
    """pbmc3k (another 10x run, the Seurat tutorial's curated labels, log-normalised) at the CD4 T / CD8 T /
    B / NK / monocyte level, against logistic regression retrained on the same atlas's log-normalised cells
    over the genes both studies measure (the benchmark's strongest peer on this pair). Issue 22's bar (accuracy
    >= 0.90) is not met: the reference reads 0.877 (benchmarks/RESULTS.md); this asserts what holds."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    query, atlas = read("pbmc3k_labeled"), read("zheng2017_sorted_pbmc")
    model = ih.ItClust.from_pretrained("pbmc-human")
    result = model.transfer(query, level="coarse", progress=False)
    truth = query.obs["cell_type"].astype(str).map(PBMC3K_COARSE)
    known = truth.notna().to_numpy()
    shared = atlas.var_names.intersection(query.var_names)
    atlas = atlas[:, shared].copy()
    sc.pp.normalize_total(atlas, target_sum=1e4)
    sc.pp.log1p(atlas)
    coarse = {name: entry["coarse"] for name, entry in model.ontology.items()}
    peer = make_pipeline(StandardScaler(with_mean=False), LogisticRegression(max_iter=1000))
    peer.fit(atlas.X, atlas.obs["cell_type"].astype(str).map(coarse))
    called = {"itclust-hub": result.labels.astype(str), "logreg": pd.Series(peer.predict(query[:, shared].X), index=truth.index)}
    truth = truth[known]
    sizes = truth.value_counts()
    scores = {name: ((truth == labels[known]).mean(),
                     f1_score(truth, labels[known], labels=list(sizes[sizes >= 10].index), average="macro"))
              for name, labels in called.items()}
    assert scores["itclust-hub"][0] > scores["logreg"][0] + 0.1, scores
    assert scores["itclust-hub"][1] > scores["logreg"][1], scores
    assert pd.Series(result.obs["coarse_ontology_id"][known]).notna().mean() >= 0.90


def test_a_recipe_ontology_naming_no_label_is_refused_before_training(tmp_path):
    from training.pipeline import read_atlas
    from training.recipe import RECIPES_DIR, load_recipe

    read("baron_human_pancreas")
    spec = json.loads((RECIPES_DIR / "pancreas-human.json").read_text())
    spec["labels"]["ontology"]["alpah"] = spec["labels"]["ontology"].pop("alpha")
    path = tmp_path / "typo.json"
    path.write_text(json.dumps(spec))
    with pytest.raises(ih.ItClustError, match="labels.ontology names 'alpah'"):
        read_atlas(load_recipe(str(path)))


def test_blood_card_carries_numbers_measured_on_independent_queries():
    import yaml

    card = (REFERENCES_DIR / "pbmc-human" / "README.md").read_text()
    meta = yaml.safe_load(card[4 : card.index("\n---", 4)])
    assert meta["tags"][-1] == "blood"
    queries = [r["dataset"]["name"] for r in meta["model-index"][0]["results"]]
    assert any("PBMC 3k" in q for q in queries) and any("Tabula Muris" in q for q in queries)
    assert "## Label set" in card and "Cells of types the reference lacks called Unassigned: DC" in card
