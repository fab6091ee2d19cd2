"""Progress bars that stay quiet when stderr is not a terminal or when asked."""

from __future__ import annotations

import sys

from tqdm.auto import tqdm


def progress_bar(total: int | None = None, enabled: bool | None = None, **kwargs) -> tqdm:
    """A tqdm bar; ``enabled=None`` shows it only on an interactive terminal."""
    if enabled is None:
        enabled = sys.stderr.isatty()
    return tqdm(total=total, disable=not enabled, leave=False, **kwargs)
