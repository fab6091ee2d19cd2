"""Where a command writes, checked before any work starts: every output can be written, no two outputs
share a path, no output is an input, nothing is overwritten without ``force``, and ``force`` replaces only
what itclust-hub itself writes. A refused command therefore leaves nothing behind. Files are then written
atomically (:class:`atomic_path`)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from ._errors import ItClustError


def _absolute(path) -> Path:
    return Path(path).expanduser().resolve()


def _check_writable(path, folder: Path) -> None:
    """Refuse ``path`` when ``folder`` (where it goes) cannot be made or written: its nearest existing
    ancestor must be a folder we may write in."""
    existing = next(p for p in (folder, *folder.parents) if p.exists())
    if not existing.is_dir():
        raise ItClustError(f"cannot write {path}: {existing} is a file, not a folder; choose another path")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ItClustError(f"cannot write {path}: no permission to write in {existing}; choose another path")


def _refuse_inputs(path, full: Path, inputs) -> None:
    for given in inputs:
        if full == _absolute(given) or full in _absolute(given).parents:
            raise ItClustError(f"{path} is or holds the input {given}; write to another path "
                               "(force=True never replaces an input)")


def check_output_files(paths, *, force: bool = False, inputs=()) -> None:
    """Refuse, in one line, output files that cannot all be written as asked: one that is a folder, whose
    folder is a file or not writable, that is also an input (``inputs``: files or folders read), that is
    given twice or lies inside another output, or that exists (unless ``force``)."""
    paths = [Path(p) for p in paths]
    full = [_absolute(p) for p in paths]
    for i, (path, target) in enumerate(zip(paths, full)):
        _refuse_inputs(path, target, inputs)
        clash = next((other for other, o in zip(paths[:i], full[:i]) if o == target or o in target.parents
                      or target in o.parents), None)
        if clash is not None:
            raise ItClustError(f"{clash} and {path} are the same path or one holds the other; give each output "
                               "its own path")
        if target.is_dir():
            raise ItClustError(f"{path} is a folder; give the path of a file to write")
        _check_writable(path, target.parent)
    existing = [path for path, target in zip(paths, full) if target.exists()]
    if existing and not force:
        more = f" (and {len(existing) - 1} more)" if len(existing) > 1 else ""
        raise ItClustError(f"{existing[0]}{more} exists; pass force=True to overwrite")


def check_output_folder(folder, own_files, *, force: bool = False, inputs=()) -> Path:
    """Refuse, in one line, a folder that cannot take the files ``own_files`` as asked: a file, an input or a
    folder holding one, a folder holding anything but ``own_files``, a non-empty one without ``force``, or
    one that cannot be written. Returns the folder as an absolute path."""
    full = _absolute(folder)
    if full.exists() and not full.is_dir():
        raise ItClustError(f"{folder} is a file; give a folder to write to")
    _refuse_inputs(folder, full, inputs)
    if full.is_dir():
        present = sorted(p.name for p in full.iterdir())
        others = [name for name in present if name not in own_files or not (full / name).is_file()]
        if others:
            listed = ", ".join(others[:3]) + (f" and {len(others) - 3} more" if len(others) > 3 else "")
            raise ItClustError(f"{folder} holds other files ({listed}); write to a new or empty folder "
                               f"(force=True replaces only {', '.join(own_files)})")
        if present and not force:
            raise ItClustError(f"{folder} already exists and is not empty; pass force=True to replace its "
                               f"{', '.join(present)}")
        _check_writable(folder, full)
    else:
        _check_writable(folder, full.parent)
    return full


def current_umask() -> int:
    """The process's file-creation mask (reading it means setting it: it is set back at once)."""
    umask = os.umask(0)
    os.umask(umask)
    return umask


class atomic_path:
    """Context manager giving a temporary path that replaces ``path`` only if the block succeeds."""

    def __init__(self, path):
        self.path = Path(path)

    def __enter__(self) -> Path:
        fd, name = tempfile.mkstemp(prefix=f".{self.path.name}.", suffix=self.path.suffix, dir=self.path.parent)
        os.close(fd)
        self.tmp = Path(name)
        return self.tmp

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            os.chmod(self.tmp, 0o666 & ~current_umask())
            os.replace(self.tmp, self.path)
        else:
            self.tmp.unlink(missing_ok=True)
        return False
