"""All of the hub that goes to the network: getting a reference folder onto disk - the packaged copy, a local
folder, the Hub (pinned, cached and verified against the index) or a lab's own file server -, listing the
references (the newest index and community repos on request), listing and clearing the cache, and
publishing a reference with a pull request on the index repository. Hub settings (``HF_ENDPOINT``,
``HF_HUB_OFFLINE``, ``HF_HUB_ETAG_TIMEOUT``) are read at call time. The index itself is :mod:`._registry`."""

from __future__ import annotations

import fnmatch
import hashlib
import http.client
import json
import logging
import os
import shutil
import tempfile
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path

import fsspec
import httpx2
import pandas as pd
from huggingface_hub import (CommitOperationAdd, HfApi, constants, get_token, hf_hub_download, scan_cache_dir,
                             snapshot_download)
from huggingface_hub.errors import (
    CacheNotFound,
    HfHubHTTPError,
    LocalEntryNotFoundError,
    OfflineModeIsEnabled,
    RemoteEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)

from ._artifact import REFERENCE_FILES, check_format, sha256
from ._errors import ItClustError
from ._genes import normalize_organism
from ._progress import hub_progress
from ._registry import (
    INDEX_FILENAME,
    INDEX_REPO_ID,
    INDEX_REPO_TYPE,
    INDEX_VERSION,
    ReferenceEntry,
    bundled_entry,
    bundled_folder,
    find_entry,
    get_entry,
    hub_cache_dir,
    is_cached,
    is_reference_name,
    load_index,
    parse_reference,
)

logger = logging.getLogger(__name__)

COMMUNITY_TAG = "itclust-hub"
NETWORK_TIMEOUT_S = 5.0
_TRUE = {"1", "ON", "YES", "TRUE"}
# Errors that mean "the Hub did not answer" rather than "the Hub said no".
NETWORK_ERRORS = (httpx2.TransportError, OfflineModeIsEnabled)
URL_CACHE = "itclust-hub-urls"
_SOURCE_URL_FILE = ".source-url"
_COMMIT_LENGTH = 40


def hub_endpoint() -> str:
    """The Hub URL: ``HF_ENDPOINT`` as set now, else huggingface_hub's default."""
    return (os.environ.get("HF_ENDPOINT") or constants.ENDPOINT).rstrip("/")


def is_offline() -> bool:
    """True when ``HF_HUB_OFFLINE`` is set, whether before or after huggingface_hub was imported."""
    return constants.is_offline_mode() or os.environ.get("HF_HUB_OFFLINE", "").upper() in _TRUE


def network_timeout() -> float:
    """Seconds to wait for the Hub before giving up: ``HF_HUB_ETAG_TIMEOUT`` if set, else 5."""
    return float(os.environ.get("HF_HUB_ETAG_TIMEOUT") or NETWORK_TIMEOUT_S)


def network_reason(err: Exception) -> str:
    """A short reason for a failed Hub call, for one-line messages."""
    if isinstance(err, httpx2.TimeoutException):
        return f"no answer within {network_timeout():g} s"
    if isinstance(err, HfHubHTTPError) and err.response is not None:
        return f"HTTP {err.response.status_code}"
    return str(err).splitlines()[0] if str(err) else type(err).__name__


def remote_commit(api: HfApi, repo_id: str, revision: str | None, repo_type: str | None = None) -> str:
    """The commit ``revision`` points to on the Hub, asked with a short timeout so a dead endpoint fails fast."""
    return api.repo_info(repo_id, revision=revision, repo_type=repo_type, timeout=network_timeout()).sha


@dataclass(frozen=True)
class ResolvedReference:
    """A reference folder on local disk and where it came from.

    ``source`` is "bundled", "local", "hub" or "url"; ``revision`` is the Hub commit for "hub", the
    index's pinned commit for "bundled", and None otherwise.
    """

    path: Path
    name: str
    repo_id: str | None
    revision: str | None
    source: str


@dataclass(frozen=True)
class PushedReference:
    """What :func:`push_reference` published: the repo commit, its index entry and the index pull request."""

    repo_id: str
    revision: str
    entry: ReferenceEntry
    index_url: str


def _is_commit(revision: str | None) -> bool:
    return revision is not None and len(revision) == _COMMIT_LENGTH and all(c in "0123456789abcdef" for c in revision)


def _offline_hint() -> str:
    return "unset HF_HUB_OFFLINE" if is_offline() else "drop local_files_only"


def resolve_reference(spec, revision: str | None = None, cache_dir=None, local_files_only: bool = False,
                      token=None, progress: bool | None = None) -> ResolvedReference:
    """Find or download the reference ``spec`` and return its local folder.

    Args:
        spec: registry name ("pancreas-human", "name@rev"), Hub repo ("org/repo", "org/repo@rev"), local
            folder, or URL of a folder on a file server ("https://lab.org/refs/atlas").
        revision: branch, tag or commit, like "@rev" in ``spec`` (giving both with different values is an error).
        cache_dir: Hub cache folder (default: ``HF_HUB_CACHE`` / ``HF_HOME``).
        local_files_only: never touch the network (as does ``HF_HUB_OFFLINE=1``).
        token: Hugging Face token for private repos (default: the logged-in one).
        progress: show huggingface_hub's download bars (default: only on a terminal).

    A registry name without a revision gives the packaged copy when the reference is bundled, else the
    commit the index pins. Files the index lists are checked against its SHA-256 before returning; a
    mismatching download is deleted from the cache. A reference in a newer format is refused.
    """
    parsed = parse_reference(spec)
    if revision is not None and parsed.revision not in (None, revision):
        raise ItClustError(f"{spec!r} asks for revision {parsed.revision} but revision={revision!r} was also given; "
                           "pass one")
    revision = revision or parsed.revision
    offline = local_files_only or is_offline()
    if parsed.kind == "local":
        if revision is not None:
            raise ItClustError(f"{parsed.target} is a local folder, which has no revisions; drop @{revision}")
        path = Path(parsed.target).resolve()
        entry = bundled_entry(path)
        if entry is not None:  # the bundled copy, given by its path: checked as when given by its name
            _check_bundled(entry, path)
        resolved = ResolvedReference(path, path.name, None, None, "local")
    elif parsed.kind == "url":
        resolved = _from_url(parsed.target, cache_dir, offline)
    else:
        entry = get_entry(parsed.target, cache_dir) if parsed.kind == "name" else find_entry(parsed.target, cache_dir)
        with hub_progress(progress):
            resolved = _from_index_or_hub(parsed.target, entry, revision, cache_dir, offline, token)
    check_format(resolved.path, f"reference {resolved.name}")
    return resolved


def _from_index_or_hub(target: str, entry: ReferenceEntry | None, revision, cache_dir, offline, token):
    if entry is None:
        return _from_hub(target, target, revision, {}, cache_dir, offline, token)
    if entry.bundled and revision in (None, entry.revision):
        folder = bundled_folder(entry)
        _check_bundled(entry, folder)
        return ResolvedReference(folder, entry.name, entry.repo_id, entry.revision, "bundled")
    if revision is None and entry.revision is None:
        logger.warning("the index pins no revision for %s yet; using the latest on %s (unverified)",
                       entry.name, entry.repo_id)
    pinned = revision is None or revision == entry.revision
    return _from_hub(entry.name, entry.repo_id, revision or entry.revision, entry.files if pinned else {},
                     cache_dir, offline, token)


def _from_hub(name, repo_id, revision, files, cache_dir, offline, token) -> ResolvedReference:
    cache = hub_cache_dir(cache_dir)
    label = f"{name}@{revision or 'main'}"
    kwargs = dict(repo_id=repo_id, revision=revision, cache_dir=cache, token=token,
                  allow_patterns=sorted(set(REFERENCE_FILES) | set(files)))
    folder = _cached_snapshot(kwargs) if offline or _is_commit(revision) else None
    if folder is None and offline:
        raise ItClustError(f"reference {label} is not in the cache at {cache}; run `itclust-hub download {name}` "
                           f"on a machine with internet, or {_offline_hint()}")
    if folder is None:
        folder = _download(name, label, kwargs)
    bad = _mismatched_files(folder, files)
    if bad:
        _evict(folder, bad)
        raise ItClustError(f"{label}: {', '.join(bad)} did not match the index checksum and was removed from the "
                           "cache; run again, and report it if it repeats")
    return ResolvedReference(folder, name, repo_id, folder.name, "hub")


def _cached_snapshot(kwargs: dict) -> Path | None:
    try:
        return Path(snapshot_download(**kwargs, local_files_only=True))
    except LocalEntryNotFoundError:
        return None


def _download(name: str, label: str, kwargs: dict) -> Path:
    endpoint, repo_id = hub_endpoint(), kwargs["repo_id"]
    api = HfApi(endpoint=endpoint, token=kwargs["token"])
    try:
        remote_commit(api, repo_id, kwargs["revision"])
    except RepositoryNotFoundError:
        raise ItClustError(f"no repository {repo_id} on {endpoint}: check the name (a private repo needs token=, "
                           "a local folder must exist)") from None
    except RevisionNotFoundError:
        raise ItClustError(f"{repo_id} has no revision {kwargs['revision']!r}; "
                           "check the branch, tag or commit") from None
    except (*NETWORK_ERRORS, HfHubHTTPError) as err:
        if isinstance(err, HfHubHTTPError) and err.response.status_code in (401, 403):
            raise ItClustError(f"{endpoint} refused access to {repo_id}; set HF_TOKEN or run `hf auth login`") from None
        cached = _cached_snapshot(kwargs)
        if cached is None:
            raise ItClustError(f"cannot reach {endpoint} to download {label} ({network_reason(err)}) and it is not in "
                               "the cache; check your connection and HF_ENDPOINT, or run "
                               f"`itclust-hub download {name}` on a machine with internet") from None
        logger.warning("cannot reach %s (%s); using the cached copy of %s", endpoint, network_reason(err), label)
        return cached
    try:
        return Path(snapshot_download(**kwargs, endpoint=endpoint, etag_timeout=network_timeout()))
    except (*NETWORK_ERRORS, OSError) as err:
        raise ItClustError(f"download of {label} was interrupted ({network_reason(err)}); run the same command again "
                           "to resume") from None


def _check_bundled(entry: ReferenceEntry, folder: Path) -> None:
    """Refuse the bundled copy ``folder`` of ``entry`` when a file differs from the index's SHA-256."""
    bad = _mismatched_files(folder, entry.files)
    if bad:
        raise ItClustError(f"the bundled reference {entry.name} is damaged: {', '.join(str(folder / n) for n in bad)} "
                           "does not match the index checksum; reinstall itclust-hub")


def _mismatched_files(folder: Path, files: dict[str, str]) -> list[str]:
    """Names in ``files`` (name -> SHA-256) that are missing from ``folder`` or differ."""
    return [name for name, want in sorted(files.items())
            if not (folder / name).is_file() or sha256(folder / name) != want]


def _evict(snapshot: Path, names: list[str]) -> None:
    """Delete files of a cached snapshot, blob and link both, so the next download fetches them again."""
    for name in names:
        link = snapshot / name
        if link.is_symlink():
            link.resolve().unlink(missing_ok=True)
        link.unlink(missing_ok=True)


def _url_folder(url: str, cache_dir) -> Path:
    return hub_cache_dir(cache_dir) / URL_CACHE / hashlib.sha256(url.encode()).hexdigest()[:16]


def _fetch(url: str, dest: Path) -> None:
    """Copy one remote file to ``dest``; http(s) through urllib, other schemes through fsspec."""
    if url.startswith(("http://", "https://")):
        with urllib.request.urlopen(url, timeout=network_timeout()) as response, open(dest, "wb") as out:
            shutil.copyfileobj(response, out)
            expected = response.headers.get("Content-Length")
        if expected is not None and dest.stat().st_size != int(expected):
            raise ConnectionError(f"got {dest.stat().st_size} of {expected} bytes")
    else:
        with fsspec.open(url, "rb") as source, open(dest, "wb") as out:
            shutil.copyfileobj(source, out)


def _from_url(url: str, cache_dir, offline: bool) -> ResolvedReference:
    """A reference served as plain files under ``url``. The files land in a staging folder that replaces the
    cached copy whole, so a failed fetch never leaves a mix of old and new files."""
    folder = _url_folder(url, cache_dir)
    cached = folder if all((folder / name).is_file() for name in REFERENCE_FILES) else None
    if offline:
        if cached is None:
            raise ItClustError(f"{url} is not in the cache at {folder.parent}; fetch it once with internet, "
                               f"or {_offline_hint()}")
        return ResolvedReference(cached, url, None, None, "url")
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".incoming-", dir=folder.parent))
    try:
        for name in REFERENCE_FILES:
            _fetch(f"{url.rstrip('/')}/{name}", staging / name)
        (staging / _SOURCE_URL_FILE).write_text(url)
        old = folder.with_name(f".old-{folder.name}-{os.getpid()}")
        if folder.exists():
            os.replace(folder, old)
        os.replace(staging, folder)
        shutil.rmtree(old, ignore_errors=True)
    except (OSError, ValueError, ImportError, http.client.HTTPException) as err:
        reason = f"HTTP {err.code}" if isinstance(err, urllib.error.HTTPError) else network_reason(err)
        if cached is None:
            raise ItClustError(f"cannot fetch the reference at {url} ({reason}); it must serve "
                               f"{', '.join(REFERENCE_FILES)}") from None
        logger.warning("cannot fetch %s (%s); using the cached copy", url, reason)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return ResolvedReference(folder, url, None, None, "url")


def _is_reference_repo(repo, index_repos: set[str]) -> bool:
    if repo.repo_id in index_repos:
        return True
    marker = {"config.json", "genes.json", "labels.json"}
    return any(marker <= {f.file_name for f in rev.files} for rev in repo.revisions)


def _cached_hub_references(cache_dir):
    """(repo, revision, entry name) for every cached revision of a reference repo; other repos are ignored."""
    try:
        info = scan_cache_dir(hub_cache_dir(cache_dir))
    except CacheNotFound:
        return []
    by_repo = {e.repo_id: e.name for e in load_index(cache_dir=cache_dir).values()}
    return [(repo, rev, by_repo.get(repo.repo_id, repo.repo_id))
            for repo in info.repos if repo.repo_type == "model" and _is_reference_repo(repo, set(by_repo))
            for rev in repo.revisions]


def _cached_url_folders(cache_dir) -> list[Path]:
    root = hub_cache_dir(cache_dir) / URL_CACHE
    return sorted(p for p in root.glob("*") if (p / _SOURCE_URL_FILE).is_file()) if root.is_dir() else []


def _folder_size(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def cached_references(cache_dir=None) -> pd.DataFrame:
    """Table of references in the local cache: name, repo_id, revision, refs, size (bytes), path, source.

    Only reference repos are listed (those the index names, or holding config/genes/labels JSON); other
    libraries' models in the same Hub cache are left out. Downloads from URLs have source "url".
    """
    columns = ["name", "repo_id", "revision", "refs", "size", "path", "source"]
    rows = [{"name": name, "repo_id": repo.repo_id, "revision": rev.commit_hash, "refs": ",".join(sorted(rev.refs)),
             "size": rev.size_on_disk, "path": str(rev.snapshot_path), "source": "hub"}
            for repo, rev, name in _cached_hub_references(cache_dir)]
    rows += [{"name": (p / _SOURCE_URL_FILE).read_text(), "repo_id": None, "revision": None, "refs": "",
              "size": _folder_size(p), "path": str(p), "source": "url"} for p in _cached_url_folders(cache_dir)]
    return pd.DataFrame(rows, columns=columns)


def clear_cache(name: str | None = None, cache_dir=None) -> int:
    """Delete cached references and return the bytes freed.

    ``name`` None clears every cached reference (never other libraries' models); otherwise it is a
    registry name, "org/repo" or a URL, and "@rev" limits the deletion to that commit or branch.
    """
    repo_id = url = revision = None
    if name is not None:
        parsed = parse_reference(name)
        if parsed.kind == "local":
            raise ItClustError(f"{name} is a local folder, not a cached reference; delete it yourself if you mean to")
        revision = parsed.revision
        if parsed.kind == "url":
            url = parsed.target
        else:
            repo_id = get_entry(parsed.target, cache_dir).repo_id if parsed.kind == "name" else parsed.target
    hashes = [rev.commit_hash for repo, rev, _ in _cached_hub_references(cache_dir)
              if url is None and repo_id in (None, repo.repo_id) and revision in (None, rev.commit_hash, *rev.refs)]
    freed = 0
    if hashes:
        strategy = scan_cache_dir(hub_cache_dir(cache_dir)).delete_revisions(*hashes)
        freed += strategy.expected_freed_size
        strategy.execute()
    for folder in _cached_url_folders(cache_dir):
        if repo_id is None and url in (None, (folder / _SOURCE_URL_FILE).read_text()):
            freed += _folder_size(folder)
            shutil.rmtree(folder)
    return freed


def _index_with(api: HfApi, index_repo: str, entry: ReferenceEntry) -> bytes:
    """The index repository's index.json with ``entry`` added or replaced."""
    try:
        path = hf_hub_download(index_repo, INDEX_FILENAME, repo_type=INDEX_REPO_TYPE, endpoint=api.endpoint,
                               token=api.token, cache_dir=hub_cache_dir(), etag_timeout=network_timeout())
        index = json.loads(Path(path).read_text())
    except RemoteEntryNotFoundError:
        index = {"index_version": INDEX_VERSION, "references": {}}
    except ValueError:
        index = None
    if not isinstance(index, dict) or not isinstance(index.get("references"), dict):
        raise ItClustError(f"index.json on {index_repo} is malformed; ask its maintainers to fix it before pushing")
    current = index["references"].get(entry.name)
    if current is not None and current.get("repo_id") != entry.repo_id:
        raise ItClustError(f"the name {entry.name} already belongs to {current.get('repo_id')} in the index; "
                           "rename your reference or push to that repo")
    index["references"][entry.name] = entry.to_dict()
    return (json.dumps(index, indent=2) + "\n").encode()


def push_reference(folder, repo_id: str, token: str | None = None, revision: str | None = None,
                   index_repo: str = INDEX_REPO_ID, open_pr: bool = True) -> PushedReference:
    """Upload a reference folder to ``repo_id`` and propose its index entry on ``index_repo``.

    Args:
        folder: a folder written by ``save_pretrained`` (config.json, model.safetensors, genes.json,
            labels.json, README.md).
        repo_id: "org/name" model repo; created if missing.
        token: Hugging Face token with write access (default: ``HF_TOKEN`` or the logged-in one).
        revision: branch to upload to (default: main).
        index_repo: dataset repo holding index.json.
        open_pr: open a pull request on the index (default) rather than committing to it directly.

    The index entry pins the new commit and the SHA-256 of every file.
    """
    token = token or get_token()
    if not token:
        raise ItClustError("pushing needs a Hugging Face token with write access: set HF_TOKEN or run `hf auth login`")
    folder = Path(folder)
    config = check_format(folder, str(folder))
    missing = [name for name in REFERENCE_FILES if not (folder / name).is_file()]
    if missing:
        raise ItClustError(f"{folder} lacks {', '.join(missing)}; write it with save_pretrained before pushing")
    if not is_reference_name(config.get("name")):
        raise ItClustError(f"{folder}: config.json name {config.get('name')!r} is not a valid reference name "
                           "(letters, digits, '-', '_', '.'); re-save it with another name")
    endpoint = hub_endpoint()
    api = HfApi(endpoint=endpoint, token=token)
    try:
        remote_commit(api, index_repo, None, INDEX_REPO_TYPE)
        api.create_repo(repo_id, exist_ok=True)
        commit = api.upload_folder(repo_id=repo_id, folder_path=folder, revision=revision,
                                   allow_patterns=list(REFERENCE_FILES),
                                   commit_message=f"Upload reference {config['name']}")
        entry = ReferenceEntry.from_config(config, repo_id, commit.oid, folder)
        index_file = CommitOperationAdd(INDEX_FILENAME, _index_with(api, index_repo, entry))
        proposal = api.create_commit(index_repo, repo_type=INDEX_REPO_TYPE, create_pr=open_pr, operations=[index_file],
                                     commit_message=f"Add {entry.name} ({repo_id}@{commit.oid[:7]})")
    except RepositoryNotFoundError:
        raise ItClustError(f"{endpoint} has no index repository {index_repo}; "
                           "pass index_repo= or check HF_ENDPOINT") from None
    except (*NETWORK_ERRORS, HfHubHTTPError) as err:
        if isinstance(err, HfHubHTTPError) and err.response.status_code in (401, 403):
            raise ItClustError(f"{endpoint} refused the token for {repo_id}; use a token with write access "
                               "(HF_TOKEN)") from None
        raise ItClustError(f"push to {endpoint} failed ({network_reason(err)}); check your connection and run it "
                           "again") from None
    return PushedReference(repo_id, commit.oid, entry, proposal.pr_url or proposal.commit_url)


def _fetch_hub_index(cache_dir) -> str:
    """Download the newest index from the index repository into the Hub cache; returns its path."""
    if is_offline():
        raise ItClustError("cannot refresh the reference index while HF_HUB_OFFLINE is set; unset it or list "
                           "without refresh")
    api = HfApi(endpoint=hub_endpoint())
    try:
        remote_commit(api, INDEX_REPO_ID, None, INDEX_REPO_TYPE)
        return hf_hub_download(INDEX_REPO_ID, INDEX_FILENAME, repo_type=INDEX_REPO_TYPE,
                               cache_dir=hub_cache_dir(cache_dir), endpoint=hub_endpoint(),
                               etag_timeout=network_timeout())
    except RepositoryNotFoundError:
        raise ItClustError(f"{hub_endpoint()} has no index repository {INDEX_REPO_ID}; list without refresh") from None
    except (*NETWORK_ERRORS, HfHubHTTPError) as err:
        raise ItClustError(f"cannot fetch the reference index from {hub_endpoint()} ({network_reason(err)}); "
                           "check your connection or list without refresh") from None


def _community_entries(known_repos: set[str]) -> list[ReferenceEntry]:
    if is_offline():
        raise ItClustError("cannot search the Hub for community references while HF_HUB_OFFLINE is set; unset it")
    api = HfApi(endpoint=hub_endpoint())
    try:
        remote_commit(api, INDEX_REPO_ID, None, INDEX_REPO_TYPE)
        models = list(api.list_models(filter=COMMUNITY_TAG))
    except (*NETWORK_ERRORS, HfHubHTTPError) as err:
        raise ItClustError(f"cannot search {hub_endpoint()} for community references ({network_reason(err)}); "
                           "check your connection") from None
    return [ReferenceEntry(name=m.id, repo_id=m.id, revision=m.sha) for m in models if m.id not in known_repos]


def list_references(organism: str | None = None, tissue: str | None = None, name: str | None = None,
                    refresh: bool = False, include_community: bool = False, cache_dir=None) -> pd.DataFrame:
    """Table of available references, one row each.

    Parameters
    ----------
    organism
        Keep rows of this organism, any usual spelling (``"human"``, ``"Homo sapiens"``, ``"hs"``, 9606).
    tissue
        Keep rows of this tissue (case-insensitive), e.g. ``"pancreas"``.
    name
        Keep names matching this fnmatch wildcard, e.g. ``"pancreas-*"``.
    refresh
        Fetch the newest index from the Hub first (kept in the cache for later calls).
    include_community
        Add Hub repos tagged ``"itclust-hub"`` that the index does not list (unverified).
    cache_dir
        Hub cache folder used for the ``cached`` column (default: ``HF_HOME``).

    Returns
    -------
    pandas.DataFrame
        Columns: name, organism, tissue, n_cells, n_cell_types, n_genes, version, license, repo_id, revision,
        bundled, cached (usable offline), source (``"index"`` or ``"community"``), description.
    """
    index = load_index(cache_dir, _fetch_hub_index(cache_dir) if refresh else None)
    entries = [(e, "index") for e in index.values()]
    if include_community:
        known = {e.repo_id for e in index.values()}
        entries += [(e, "community") for e in _community_entries(known)]
    columns = ["name", "organism", "tissue", "n_cells", "n_cell_types", "n_genes", "version", "license",
               "repo_id", "revision", "bundled", "cached", "source", "description"]
    rows = []
    wanted = None if organism is None else normalize_organism(organism, strict=False)
    for entry, source in entries:
        if wanted and normalize_organism(entry.organism or "", strict=False) != wanted:
            continue
        if tissue and (entry.tissue or "").lower() != tissue.lower():
            continue
        if name and not fnmatch.fnmatchcase(entry.name.lower(), name.lower()):
            continue
        row = asdict(entry)
        row.update(cached=is_cached(entry, cache_dir), source=source)
        rows.append({c: row[c] for c in columns})
    return pd.DataFrame(rows, columns=columns)
