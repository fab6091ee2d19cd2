"""The ``itclust-hub`` command line on real data: help, transfer end to end, overwriting, one-line
errors, train/validate, listing, and push/download/cache/info against the local Hub server."""

import functools
import json
import shutil
from pathlib import Path

import anndata as ad
import pytest
from click.testing import CliRunner
from hub_server import TOKEN
from PIL import Image

import itclust_hub as ih
from itclust_hub import _registry
from itclust_hub._artifact import REFERENCE_FILES
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
    assert {p.name for p in tables.iterdir()} == {"labels.csv", "probabilities.csv", "clusters.csv", "query_clusters.csv"}
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


def test_train_reads_an_h5ad_atlas_from_disk(tmp_path, monkeypatch):
    """A lab's atlas can be larger than memory: `train` opens an .h5ad backed (X read chunk by chunk) with one
    process too, and the reference is the one the same cells give in memory."""
    human = read("baron_human_pancreas")
    atlas = human[human.obs["donor"] == "human2"][:250].copy()
    atlas.write_h5ad(tmp_path / "atlas.h5ad")
    opened = []
    read_h5ad = ad.read_h5ad
    monkeypatch.setattr(ad, "read_h5ad",
                        lambda *args, **kwargs: opened.append(kwargs.get("backed")) or read_h5ad(*args, **kwargs))
    settings = dict(small_types="drop", pretrain_epochs=1, epochs=2, seed=0)
    result = run("train", tmp_path / "atlas.h5ad", "--label-key", "cell_type1", "--name", "tiny",
                 "-o", tmp_path / "tiny", "--small-types", "drop", "--pretrain-epochs", "1", "--epochs", "2",
                 "--no-progress")
    assert result.exit_code == 0, result.output
    assert opened == ["r"]
    in_memory = ih.train_reference(atlas, "cell_type1", "tiny", progress=False, **settings)
    saved = ih.ItClust.from_pretrained(tmp_path / "tiny")
    assert all(value.equal(in_memory.tensors()[key]) for key, value in saved.tensors().items())


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


# --- issue 20: --force replaces only what we wrote; outputs checked first; the CLI speaks CLI -------------

def fake_training(monkeypatch):
    """``train`` returns the session's small model at once (these tests are about where it is written)."""
    import itclust_hub._train

    monkeypatch.setattr(itclust_hub._train, "train_reference", lambda *args, **kwargs: small_model())


def train_args(atlas, out, *extra):
    return ["train", atlas, "--label-key", "cell_type1", "--name", "tiny", "-o", out, "--no-progress", *extra]


def test_train_force_never_deletes_the_input_or_other_files(query_file, tmp_path, monkeypatch):
    fake_training(monkeypatch)
    proj = tmp_path / "proj"
    proj.mkdir()
    atlas = Path(shutil.copy(query_file, proj / "atlas.h5ad"))
    assert_one_line_error(run(*train_args(atlas, proj, "--force")), str(proj), "atlas.h5ad", "another")
    assert atlas.read_bytes() == query_file.read_bytes()

    ref = tmp_path / "ref"
    assert run(*train_args(query_file, ref)).exit_code == 0
    (ref / "notes.txt").write_text("mine")
    assert_one_line_error(run(*train_args(query_file, ref, "--force")), "notes.txt", "new or empty folder")
    assert (ref / "notes.txt").read_text() == "mine"

    (ref / "notes.txt").unlink()
    (ref / "labels.json").write_text("stale")
    inode = ref.stat().st_ino
    result = run(*train_args(query_file, ref, "--force"))
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in ref.iterdir()) == sorted(REFERENCE_FILES)
    assert ref.stat().st_ino == inode and run("validate", ref).exit_code == 0


def test_save_pretrained_force_replaces_only_reference_files(tmp_path):
    folder = small_model().save_pretrained(tmp_path / "ref")
    (folder / "atlas.h5ad").write_text("the user's data")
    with pytest.raises(ih.ItClustError, match="atlas.h5ad.*force=True replaces only"):
        small_model().save_pretrained(folder, force=True)
    assert (folder / "atlas.h5ad").read_text() == "the user's data"


def test_train_into_the_current_folder(query_file, tmp_path, monkeypatch):
    fake_training(monkeypatch)
    monkeypatch.chdir(tmp_path)
    for force in ([], ["--force"]):  # a new, empty folder; then replacing its reference files
        result = run(*train_args(query_file, ".", *force))
        assert result.exit_code == 0, result.output
        assert f"Saved to {tmp_path}" in result.stdout and (tmp_path / "config.json").is_file()


@pytest.mark.parametrize("case", ["-o under a file", "--report under a file", "--tables is -o", "-o is the query"])
def test_transfer_outputs_are_checked_before_any_work(case, reference_dir, query_file, tmp_path, monkeypatch):
    afile = tmp_path / "afile"
    afile.write_text("x")
    out, extra, expected = tmp_path / "out.h5ad", [], []
    if case == "-o under a file":
        out, expected = afile / "out.h5ad", [f"{afile} is a file"]
    elif case == "--report under a file":
        extra, expected = ["--report", afile / "report"], [f"{afile} is a file"]
    elif case == "--tables is -o":
        extra, expected = ["--tables", out], ["its own path"]
    else:
        query = tmp_path / "query.h5ad"
        shutil.copy(query_file, query)
        out, extra, expected = query, ["--force"], ["is or holds the input"]

    def must_not_load(*args, **kwargs):
        raise AssertionError("the reference was loaded before the outputs were checked")

    monkeypatch.setattr(ih.ItClust, "from_pretrained", must_not_load)
    assert_one_line_error(run("transfer", reference_dir, out if case == "-o is the query" else query_file, "-o", out,
                              *extra), *expected)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["afile"] + ["query.h5ad"] * (case == "-o is the query"))


def test_train_output_is_checked_before_reading_the_atlas(tmp_path):
    afile = tmp_path / "afile"
    afile.write_text("x")
    assert_one_line_error(run(*train_args(tmp_path / "not-read.h5ad", afile / "ref")), f"{afile} is a file")


def test_a_failed_write_leaves_no_partial_output(reference_dir, query_file, tmp_path, monkeypatch):
    out, tables, report = tmp_path / "out.h5ad", tmp_path / "tables", tmp_path / "new" / "report"

    def fail(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(ih.TransferResult, "to_adata", fail)
    result = run("transfer", reference_dir, query_file, "-o", out, "--tables", tables, "--report", report,
                 "--no-progress")
    assert result.exit_code == 1 and "disk full" in result.stderr
    assert list(tmp_path.iterdir()) == []


def bundled_copy(tmp_path, monkeypatch) -> Path:
    """A copy of the packaged references (index and bundled folders) in place of the installed ones."""
    folder = Path(shutil.copytree(_registry.REFERENCES_DIR, tmp_path / "references"))
    monkeypatch.setattr(_registry, "REFERENCES_DIR", folder)
    return folder


def test_validate_checks_a_bundled_folder_as_loading_does(tmp_path, monkeypatch):
    bundled = bundled_copy(tmp_path, monkeypatch) / "pancreas-human"
    assert run("validate", bundled).stdout.startswith(f"OK {bundled}: pancreas-human")
    with open(bundled / "README.md", "a") as card:
        card.write("\nEdited.\n")
    assert_one_line_error(run("validate", bundled), str(bundled / "README.md"), "reinstall")
    with pytest.raises(ih.ItClustError, match="README.md does not match the index checksum"):
        ih.ItClust.from_pretrained("pancreas-human")


def test_api_words_become_cli_options(reference_dir, query_file, tmp_path):
    out = tmp_path / "out.h5ad"
    line = assert_one_line_error(run("transfer", reference_dir, query_file, "-o", out, "--use-raw"), "--use-raw")
    assert "use_raw" not in line and "layer=" not in line
    line = assert_one_line_error(run("transfer", reference_dir, query_file, "-o", out, "--gene-key", "nope"),
                                 "--gene-key 'nope'")
    line = assert_one_line_error(run("transfer", reference_dir, query_file, "-o", out, "--format", "text"),
                                 "--format")
    assert "format=" not in line
    assert not out.exists()


def test_every_option_the_messages_name_exists():
    from itclust_hub._errors import _CLI_OPTIONS

    options = {opt for command in main.commands.values() for param in command.params for opt in param.opts}
    assert {o for o in _CLI_OPTIONS.values() if o.startswith("--")} <= options


def test_cli_words():
    from itclust_hub._errors import cli_words

    assert cli_words("use_raw=True but no .raw; drop use_raw or pick a layer=") == \
        "--use-raw but no .raw; drop --use-raw or pick a --layer"
    assert cli_words("use device='cpu'; consider a larger max_iter.") == "use --device 'cpu'; consider a larger --max-iter."
    assert cli_words("the reference format version; layer 'x' not found") == "the reference format version; layer 'x' not found"


def test_not_converged_advice_names_an_option(reference_dir, query_file, tmp_path, monkeypatch):
    from itclust_hub import _report

    def unconverged(result):  # the 300 cells converge in one iteration; the advice is what is tested
        result.provenance["converged"] = False
        return original(result)

    original = _report.warnings
    monkeypatch.setattr(_report, "warnings", unconverged)
    result = run("transfer", reference_dir, query_file, "-o", tmp_path / "out.h5ad", "--max-iter", "1",
                 "--min-confidence", "0.6", "--no-progress")
    assert result.exit_code == 0, result.output
    provenance = ad.read_h5ad(tmp_path / "out.h5ad").uns["itclust"]["provenance"]
    assert provenance["settings"]["max_iter"] == 1 and provenance["settings"]["min_confidence"] == 0.6
    assert any("a larger --max-iter" in w for w in result.stderr.splitlines())
    assert "max_iter" not in result.stderr


@pytest.mark.parametrize("args", [["transfer", "ref", "q.h5ad", "-o", "o.h5ad", "--seed", "-1"],
                                  ["train", "a.h5ad", "--label-key", "x", "--name", "x", "-o", "o", "--seed", "-1"]])
def test_negative_seed_is_a_usage_error(args):
    assert_one_line_error(run(*args), "--seed", exit_code=2)


@pytest.mark.parametrize("group", [[], ["cache"]])
def test_a_group_alone_prints_its_help(group):
    result = run(*group)
    assert result.exit_code == 0 and result.stdout.startswith("Usage: ") and not result.stderr


def test_duplicated_gene_names_are_one_line_of_ours(reference_dir, query_file, tmp_path):
    query = ad.read_h5ad(query_file)
    names = query.var_names.tolist()
    names[1] = names[0]
    query.var_names = names
    path = tmp_path / "dup.h5ad"
    query.write_h5ad(path)
    result = run("transfer", reference_dir, path, "-o", tmp_path / "out.h5ad", "--no-progress")
    assert result.exit_code == 0, result.output
    lines = [line for line in result.stderr.splitlines() if "more than once" in line or "not unique" in line]
    assert lines == [f"Warning: {path}: 1 gene name occurs more than once (e.g. {names[0]!r})"]
    assert "UserWarning" not in result.stderr


@pytest.mark.parametrize("processes", ["1", "2"])
def test_a_label_key_unique_per_cell_is_one_short_line(query_file, tmp_path, processes):
    query = ad.read_h5ad(query_file)
    query.obs["barcode"] = query.obs_names
    path = tmp_path / "atlas.h5ad"
    query.write_h5ad(path)
    # with 2 processes the error is raised in each training process and reported once by the command
    result = run("train", path, "--label-key", "barcode", "--name", "x", "-o", tmp_path / "ref", "--processes", processes)
    line = assert_one_line_error(result, "--label-key 'barcode'", "different value for every one of its 300 cells")
    assert len(line) < 200 and not (tmp_path / "ref").exists()


def test_train_on_processes_needs_the_h5ad_x(query_file, tmp_path):
    text = tmp_path / "atlas.csv"
    text.write_text("gene,a\ncell,1\n")
    base = ["train", "--label-key", "cell_type1", "--name", "x", "-o", tmp_path / "ref", "--processes", "2"]
    assert_one_line_error(run(*base, text), "--processes 2", "needs an .h5ad", "--processes 1")
    assert_one_line_error(run(*base, query_file, "--layer", "counts"), "--processes 2", "drop --layer/--use-raw")
    assert_one_line_error(run(*base, query_file, "--use-raw"), "--processes 2", "drop --layer/--use-raw")


def test_counts_are_grammatical():
    from itclust_hub.cli import _plural

    assert (_plural(1, "cell"), _plural(2, "cell"), _plural(1836, "cell")) == ("1 cell", "2 cells", "1,836 cells")
