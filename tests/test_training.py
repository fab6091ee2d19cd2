"""The curated-reference pipeline (training/): recipes and their bad inputs, the rendered model card, the
bundled references and their index entries, a rebuild that matches the bundled one, and the contribute path end to end
(build -> validate -> push to the local Hub server -> index pull request -> load from the server)."""

import hashlib
import inspect
import json
import platform
import shutil
from importlib.metadata import version
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner
from huggingface_hub import ModelCard
from hub_server import TOKEN
from sklearn.metrics import accuracy_score

import itclust_hub as ih
from itclust_hub._card import render_card
from itclust_hub._errors import ItClustError
from itclust_hub._registry import REFERENCES_DIR, get_entry
from itclust_hub.cli import main as cli

from _data import DATA, read
from training.__main__ import main as training_main
from training.pipeline import (MODEL_CARDS_DIR, WEIGHT_TOLERANCE, _compare_file, bundled_folder, build, fit, read_atlas,
                               verify)
from training.recipe import RECIPES_DIR, load_recipe

CURATED = ("pancreas-human", "pancreas-mouse")
FILES = ("config.json", "model.safetensors", "genes.json", "labels.json", "README.md")


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def write_recipe(tmp_path, change=lambda spec: None, name="tiny-human") -> Path:
    """pancreas-human's recipe with small settings (and no cross-dataset query), changed by ``change``."""
    spec = json.loads((RECIPES_DIR / "pancreas-human.json").read_text())
    spec["name"] = name
    spec["preprocessing"]["n_top_genes"] = 300
    spec["training"].update(pretrain_epochs=2, epochs=5)
    spec["evaluation"]["cross_dataset"] = []
    change(spec)
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps(spec))
    return path


def one_line_error(call, match):
    with pytest.raises(ItClustError, match=match) as info:
        call()
    assert "\n" not in str(info.value)


def front_matter(card: str) -> dict:
    assert card.startswith("---\n")
    return yaml.safe_load(card[4 : card.index("\n---", 4)])


# --- recipes --------------------------------------------------------------------------------------

def test_curated_recipes_use_the_tuned_training_defaults():
    defaults = {k: p.default for k, p in inspect.signature(ih.train_reference).parameters.items()}
    for name in CURATED:
        recipe = load_recipe(name)
        assert recipe.name == name
        assert recipe.spec["training"] == {k: defaults[k] for k in recipe.spec["training"]}
        assert recipe.preprocessing() == ih.Recipe()
        assert recipe.spec["data"]["label_key"] == "cell_type1"
        assert recipe.spec["evaluation"]["held_out"]["group_key"] == "donor"


def test_preprocessing_of_older_references_still_loads(tmp_path):
    # references built before transfer(scale=...) decided the scaling recorded an unused "scale_with"; the
    # format's upgrade drops it (config.json holds the other files' checksums, not its own)
    folder = shutil.copytree(REFERENCES_DIR / "pancreas-mouse", tmp_path / "old")
    config = json.loads((folder / "config.json").read_text())
    config["preprocessing"]["scale_with"] = "own"
    (folder / "config.json").write_text(json.dumps(config))
    old = ih.ItClust.from_pretrained(folder)
    assert old.recipe == ih.ItClust.from_pretrained("pancreas-mouse").recipe
    assert old.recipe == ih.Recipe()  # read as today's recipe, without the dropped field
    with pytest.raises(ih.ItClustError, match="unknown preprocessing fields"):
        ih.Recipe.from_dict({**ih.Recipe().to_dict(), "colour": "blue"})


@pytest.mark.parametrize("change, match", [
    (lambda s: s["data"].pop("label_key"), "missing field 'data.label_key'"),
    (lambda s: s.pop("license"), "missing field 'license'"),
    (lambda s: s["training"].update(epoch=3), "unknown field 'training.epoch'"),
    (lambda s: s["training"].update(epochs="5"), "'training.epochs' must be an integer"),
    (lambda s: s["preprocessing"].update(max_value=True), "'preprocessing.max_value' must be an integer or a number"),
    (lambda s: s["evaluation"]["cross_dataset"].append({"name": "x"}), r"missing field 'evaluation.cross_dataset\[0\].dataset'"),
    (lambda s: s["data"].update(input_type="raw"), "input_type must be"),
    (lambda s: s.update(name="My Atlas"), "not a valid reference name"),
])
def test_bad_recipes_are_one_line_errors(tmp_path, change, match):
    path = write_recipe(tmp_path, change)
    one_line_error(lambda: load_recipe(str(path)), match)


def test_unknown_recipe_lists_the_known_ones():
    one_line_error(lambda: load_recipe("pancreas-rat"), "pancreas-human, pancreas-mouse")


def test_bad_data_is_refused_before_training(tmp_path):
    read("baron_human_pancreas")
    recipe = load_recipe(str(write_recipe(tmp_path, lambda s: s["data"].update(label_key="celltype"))))
    one_line_error(lambda: read_atlas(recipe), "label key 'celltype' is not an obs column")
    recipe = load_recipe(str(write_recipe(tmp_path, lambda s: s["labels"]["harmonise"].update(T_cell="t_cell"))))
    one_line_error(lambda: read_atlas(recipe), "harmonise renames 'T_cell'")
    recipe = load_recipe(str(write_recipe(tmp_path, lambda s: s["evaluation"]["held_out"].update(group_key="patient"))))
    one_line_error(lambda: read_atlas(recipe), "group_key 'patient'")
    recipe = load_recipe(str(write_recipe(tmp_path, lambda s: s["data"].update(file="absent.h5ad"))))
    one_line_error(lambda: read_atlas(recipe), "absent.h5ad not found")
    recipe = load_recipe(str(write_recipe(tmp_path, lambda s: s["labels"].update(small_types="error"))))
    one_line_error(lambda: fit(recipe, read_atlas(recipe)), r"fewer than 5 cells: .*t_cell \(3\).*schwann \(2\)")


def test_data_that_is_not_counts_is_refused_when_the_recipe_says_counts(tmp_path, capsys):
    import scanpy as sc

    human = read("baron_human_pancreas")
    logged = human[human.obs["donor"] == "human1"].copy()
    sc.pp.normalize_total(logged, target_sum=1e4)
    sc.pp.log1p(logged)
    logged.write_h5ad(tmp_path / "baron_human_pancreas.h5ad")
    path = write_recipe(tmp_path)
    assert training_main(["build", str(path), "--data-dir", str(tmp_path), "--out", str(tmp_path / "out")]) == 1
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "counts were asked for" in error
    assert not (tmp_path / "out").exists()


# --- model card -----------------------------------------------------------------------------------

def _scores(accuracy):
    return {"accuracy": accuracy, "macro_f1": accuracy - 0.1, "ari": accuracy - 0.2}


def test_card_renders_the_evaluation_it_is_given():
    config = {"name": "atlas", "organism": "mouse", "tissue": "pancreas", "n_cells": 30, "version": "2.0.0",
              "architecture": {"n_genes": 3, "hidden_dims": [16], "n_types": 2, "n_components": 2},
              "preprocessing": ih.Recipe().to_dict(),
              "training": {"label_key": "cell_type", "dropped_types": {"rare": 2}, "min_cells_per_type": 5},
              "metadata": {"license": "cc-by-4.0", "datasets": ["GSE1"], "citation": "Someone et al. (2020)",
                           "data_name": "Some islets", "platform": "inDrop"}}
    fold = {"n_cells": 10, "n_scored": 9, "unknown_types": {"rare": 1}, "label": _scores(0.81),
            "nearest_label": _scores(0.83), "source_label": _scores(0.8), "gene_overlap": 1.0}
    evaluation = {
        "held_out": {"group_key": "donor", "folds": [{"group": "d1", **fold}], "mean": {
            "label": _scores(0.8125), "nearest_label": _scores(0.8375), "source_label": _scores(0.8)},
            "per_type": {"a": {"cells": 5, "correct": 5}, "b": {"cells": 4, "correct": 1}}},
        "cross_dataset": [{"name": "Other islets", "dataset": "GSE2", "query_organism": "human",
                           **dict(fold, gene_overlap=0.71, unknown_types={"acinar": 7})}],
        "transfer": {"seed": 0}}
    rendered = render_card(config, ["a", "b"], [25, 5], evaluation, genes={"ensembl_ids": [None, None, None]})
    assert isinstance(rendered, ModelCard) and len(rendered.data.eval_results) == 12
    card = str(rendered)
    # the Hub reads results per task, dataset, config and split: held-out and cross-dataset stay two results
    # (the same dataset id for both) through a parse and a re-render by huggingface_hub
    assert str(ModelCard(card)) == card
    cross_same_dataset = dict(evaluation, cross_dataset=[dict(evaluation["cross_dataset"][0], dataset="GSE1")])
    again = ModelCard(str(render_card(config, ["a", "b"], [25, 5], cross_same_dataset)))
    assert [r["dataset"]["name"] for r in front_matter(str(again))["model-index"][0]["results"]] == [
        "Some islets, held-out donors (mean)", "Other islets"]
    meta = front_matter(card)
    assert meta["license"] == "cc-by-4.0" and {"mouse", "pancreas", "itclust-hub"} <= set(meta["tags"])
    assert meta["datasets"] == ["GSE1"]
    held, cross = meta["model-index"][0]["results"]
    assert held["dataset"]["type"] == "GSE1" and cross["dataset"]["type"] == "GSE2"
    values = {(m["type"], m["name"]): m["value"] for m in held["metrics"]}
    assert values[("accuracy", "accuracy (final label)")] == 0.8125
    assert values[("accuracy", "accuracy (nearest reference type)")] == 0.8375
    body = card[card.index("\n---", 4):]
    assert "| a | 25 | 1.00 (5) |" in body and "| b | 5 | 0.25 (4) |" in body
    assert "| mean |  | 0.812 |" in body and "| Other islets | human | fine | 0.71 | 9/10 |" in body
    assert "rare (2)" in body and "b (0.25 of 4)" in body and "acinar (7)" in body
    assert "Someone et al. (2020)" in body and "Nature Machine Intelligence" in body and "version 2.0.0" in body


# --- the bundled references -----------------------------------------------------------------------

@pytest.mark.parametrize("name", CURATED)
def test_bundled_reference_is_indexed_carded_and_loads_offline(name):
    folder = REFERENCES_DIR / name
    entry = get_entry(name)
    assert entry.bundled and entry.files == {f: sha(folder / f) for f in FILES}
    config = json.loads((folder / "config.json").read_text())
    assert (entry.n_cells, entry.n_cell_types, entry.n_genes, entry.version) == (
        config["n_cells"], config["architecture"]["n_types"], config["architecture"]["n_genes"], config["version"])
    assert entry.license == config["metadata"]["license"] and "Baron" in entry.citation
    meta = front_matter((folder / "README.md").read_text())
    assert meta["license"] == entry.license and entry.organism in meta["tags"] and meta["datasets"] == ["GSE84133"]
    metrics = [m for result in meta["model-index"][0]["results"] for m in result["metrics"]]
    assert {"accuracy", "macro_f1", "ari"} <= {m["type"] for m in metrics}
    assert len(meta["model-index"][0]["results"]) == 2  # held-out donors and the other species
    model = ih.ItClust.from_pretrained(name)  # the endpoint refuses connections: no network needed
    assert model.source["source"] == "bundled" and model.config.name == name


BUNDLED = sorted(name for name, entry in json.loads((REFERENCES_DIR / "index.json").read_text())["references"].items()
                 if entry["bundled"])


def test_each_bundled_card_is_stored_once_and_model_cards_links_to_it():
    assert sorted(path.name for path in MODEL_CARDS_DIR.iterdir()) == [f"{name}.md" for name in BUNDLED]
    for name in BUNDLED:
        link = MODEL_CARDS_DIR / f"{name}.md"
        assert link.is_symlink() and link.resolve() == (bundled_folder(name) / "README.md").resolve()
        assert not Path(link.readlink()).is_absolute()  # survives a clone elsewhere


@pytest.mark.parametrize("name", BUNDLED)
def test_bundled_card_is_a_hub_model_card_with_one_result_per_evaluation(name):
    """The stored card is what huggingface_hub's ModelCard writes back, and its model-index holds one result
    per measurement of the recipe (held-out groups, each cross-dataset query), none merged by the Hub."""
    text = (bundled_folder(name) / "README.md").read_text()
    card = ModelCard(text)
    assert str(card) == text
    evaluation = load_recipe(name).spec["evaluation"]
    config = json.loads((bundled_folder(name) / "config.json").read_text())
    expected = ([f"{config['metadata']['data_name']}, held-out {evaluation['held_out']['group_key']}s (mean)"]
                if evaluation["held_out"] else []) + [item["name"] for item in evaluation["cross_dataset"]]
    results = front_matter(text)["model-index"][0]["results"]
    assert [r["dataset"]["name"] for r in results] == expected
    assert all(len(r["metrics"]) == 6 for r in results) and len(card.data.eval_results) == 6 * len(expected)


def test_bundled_mouse_reference_annotates_human_cells_through_orthologs():
    model = ih.ItClust.from_pretrained("pancreas-mouse")
    human = read("baron_human_pancreas")
    result = model.transfer(human, query_organism="human", progress=False)
    genes = result.provenance["genes"]
    assert genes["ortholog_mapped"] > 10000 and genes["fraction"] > 0.6
    truth = human.obs["cell_type1"].astype(str)
    known = truth.isin(model.cell_types)
    assert accuracy_score(truth[known], result.obs["nearest_label"][known]) >= 0.8
    one_line_error(lambda: model.transfer(human, query_organism="zebrafish", progress=False), "ortholog")


def test_rebuild_matches_the_bundled_reference_and_its_labels(tmp_path):
    """Refit pancreas-human from its recipe and seed (no evaluation): genes and labels the same bytes, every
    tensor within the tolerance, config.json the same but for the fields that record the machine, and the same
    label on every cell of the held-out mouse islets. Bit-for-bit weights need the same CPU model as well as
    the same library versions: MKL/oneDNN and SIMD reductions pick kernels by CPU, beyond its capability name.
    """
    read("baron_human_pancreas")
    config = json.loads((REFERENCES_DIR / "pancreas-human" / "config.json").read_text())
    here = {name: version(name) for name in config["library_versions"] if name != "python"}
    here.update(python=platform.python_version())
    if config["library_versions"] != here:
        pytest.skip(f"bundled reference built with {config['library_versions']}, here {here}")
    checks = verify(load_recipe("pancreas-human"), scratch=tmp_path, progress=False)
    assert all(passed for passed, _ in checks.values()), checks
    assert checks["genes.json"] == checks["labels.json"] == (True, "identical")
    assert list(checks)[-1] == "labels of Baron et al. 2016 mouse pancreatic islets"


def test_weights_within_tolerance_pass_and_beyond_it_fail(tmp_path):
    from safetensors.numpy import load_file, save_file

    bundled = REFERENCES_DIR / "pancreas-human"
    tensors = load_file(bundled / "model.safetensors")
    for scale, passed in ((0.5, True), (2.0, False)):
        changed = dict(tensors, centroids=tensors["centroids"] * (1 + scale * WEIGHT_TOLERANCE))
        save_file(changed, tmp_path / "model.safetensors")
        assert _compare_file(tmp_path / "model.safetensors", bundled / "model.safetensors")[0] is passed
    refit = json.loads((bundled / "config.json").read_text())
    refit["files"]["model.safetensors"] = "0" * 64
    refit["training"]["torch_cpu_capability"] = "AVX2"
    (tmp_path / "config.json").write_text(json.dumps(refit))
    assert _compare_file(tmp_path / "config.json", bundled / "config.json") == (
        True, "the same apart from files, training.torch_cpu_capability")
    refit["training"]["seed"] = 1
    (tmp_path / "config.json").write_text(json.dumps(refit))
    assert _compare_file(tmp_path / "config.json", bundled / "config.json")[0] is False


# --- contribute: build -> validate -> push -> load from the Hub ------------------------------------

def test_contribute_end_to_end_through_the_local_hub(hub, tmp_path, monkeypatch):
    read("baron_human_pancreas")
    hub.add_commit("itclust-hub/index", {"index.json": b'{"index_version": 1, "references": {}}'}, repo_type="dataset")
    folder = build(load_recipe(str(write_recipe(tmp_path))), tmp_path / "tiny-human", data_dir=DATA, log=lambda m: None)
    assert not (MODEL_CARDS_DIR / "tiny-human.md").exists() and "tiny-human" not in json.loads(
        (REFERENCES_DIR / "index.json").read_text())["references"]
    assert front_matter((folder / "README.md").read_text())["model-index"][0]["results"][0]["metrics"]

    runner = CliRunner()
    validated = runner.invoke(cli, ["validate", str(folder)])
    assert validated.exit_code == 0 and validated.stdout.startswith(f"OK {folder}")
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    pushed = runner.invoke(cli, ["push", str(folder), "--repo-id", "lab/tiny-human"])
    assert pushed.exit_code == 0, pushed.output

    index_repo = hub.repo("itclust-hub/index", "dataset")
    assert len(index_repo.pull_requests) == 1
    proposed = json.loads(index_repo.commits[index_repo.refs["refs/pr/1"]]["index.json"])["references"]["tiny-human"]
    assert proposed["repo_id"] == "lab/tiny-human" and proposed["files"] == {f: sha(folder / f) for f in FILES}

    human = read("baron_human_pancreas")
    query = human[human.obs["donor"] == "human3"][:300].copy()
    remote = ih.ItClust.from_pretrained("lab/tiny-human")
    assert remote.source["source"] == "hub" and remote.source["revision"] == proposed["revision"]
    local = ih.ItClust.from_pretrained(folder)
    assert remote.transfer(query, progress=False).labels.equals(local.transfer(query, progress=False).labels)
