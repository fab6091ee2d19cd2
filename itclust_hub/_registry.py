"""The reference index: which references exist, where they live and what they hold, looked up without the
network.

The index ships with the package (``references/index.json``): it maps a short name to a Hub repo, a
pinned commit and the SHA-256 of every file; a newer copy fetched from the index repository (by
:func:`itclust_hub._hub.list_references` with ``refresh=True``) is kept in the Hub cache and read from
there. Hub settings (``HF_HOME``, ``HF_HUB_CACHE``) are read at call time.
"""

from __future__ import annotations

import difflib
import json
import os
import re
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from huggingface_hub import constants, try_to_load_from_cache

from ._artifact import REFERENCE_FILES, sha256
from ._errors import ItClustError

INDEX_REPO_ID = "itclust-hub/index"
INDEX_REPO_TYPE = "dataset"
INDEX_FILENAME = "index.json"
INDEX_VERSION = 1
REFERENCES_DIR = Path(__file__).parent / "references"

# Hub rules: letters, digits, "-", "_", "."; no "--" or ".."; no "-" or "." at either end.
_NAME = r"(?!.*(?:--|\.\.))[A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9])?"
_NAME_RE = re.compile(_NAME)
_REPO_RE = re.compile(f"{_NAME}/{_NAME}")
_REVISION_RE = re.compile(r"[^\s@]+")
_SPEC_HELP = "pass a registry name (see `itclust-hub list`), org/repo[@revision], a folder or a URL"


@dataclass
class ReferenceEntry:
    """One row of the index: a reference's Hub location, pinned commit, checksums and summary."""

    name: str
    repo_id: str
    revision: str | None = None
    organism: str | None = None
    tissue: str | None = None
    n_cells: int | None = None
    n_cell_types: int | None = None
    n_genes: int | None = None
    version: str | None = None
    license: str | None = None
    citation: str | None = None
    description: str | None = None
    files: dict[str, str] = field(default_factory=dict)
    bundled: bool = False

    @classmethod
    def from_dict(cls, name: str, data) -> "ReferenceEntry":
        """Build an entry from its JSON form; keys this client does not know are ignored."""
        if not isinstance(data, dict) or not isinstance(data.get("repo_id"), str):
            raise ItClustError(f"index entry {name!r} has no repo_id; reinstall itclust-hub or run list with refresh")
        known = {f.name for f in fields(cls)} - {"name"}
        return cls(name=name, **{k: v for k, v in data.items() if k in known})

    @classmethod
    def from_config(cls, config: dict, repo_id: str, revision: str | None, folder: Path) -> "ReferenceEntry":
        """The entry of the reference saved in ``folder`` (whose ``config.json`` holds ``config``) at
        ``repo_id`` and ``revision``: its summary and the SHA-256 of its files."""
        arch, meta = config.get("architecture", {}), config.get("metadata", {})
        return cls(
            name=config["name"], repo_id=repo_id, revision=revision,
            organism=config.get("organism"), tissue=config.get("tissue"), n_cells=config.get("n_cells"),
            n_cell_types=arch.get("n_types"), n_genes=arch.get("n_genes"), version=config.get("version"),
            license=meta.get("license"), citation=meta.get("citation"), description=meta.get("description"),
            files={name: sha256(Path(folder) / name) for name in REFERENCE_FILES},
        )

    def to_dict(self) -> dict:
        """The JSON form stored in ``index.json`` (the name is the key, not a field)."""
        data = asdict(self)
        del data["name"]
        return data


@dataclass(frozen=True)
class ReferenceSpec:
    """A parsed reference argument: ``kind`` is "name", "repo", "local" or "url"."""

    kind: str
    target: str
    revision: str | None = None


def hub_cache_dir(cache_dir=None) -> Path:
    """The Hub cache folder: ``cache_dir``, else ``HF_HUB_CACHE``, else ``$HF_HOME/hub``, as set now."""
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "hub"
    return Path(constants.HF_HUB_CACHE)


def parse_reference(spec) -> ReferenceSpec:
    """Parse "name", "name@rev", "org/repo", "org/repo@rev", a local folder or a URL ("scheme://...").

    An existing folder wins over a name. Raises ItClustError for anything else.
    """
    text = os.fspath(spec).strip() if isinstance(spec, (str, os.PathLike)) else ""
    if not text:
        raise ItClustError(f"no reference given: {_SPEC_HELP}")
    if "://" in text:
        return ReferenceSpec("url", text)
    if Path(text).expanduser().is_dir():
        return ReferenceSpec("local", str(Path(text).expanduser()))
    base, at, revision = text.partition("@")
    if at and not _REVISION_RE.fullmatch(revision):
        raise ItClustError(f"{text!r} has no valid revision after '@'; write {base or 'NAME'}@<branch, tag or commit> "
                           "or drop the '@'")
    if _NAME_RE.fullmatch(base):
        return ReferenceSpec("name", base, revision or None)
    if _REPO_RE.fullmatch(base):
        return ReferenceSpec("repo", base, revision or None)
    if os.sep in text or text.startswith((".", "~")):
        raise ItClustError(f"folder {text} does not exist; check the path")
    raise ItClustError(f"cannot read {text!r} as a reference: {_SPEC_HELP}")


def is_reference_name(name: str) -> bool:
    """Whether ``name`` can be a registry name (what ``parse_reference`` reads as a name)."""
    return isinstance(name, str) and _NAME_RE.fullmatch(name) is not None


def _read_index(path: Path, where: str) -> dict[str, ReferenceEntry]:
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError, UnicodeDecodeError) as err:
        raise ItClustError(f"cannot read the reference index {where} ({type(err).__name__}); "
                           "reinstall itclust-hub") from None
    version = data.get("index_version") if isinstance(data, dict) else None
    if not isinstance(version, int) or not isinstance(data.get("references"), dict):
        raise ItClustError(f"the reference index {where} is malformed; reinstall itclust-hub")
    if version > INDEX_VERSION:
        raise ItClustError(f"the reference index {where} needs a newer itclust-hub; run pip install -U itclust-hub")
    return {name: ReferenceEntry.from_dict(name, entry) for name, entry in data["references"].items()}


def load_index(cache_dir=None, hub_copy: str | None = None) -> dict[str, ReferenceEntry]:
    """Name -> entry: the packaged index, overlaid with the Hub's index ``hub_copy`` (a file just fetched;
    default: the copy fetched before, if the Hub cache holds one). Nothing goes to the network.

    An entry from the Hub counts as bundled only when it pins the same commit as the packaged copy.
    """
    index = _read_index(REFERENCES_DIR / INDEX_FILENAME, "bundled with itclust-hub")
    if hub_copy is None:
        hub_copy = try_to_load_from_cache(INDEX_REPO_ID, INDEX_FILENAME, cache_dir=hub_cache_dir(cache_dir),
                                          repo_type=INDEX_REPO_TYPE)
    if isinstance(hub_copy, str):
        for name, entry in _read_index(Path(hub_copy), f"from {INDEX_REPO_ID}").items():
            packaged = index.get(name)
            entry.bundled = packaged is not None and packaged.bundled and packaged.revision == entry.revision
            index[name] = entry
    return index


def get_entry(name: str, cache_dir=None) -> ReferenceEntry:
    """The index entry for ``name``; an unknown name raises ItClustError suggesting close names."""
    index = load_index(cache_dir=cache_dir)
    if name in index:
        return index[name]
    close = difflib.get_close_matches(name, list(index), n=3, cutoff=0.6)
    hint = f"; did you mean {' or '.join(close)}?" if close else ""
    raise ItClustError(f"unknown reference {name!r}{hint} (run `itclust-hub list` to see them all)")


def find_entry(repo_id: str, cache_dir=None) -> ReferenceEntry | None:
    """The index entry whose Hub repo is ``repo_id``, if any."""
    return next((e for e in load_index(cache_dir=cache_dir).values() if e.repo_id == repo_id), None)


def bundled_folder(entry: ReferenceEntry) -> Path:
    """Where a bundled reference lives inside the installed package."""
    return REFERENCES_DIR / entry.name


def bundled_entry(folder: Path) -> ReferenceEntry | None:
    """The index entry whose bundled copy is the (resolved) ``folder``, or None when it is no bundled copy."""
    if folder.parent != REFERENCES_DIR.resolve():
        return None
    entry = load_index().get(folder.name)
    return entry if entry is not None and entry.bundled and bundled_folder(entry).resolve() == folder else None


def is_cached(entry: ReferenceEntry, cache_dir=None) -> bool:
    """Whether the reference of ``entry`` is usable offline: bundled, or every file in the Hub cache."""
    if entry.bundled and bundled_folder(entry).is_dir():
        return True
    cache = hub_cache_dir(cache_dir)
    return all(isinstance(try_to_load_from_cache(entry.repo_id, name, cache_dir=cache, revision=entry.revision), str)
               for name in entry.files or REFERENCE_FILES)
