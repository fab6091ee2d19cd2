"""The reference format version this client reads and writes, and the check that refuses a newer one."""

from __future__ import annotations

import json
from pathlib import Path

from ._errors import ItClustError

# 2 adds context genes (genes.json context lists, context_* tensors); 3 adds each gene's share of a cell's
# expression (gene_share, context_share); 1 and 2 are still read
FORMAT_VERSION = 3


def check_format(folder: Path, what: str) -> dict:
    """Read ``folder/config.json`` and refuse a reference whose ``format_version`` this client cannot read.

    ``what`` names the reference in the error message. Returns the parsed config.
    """
    path = Path(folder) / "config.json"
    if not path.is_file():
        raise ItClustError(f"{what} is not an itclust-hub reference: {path} does not exist")
    try:
        config = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError):
        raise ItClustError(f"{path} is not valid JSON; re-download or re-save {what}") from None
    version = config.get("format_version") if isinstance(config, dict) else None
    if not isinstance(version, int) or isinstance(version, bool):
        raise ItClustError(f"{path} has no integer format_version; {what} is damaged or not an itclust-hub reference")
    if version > FORMAT_VERSION:
        raise ItClustError(
            f"{what} needs reference format version {version} but this itclust-hub reads up to "
            f"{FORMAT_VERSION}; run pip install -U itclust-hub"
        )
    return config
