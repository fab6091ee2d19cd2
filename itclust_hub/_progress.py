"""Progress bars that stay quiet when stderr is not a terminal or when asked, ours and huggingface_hub's."""

from __future__ import annotations

import sys
from contextlib import nullcontext

from huggingface_hub import constants
from huggingface_hub.utils import are_progress_bars_disabled, disable_progress_bars
from tqdm.auto import tqdm


def shows_progress(enabled: bool | None) -> bool:
    """Whether bars show: ``enabled``, or with ``None`` only on an interactive terminal."""
    return sys.stderr.isatty() if enabled is None else bool(enabled)


def progress_bar(total: int | None = None, enabled: bool | None = None, **kwargs) -> tqdm:
    """A tqdm bar; ``enabled=None`` shows it only on an interactive terminal."""
    return tqdm(total=total, disable=not shows_progress(enabled), leave=False, **kwargs)


def hub_progress(enabled: bool | None):
    """A context in which huggingface_hub's download bars ("Fetching 5 files") follow ``enabled`` as ours do;
    a setting of ``HF_HUB_DISABLE_PROGRESS_BARS`` wins."""
    if shows_progress(enabled) or constants.HF_HUB_DISABLE_PROGRESS_BARS is not None \
            or are_progress_bars_disabled("huggingface_hub"):
        return nullcontext()
    return disable_progress_bars("huggingface_hub")
