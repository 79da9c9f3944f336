"""Where latts keeps what it builds or converts once per machine (``$XDG_CACHE_HOME/latts``)."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir(*parts: str) -> Path:
    """``~/.cache/latts/<parts>`` (or under ``$XDG_CACHE_HOME``): converted models, kernels, plans, tunings."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base, "latts", *parts)
