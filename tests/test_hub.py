"""The download/registry layer against the local Hub-compatible server (tests/hub_server.py)."""

import hashlib
import json
import time
from pathlib import Path

import pytest
from huggingface_hub import snapshot_download
from hub_server import TOKEN, SilentEndpoint, closed_endpoint

from itclust_hub import _registry
from itclust_hub._errors import ItClustError
from itclust_hub._artifact import FORMAT_VERSION
from itclust_hub._hub import cached_references, clear_cache, push_reference, resolve_reference
from itclust_hub._hub import list_references
from itclust_hub._registry import get_entry, load_index, parse_reference


def reference_files(name="atlas", organism="human", tissue="pancreas", seed=b"", format_version=FORMAT_VERSION):
    """The five files of a reference folder; dummy bytes except config.json, which this layer reads."""
    config = {"format_version": format_version, "name": name, "version": "1.0.0", "organism": organism,
              "tissue": tissue, "n_cells": 100, "architecture": {"n_genes": 3, "n_types": 2, "hidden_dims": [4]},
              "metadata": {"license": "cc-by-4.0", "description": "test reference"}}
    return {"config.json": json.dumps(config).encode(), "model.safetensors": b"weights" * 500 + seed,
            "genes.json": b'{"symbols": ["A", "B", "C"]}', "labels.json": b'{"cell_types": ["x", "y"]}',
            "README.md": b"---\ntags:\n- itclust-hub\n---\n# atlas\n"}


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def entry(repo_id, revision, files, **extra):
    row = {"repo_id": repo_id, "revision": revision, "organism": "human", "tissue": "pancreas", "n_cells": 100,
           "n_cell_types": 2, "n_genes": 3, "version": "1.0.0", "files": {k: sha(v) for k, v in files.items()},
           "bundled": False}
    return {**row, **extra}


@pytest.fixture
def index_dir(tmp_path, monkeypatch):
    """An empty packaged-references folder in place of the real one; fill it with write_index."""
    folder = tmp_path / "references"
    folder.mkdir()
    monkeypatch.setattr(_registry, "REFERENCES_DIR", folder)
    write_index(folder, {})
    return folder


def write_index(folder: Path, references: dict) -> None:
    (folder / "index.json").write_text(json.dumps({"index_version": 1, "references": references}))


@pytest.fixture
def published(hub, index_dir):
    """Reference "pancreas-test" at commit v1 on the server, pinned by the index."""
    files = reference_files()
    commit = hub.add_commit("lab/pancreas-test", files)
    write_index(index_dir, {"pancreas-test": entry("lab/pancreas-test", commit, files)})
    return files, commit


def write_folder(folder: Path, files: dict) -> Path:
    folder.mkdir()
    for name, data in files.items():
        (folder / name).write_bytes(data)
    return folder


def read_folder(path: Path) -> dict:
    return {p.name: p.read_bytes() for p in path.iterdir() if p.is_file()}


def one_line_error(call, *args, **kwargs) -> str:
    with pytest.raises(ItClustError) as info:
        call(*args, **kwargs)
    message = str(info.value)
    assert "\n" not in message and message
    return message


def blobs(home: Path) -> list[Path]:
    return [p for p in (home / "hub").rglob("blobs/*")]


# -- download, cache, offline ----------------------------------------------------------------------

def test_first_download_then_cached_load_with_server_stopped(published, hub, go_offline):
    files, commit = published
    first = resolve_reference("pancreas-test")
    assert (first.source, first.repo_id, first.name) == ("hub", "lab/pancreas-test", "pancreas-test")
    assert first.revision == commit
    assert read_folder(first.path) == files
    assert ("GET", f"/api/models/lab/pancreas-test/tree/{commit}") in hub.requests

    hub.requests.clear()
    assert resolve_reference("pancreas-test").path == first.path
    assert hub.requests == []  # a cached pinned commit needs no network

    hub.stop()
    assert resolve_reference("pancreas-test", local_files_only=True).path == first.path
    go_offline()
    again = resolve_reference("pancreas-test")
    assert (again.path, again.revision) == (first.path, commit)


def test_branch_falls_back_to_cache_when_hub_unreachable(hub, caplog):
    files = reference_files()
    hub.add_commit("lab/atlas", files)
    first = resolve_reference("lab/atlas")
    hub.stop()
    again = resolve_reference("lab/atlas")
    assert again.path == first.path and read_folder(again.path) == files
    assert "using the cached copy" in caplog.text


def test_pinned_revision_is_kept_when_branch_moves(published, hub):
    files, v1 = published
    newer = reference_files(seed=b"v2")
    v2 = hub.add_commit("lab/pancreas-test", newer)
    assert read_folder(resolve_reference("pancreas-test").path) == files
    assert resolve_reference("lab/pancreas-test").revision == v1  # repo id known to the index -> pinned
    latest = resolve_reference("pancreas-test@main")
    assert (latest.revision, read_folder(latest.path)) == (v2, newer)
    assert resolve_reference("lab/pancreas-test", revision=v1).revision == v1
    hub.move_branch("lab/pancreas-test", "main", v1)
    assert resolve_reference("pancreas-test@main").revision == v1


def test_tampered_file_is_refused_and_cache_stays_consistent(published, hub, isolated_hf_home, go_offline):
    files, commit = published
    hub.tamper("lab/pancreas-test", "model.safetensors", commit)
    message = one_line_error(resolve_reference, "pancreas-test")
    assert "model.safetensors" in message and "checksum" in message
    for blob in blobs(isolated_hf_home):
        assert blob.read_bytes() != hub.tampered[("model", "lab/pancreas-test", commit, "model.safetensors")]

    hub.heal()
    good = resolve_reference("pancreas-test")
    assert read_folder(good.path) == files
    go_offline()
    assert read_folder(resolve_reference("pancreas-test").path) == files


@pytest.mark.parametrize("progress, shown", [(None, False), (False, False), (True, True)])
def test_download_bars_follow_our_progress_setting(published, monkeypatch, progress, shown):
    from huggingface_hub.utils import are_progress_bars_disabled

    from itclust_hub import _hub

    seen = []

    def recording(*args, **kwargs):
        seen.append(not are_progress_bars_disabled("huggingface_hub.snapshot_download"))
        return snapshot_download(*args, **kwargs)

    monkeypatch.setattr(_hub, "snapshot_download", recording)
    resolve_reference("pancreas-test", progress=progress)  # None: bars only on a terminal, which pytest's stderr is not
    assert seen and set(seen) == {shown}
    assert not are_progress_bars_disabled("huggingface_hub.snapshot_download")  # as it was before


def test_tampered_cache_offline_says_not_in_cache(published, hub, go_offline):
    _, commit = published
    hub.tamper("lab/pancreas-test", "genes.json", commit)
    one_line_error(resolve_reference, "pancreas-test")
    go_offline()
    assert "not in the cache" in one_line_error(resolve_reference, "pancreas-test")


def test_interrupted_download_fails_then_retry_succeeds(published, hub, isolated_hf_home):
    files, _ = published
    hub.drop_downloads("lab/pancreas-test", "model.safetensors")
    start = time.monotonic()
    message = one_line_error(resolve_reference, "pancreas-test")
    assert "interrupted" in message and "again" in message
    assert time.monotonic() - start < 15
    assert not [p for p in (isolated_hf_home / "hub").rglob("*.incomplete")]

    hub.heal()
    assert read_folder(resolve_reference("pancreas-test").path) == files


def test_missing_repo(hub):
    message = one_line_error(resolve_reference, "nobody/nothing")
    assert "no repository nobody/nothing" in message


def test_missing_revision(hub):
    hub.add_commit("lab/atlas", reference_files())
    assert "no revision 'v9'" in one_line_error(resolve_reference, "lab/atlas@v9")


def test_offline_with_empty_cache_says_what_to_do(published, go_offline):
    go_offline()
    message = one_line_error(resolve_reference, "pancreas-test")
    assert "not in the cache" in message and "itclust-hub download pancreas-test" in message
    assert "HF_HUB_OFFLINE" in message


@pytest.mark.parametrize("endpoint", ["closed", "silent"])
def test_unreachable_endpoint_fails_fast(endpoint, monkeypatch):
    monkeypatch.setenv("HF_HUB_ETAG_TIMEOUT", "1")
    with SilentEndpoint() as silent:
        url = silent if endpoint == "silent" else closed_endpoint()
        monkeypatch.setenv("HF_ENDPOINT", url)
        start = time.monotonic()
        message = one_line_error(resolve_reference, "lab/atlas")
    assert time.monotonic() - start < 5
    assert f"cannot reach {url}" in message


def test_newer_format_is_refused_with_the_version_needed(hub, tmp_path):
    files = reference_files(format_version=FORMAT_VERSION + 1)
    hub.add_commit("lab/future", files)
    message = one_line_error(resolve_reference, "lab/future")
    assert f"format version {FORMAT_VERSION + 1}" in message and "pip install -U itclust-hub" in message

    folder = write_folder(tmp_path / "future", files)
    assert f"format version {FORMAT_VERSION + 1}" in one_line_error(resolve_reference, str(folder))


# -- names, specs, the index -----------------------------------------------------------------------

def test_unknown_name_suggests_close_names():
    message = one_line_error(get_entry, "pancreas-humna")
    assert "did you mean pancreas-human" in message
    assert "pancreas-human" in one_line_error(resolve_reference, "pancreas_human")


@pytest.mark.parametrize("spec", ["pancreas-human@", "lab/atlas@", "@main", "a b", "", "lab/atlas@x@y",
                                  "lab--x/atlas", "lab/atlas-", "a/b/c"])
def test_malformed_specs_are_one_line_errors(spec):
    one_line_error(parse_reference, spec)


def test_parse_reference_kinds(tmp_path):
    assert parse_reference("pancreas-human") == _registry.ReferenceSpec("name", "pancreas-human")
    assert parse_reference("pancreas-human@v1.0") == _registry.ReferenceSpec("name", "pancreas-human", "v1.0")
    assert parse_reference("lab/atlas@refs/pr/1") == _registry.ReferenceSpec("repo", "lab/atlas", "refs/pr/1")
    assert parse_reference(tmp_path).kind == "local"
    assert parse_reference("https://lab.org/refs/atlas").kind == "url"
    assert "does not exist" in one_line_error(parse_reference, "./no/such/folder")


def test_packaged_index_lists_the_bundled_curated_references():
    index = load_index()
    assert {"pancreas-human", "pancreas-mouse"} <= set(index)
    table = list_references(name="pancreas-*")
    assert set(table["organism"]) == {"human", "mouse"}
    assert table["bundled"].all() and table["cached"].all()


def test_list_references_filters_and_cached_column(published, index_dir):
    files, commit = published
    write_folder(index_dir / "bundled-ref", reference_files())
    write_index(index_dir, {
        "pancreas-test": entry("lab/pancreas-test", commit, files),
        "pancreas-mouse-test": entry("lab/mouse", None, {}, organism="mouse"),
        "lung-test": entry("lab/lung", None, {}, tissue="lung"),
        "bundled-ref": entry("lab/bundled", None, reference_files(), bundled=True),
    })
    table = list_references()
    assert {"name", "organism", "tissue", "n_cells", "n_cell_types", "n_genes", "version", "repo_id", "revision",
            "bundled", "cached"} <= set(table.columns)
    assert set(list_references(organism="Mouse")["name"]) == {"pancreas-mouse-test"}
    assert set(list_references(tissue="lung")["name"]) == {"lung-test"}
    assert set(list_references(name="pancreas-*")["name"]) == {"pancreas-test", "pancreas-mouse-test"}
    cached = dict(zip(table["name"], table["cached"]))
    assert cached == {"pancreas-test": False, "pancreas-mouse-test": False, "lung-test": False, "bundled-ref": True}

    resolve_reference("pancreas-test")
    assert list_references(name="pancreas-test")["cached"].tolist() == [True]


def test_bundled_reference_needs_no_network_and_is_checked(index_dir):
    files = reference_files()
    folder = write_folder(index_dir / "bundled-ref", files)
    write_index(index_dir, {"bundled-ref": entry("lab/bundled", "0" * 40, files, bundled=True)})
    resolved = resolve_reference("bundled-ref")
    assert (resolved.source, resolved.path, resolved.revision) == ("bundled", folder, "0" * 40)

    (folder / "labels.json").write_bytes(b"{}")
    assert "reinstall" in one_line_error(resolve_reference, "bundled-ref")


def test_refresh_fetches_the_hub_index_and_keeps_it(published, hub, go_offline):
    extra = reference_files(name="kidney", tissue="kidney")
    kidney = hub.add_commit("lab/kidney", extra)
    hub.add_commit("itclust-hub/index", {"index.json": json.dumps({"index_version": 1, "references": {
        "kidney-test": entry("lab/kidney", kidney, extra, tissue="kidney")}}).encode()}, repo_type="dataset")
    assert "kidney-test" not in set(list_references()["name"])
    assert set(list_references(refresh=True)["name"]) == {"pancreas-test", "kidney-test"}
    assert read_folder(resolve_reference("kidney-test").path) == extra

    go_offline()
    assert "kidney-test" in set(list_references()["name"])
    assert "HF_HUB_OFFLINE" in one_line_error(list_references, refresh=True)


def test_community_references_are_listed_on_request(published, hub):
    hub.add_commit("itclust-hub/index", {"index.json": b'{"index_version": 1, "references": {}}'}, repo_type="dataset")
    hub.add_commit("someone/liver", reference_files(), tags=["itclust-hub"])
    hub.add_commit("someone/gpt", {"config.json": b"{}"}, tags=["text-generation"])
    table = list_references(include_community=True)
    assert dict(zip(table["name"], table["source"])) == {"pancreas-test": "index", "someone/liver": "community"}


# -- URLs, cache management ------------------------------------------------------------------------

def test_lab_file_server_url(hub, go_offline):
    files = reference_files()
    hub.add_commit("lab/served", files)
    url = f"{hub.url}/lab/served/resolve/main"
    first = resolve_reference(url)
    assert first.source == "url" and {n: (first.path / n).read_bytes() for n in files} == files
    hub.stop()
    go_offline()
    assert resolve_reference(url).path == first.path
    assert "not in the cache" in one_line_error(resolve_reference, url + "/other")


def test_fsspec_url(tmp_path):
    files = reference_files()
    folder = write_folder(tmp_path / "shared-drive", files)
    resolved = resolve_reference(folder.as_uri())
    assert resolved.source == "url" and {n: (resolved.path / n).read_bytes() for n in files} == files


def test_url_missing_files_is_an_error(hub):
    hub.add_commit("lab/half", {"config.json": reference_files()["config.json"]})
    assert "HTTP 404" in one_line_error(resolve_reference, f"{hub.url}/lab/half/resolve/main")


def test_cached_references_and_clear_cache(published, hub):
    files, commit = published
    hub.add_commit("other/text-model", {"config.json": b"{}", "weights.bin": b"x" * 100})
    snapshot_download("other/text-model", endpoint=hub.url)  # another library's model in the same cache
    resolve_reference("pancreas-test")
    hub.add_commit("lab/served", files)
    resolve_reference(f"{hub.url}/lab/served/resolve/main")

    table = cached_references()
    assert sorted(table["name"]) == sorted(["pancreas-test", f"{hub.url}/lab/served/resolve/main"])
    assert table.set_index("name").loc["pancreas-test", "revision"] == commit

    assert clear_cache("pancreas-test") > 0
    assert list(cached_references()["source"]) == ["url"]
    assert clear_cache() > 0
    assert cached_references().empty
    snapshot_download("other/text-model", endpoint=hub.url, local_files_only=True)  # untouched


# -- publishing ------------------------------------------------------------------------------------

def test_push_uploads_and_opens_an_index_pull_request(hub, tmp_path, monkeypatch):
    index_before = json.dumps({"index_version": 1, "references": {}}).encode()
    hub.add_commit("itclust-hub/index", {"index.json": index_before}, repo_type="dataset")
    files = reference_files(name="my-atlas")
    folder = write_folder(tmp_path / "my-atlas", files)
    monkeypatch.setenv("HF_TOKEN", TOKEN)

    pushed = push_reference(folder, "lab/my-atlas")
    repo = hub.repo("lab/my-atlas")
    assert {k: v for k, v in repo.commits[pushed.revision].items() if k in files} == files
    index_repo = hub.repo("itclust-hub/index", "dataset")
    assert index_repo.commits[index_repo.refs["main"]]["index.json"] == index_before  # main untouched
    assert len(index_repo.pull_requests) == 1 and pushed.index_url.endswith("/discussions/1")
    proposed = json.loads(index_repo.commits[index_repo.refs["refs/pr/1"]]["index.json"])["references"]["my-atlas"]
    assert proposed["repo_id"] == "lab/my-atlas" and proposed["revision"] == pushed.revision
    assert proposed["files"] == {k: sha(v) for k, v in files.items()}
    assert (proposed["organism"], proposed["n_genes"], proposed["n_cell_types"]) == ("human", 3, 2)
    assert read_folder(resolve_reference("lab/my-atlas").path) == files


def test_push_without_pull_request_commits_to_the_index(hub, tmp_path):
    hub.add_commit("itclust-hub/index", {"index.json": b'{"index_version": 1, "references": {}}'}, repo_type="dataset")
    folder = write_folder(tmp_path / "my-atlas", reference_files(name="my-atlas"))
    pushed = push_reference(folder, "lab/my-atlas", token=TOKEN, open_pr=False)
    index_repo = hub.repo("itclust-hub/index", "dataset")
    assert index_repo.pull_requests == [] and "/commit/" in pushed.index_url
    assert "my-atlas" in json.loads(index_repo.commits[index_repo.refs["main"]]["index.json"])["references"]


def test_push_refuses_an_invalid_name(tmp_path):
    folder = write_folder(tmp_path / "atlas", reference_files(name="My Atlas"))
    assert "not a valid reference name" in one_line_error(push_reference, folder, "lab/atlas", token=TOKEN)


def test_push_refuses_to_take_over_an_indexed_name(hub, tmp_path, monkeypatch):
    taken = {"index_version": 1, "references": {"my-atlas": entry("other/my-atlas", "1" * 40, {})}}
    hub.add_commit("itclust-hub/index", {"index.json": json.dumps(taken).encode()}, repo_type="dataset")
    folder = write_folder(tmp_path / "my-atlas", reference_files(name="my-atlas"))
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    assert "already belongs to other/my-atlas" in one_line_error(push_reference, folder, "lab/my-atlas")
    assert hub.repo("itclust-hub/index", "dataset").pull_requests == []


def test_push_without_token_is_one_line(hub, tmp_path):
    folder = write_folder(tmp_path / "my-atlas", reference_files(name="my-atlas"))
    message = one_line_error(push_reference, folder, "lab/my-atlas")
    assert "HF_TOKEN" in message and "login" in message
    assert ("model", "lab/my-atlas") not in hub.repos


def test_push_with_a_rejected_token(hub, tmp_path):
    hub.add_commit("itclust-hub/index", {"index.json": b'{"index_version": 1, "references": {}}'}, repo_type="dataset")
    folder = write_folder(tmp_path / "my-atlas", reference_files(name="my-atlas"))
    assert "refused the token" in one_line_error(push_reference, folder, "lab/my-atlas", token="hf_wrong")
