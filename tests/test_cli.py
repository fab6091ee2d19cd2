"""The ``itclust-hub`` command line on real data: help, transfer end to end, overwriting, one-line
errors, train/validate, listing, and push/download/cache/info against the local Hub server."""

import functools
import json
import shutil

import anndata as ad
import pytest
from click.testing import CliRunner
from hub_server import TOKEN
from PIL import Image

import itclust_hub as ih
from itclust_hub import _registry
from itclust_hub.cli import main

from _data import read

REFERENCE_NAME = "pancreas-test"
COMMANDS = [[], ["list"], ["info"], ["download"], ["transfer"], ["train"], ["validate"], ["push"], ["cache"],
            ["cache", "ls"], ["cache", "clear"]]


@functools.lru_cache(maxsize=None)
def small_model() -> ih.ItClust:
    """One quickly trained reference (Baron human donor human1) per test session, shared with test_report."""
    human = read("baron_human_pancreas")
    atlas = human[human.obs["donor"] == "human1"].copy()
    return ih.train_reference(atlas, "cell_type1", REFERENCE_NAME, organism="human", tissue="pancreas",
                              small_types="drop", pretrain_epochs=5, epochs=30, seed=0, progress=False)


@pytest.fixture(scope="session")
def reference_dir(tmp_path_factory):
    """The small reference saved as a folder."""
    return small_model().save_pretrained(tmp_path_factory.mktemp("refs") / REFERENCE_NAME)


@pytest.fixture(scope="session")
def query_file(tmp_path_factory):
    """300 cells of the held-out donor human3, raw counts, with their own labels in obs."""
    human = read("baron_human_pancreas")
    query = human[human.obs["donor"] == "human3"][:300].copy()
    path = tmp_path_factory.mktemp("query") / "human3.h5ad"
    query.write_h5ad(path)
    return path


def run(*args, **kwargs):
    return CliRunner().invoke(main, [str(a) for a in args], **kwargs)


def assert_one_line_error(result, *fragments, exit_code=1):
    """Non-zero exit, exactly one ``Error:`` line on stderr naming ``fragments``, no traceback."""
    assert result.exit_code == exit_code, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.stderr
    assert "Traceback" not in result.output
    for fragment in fragments:
        assert fragment in lines[0]
    return lines[0]


def is_png(path) -> bool:
    with Image.open(path) as image:
        return image.format == "PNG" and image.width >= 800 and image.height >= 400


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c) or "itclust-hub")
def test_help_on_every_command(command):
    result = run(*command, "--help")
    assert result.exit_code == 0, result.output
    assert result.output.startswith("Usage: ")


def test_transfer_end_to_end(reference_dir, query_file, tmp_path):
    out, tables, report = tmp_path / "annotated.h5ad", tmp_path / "tables", tmp_path / "report"
    result = run("transfer", reference_dir, query_file, "-o", out, "--tables", tables, "--report", report,
                 "--truth-key", "cell_type1", "--no-progress")
    assert result.exit_code == 0, result.output

    annotated = ad.read_h5ad(out)
    query = ad.read_h5ad(query_file)
    assert list(annotated.obs_names) == list(query.obs_names)
    assert (annotated.X != query.X).nnz == 0  # the query's values are kept as they were
    assert annotated.obsm["X_itclust"].shape[0] == 300
    labels = annotated.obs["itclust_label"].astype(str)
    assert (labels == annotated.obs["cell_type1"]).mean() > 0.45  # the tiny model is weak; mixed-up labels score < 0.2
    provenance = annotated.uns["itclust"]["provenance"]  # a nested dict, as scanpy users read uns
    assert provenance["reference"] == REFERENCE_NAME and provenance["input_type"] == "counts"
    assert provenance["settings"]["seed"] == 0 and provenance["genes"]["n_overlap"] > 0
    assert annotated.obs["itclust_cluster"].dtype == "category"  # scanpy colours categories, not a scale
    assert annotated.obsm["X_umap"].shape == (300, 2)  # the report's UMAP, ready for sc.pl.umap

    table = (tables / "labels.csv").read_text().splitlines()
    assert len(table) == 301 and table[0].split(",")[1:3] == ["label", "nearest_label"]
    assert {p.name for p in tables.iterdir()} == {"labels.csv", "probabilities.csv", "clusters.csv"}
    pngs = ["umap.png", "cluster_confidence.png", "marker_dotplot.png", "confusion.png"]
    assert sorted(p.name for p in report.iterdir()) == sorted(pngs + ["summary.md"])
    assert all(is_png(report / name) for name in pngs)
    summary = (report / "summary.md").read_text()
    genes = provenance["genes"]
    assert f"{genes['n_overlap']:,} of {genes['n_reference_genes']:,} reference genes" in summary
    assert "Input type assumed: counts (detected)" in summary and "## Agreement with `cell_type1`" in summary

    lines = result.stdout.splitlines()
    assert lines[0] == f"Annotated 300 cells with {REFERENCE_NAME}"
    assert lines[2] == "Input type assumed: counts (detected)"
    assert lines[3] == "Scaled with: the reference's gene means and standard deviations"
    assert provenance["scale"] == "reference" and "Scaled with: the reference's" in summary
    counts = dict(item.rsplit(" ", 1) for item in lines[4].removeprefix("Labels: ").split(", "))
    assert {k: int(v) for k, v in counts.items()} == labels.value_counts().to_dict()
    assert lines[-1].startswith(f"Wrote: {out}, {tables / 'labels.csv'}")
    warned = (labels == "Unassigned").mean() >= 0.25
    warnings = result.stderr.splitlines()
    assert len(warnings) == warned and all(w.startswith("Warning: ") and "judged novel" in w for w in warnings)


def test_nothing_is_overwritten_without_force(reference_dir, query_file, tmp_path, monkeypatch):
    out, report = tmp_path / "annotated.h5ad", tmp_path / "report"
    report.mkdir()
    (report / "summary.md").write_text("mine")
    out.write_text("mine")

    def must_not_load(*args, **kwargs):
        raise AssertionError("the reference was loaded before the outputs were checked")

    monkeypatch.setattr(ih.ItClust, "from_pretrained", must_not_load)
    assert_one_line_error(run("transfer", reference_dir, query_file, "-o", out), str(out), "--force")
    out.unlink()
    assert_one_line_error(run("transfer", reference_dir, query_file, "-o", out, "--report", report),
                          str(report / "summary.md"), "--force")
    assert not out.exists() and (report / "summary.md").read_text() == "mine"
    monkeypatch.undo()

    result = run("transfer", reference_dir, query_file, "-o", out, "--report", report, "--force", "--no-progress")
    assert result.exit_code == 0, result.output
    assert (report / "summary.md").read_text().startswith("# ItClust transfer report")


@pytest.mark.parametrize("case", ["missing query", "unknown reference", "empty folder", "damaged folder",
                                  "not h5ad", "unknown truth key", "unknown layer"])
def test_bad_transfer_input_is_one_line(case, reference_dir, query_file, tmp_path):
    out = tmp_path / "out.h5ad"
    ref, query, extra, expected = reference_dir, query_file, [], []
    if case == "missing query":
        query, expected = tmp_path / "nope.h5ad", ["nope.h5ad does not exist"]
    elif case == "unknown reference":
        ref, expected = "no-such-reference", ["unknown reference 'no-such-reference'"]
    elif case == "empty folder":
        ref, expected = tmp_path / "empty", ["is not an itclust-hub reference"]
        ref.mkdir()
    elif case == "damaged folder":
        ref = shutil.copytree(reference_dir, tmp_path / "damaged")
        (ref / "labels.json").write_text('{"cell_types": []}')
        expected = ["labels.json does not match its checksum"]
    elif case == "not h5ad":
        out, expected = tmp_path / "out.csv", ["must end in .h5ad"]
    elif case == "unknown truth key":
        extra, expected = ["--report", tmp_path / "r", "--truth-key", "nope"], ["--truth-key 'nope'", "cell_type1"]
    elif case == "unknown layer":
        extra, expected = ["--layer", "counts"], ["layer 'counts' not found"]
    result = run("transfer", ref, query, "-o", out, *extra)
    assert_one_line_error(result, *expected)
    assert not out.exists()


def test_usage_errors_are_one_line_too(reference_dir):
    line = assert_one_line_error(run("transfer", reference_dir), "Missing argument 'QUERY'", exit_code=2)
    assert "itclust-hub transfer --help" in line
    assert_one_line_error(run("frobnicate"), "No such command 'frobnicate'", exit_code=2)


def test_debug_shows_the_exception(tmp_path):
    result = run("--debug", "validate", tmp_path / "nope")
    assert isinstance(result.exception, ih.ItClustError) and result.exit_code == 1


def test_validate_ok_and_corrupted(reference_dir, tmp_path):
    result = run("validate", reference_dir)
    assert result.exit_code == 0, result.output
    model = small_model()
    assert result.stdout.startswith(f"OK {reference_dir}: {REFERENCE_NAME} version 1.0.0, human pancreas, "
                                    f"{len(model.genes):,} genes, {len(model.cell_types)} cell types")

    damaged = shutil.copytree(reference_dir, tmp_path / "damaged")
    data = bytearray((damaged / "model.safetensors").read_bytes())
    data[-1] ^= 0xFF
    (damaged / "model.safetensors").write_bytes(bytes(data))
    assert_one_line_error(run("validate", damaged), "model.safetensors does not match its checksum")
    assert_one_line_error(run("validate", tmp_path / "nope"), "is not a reference folder")


def test_train_then_validate(tmp_path):
    human = read("baron_human_pancreas")
    atlas_path = tmp_path / "atlas.h5ad"
    human[human.obs["donor"] == "human2"][:250].copy().write_h5ad(atlas_path)
    out = tmp_path / "tiny"
    assert_one_line_error(run("train", atlas_path, "--label-key", "celltype", "--name", "tiny", "-o", out),
                          "--label-key 'celltype'", "cell_type1")
    assert not out.exists()

    args = ["train", atlas_path, "--label-key", "cell_type1", "--name", "tiny", "-o", out, "--small-types", "drop",
            "--pretrain-epochs", "1", "--epochs", "2", "--description", "two-epoch test", "--no-progress"]
    result = run(*args)
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("Trained tiny: ") and f"Saved to {out}" in result.stdout
    assert run("validate", out).stdout.startswith(f"OK {out}: tiny")
    assert json.loads((out / "config.json").read_text())["metadata"]["description"] == "two-epoch test"
    assert_one_line_error(run(*args), "already exists", "--force")


@pytest.fixture
def index_dir(tmp_path, monkeypatch):
    """A packaged index with two references in place of the real one."""
    folder = tmp_path / "references"
    folder.mkdir()
    entries = {name: {"repo_id": f"lab/{name}", "organism": organism, "tissue": "pancreas", "n_cells": n,
                      "description": f"{organism} islets"}
               for name, organism, n in (("pancreas-human", "human", 1836), ("pancreas-mouse", "mouse", 1886))}
    (folder / "index.json").write_text(json.dumps({"index_version": 1, "references": entries}))
    monkeypatch.setattr(_registry, "REFERENCES_DIR", folder)
    return folder


def test_list_with_filters(index_dir):
    result = run("list")
    assert result.exit_code == 0, result.output
    header, *rows = result.stdout.splitlines()
    assert header.split()[:4] == ["name", "organism", "tissue", "cells"]
    assert [row.split()[0] for row in rows] == ["pancreas-human", "pancreas-mouse"]
    assert [row.split()[0] for row in run("list", "--organism", "Mouse").stdout.splitlines()[1:]] == ["pancreas-mouse"]
    assert [row.split()[0] for row in run("list", "--name", "*-hum*").stdout.splitlines()[1:]] == ["pancreas-human"]
    assert run("list", "--tissue", "liver").stdout.startswith("No reference matches")


def test_info_on_a_folder(reference_dir):
    result = run("info", reference_dir)
    assert result.exit_code == 0, result.output
    assert f"name:           {REFERENCE_NAME}" in result.stdout
    assert "alpha (" in result.stdout and "source:         local" in result.stdout
    assert "## Training data" in result.stdout and "library_name" not in result.stdout  # card without front matter
    assert "Training data" not in run("info", reference_dir, "--no-card").stdout


def test_push_download_cache_and_info_through_the_hub(hub, reference_dir, query_file, tmp_path, monkeypatch):
    hub.add_commit("itclust-hub/index", {"index.json": b'{"index_version": 1, "references": {}}'}, repo_type="dataset")
    assert_one_line_error(run("push", reference_dir, "--repo-id", "lab/pancreas-test"), "HF_TOKEN")
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    result = run("push", reference_dir, "--repo-id", "lab/pancreas-test")
    assert result.exit_code == 0, result.output
    revision = hub.repo("lab/pancreas-test").refs["main"]
    pushed, index_entry = result.stdout.splitlines()
    assert pushed == f"Pushed {REFERENCE_NAME} to lab/pancreas-test at revision {revision}"
    assert index_entry.startswith("Index entry: http") and index_entry.endswith("/discussions/1")

    assert run("cache", "ls").stdout.strip() == "No cached references."
    result = run("download", "lab/pancreas-test")
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines()[1] == f"revision: {revision}"
    listed = run("cache", "ls").stdout.splitlines()
    assert listed[1].split()[:2] == ["lab/pancreas-test", revision[:12]] and listed[-1].startswith("1 cached")
    assert f"revision:       {revision}" in run("info", "lab/pancreas-test").stdout

    result = run("cache", "clear", "lab/pancreas-test")
    assert result.exit_code == 0 and result.stdout.startswith("Freed ") and "0 B" not in result.stdout
    assert run("cache", "ls").stdout.strip() == "No cached references."
    assert_one_line_error(run("download", "lab/missing"), "no repository lab/missing")
