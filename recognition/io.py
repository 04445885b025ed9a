"""Small file helpers shared by the data cache and the trainer's checkpoints."""

from __future__ import annotations

import os
import tempfile
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """A temporary file beside ``path`` to write; on success it is synced and renamed into place,
    on any error removed, so a crash mid-write never leaves a truncated file at ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> Path:
    """Write ``obj`` with ``torch.save`` to a temporary file beside ``path``, then rename it
    into place, so a crash mid-write never leaves a truncated checkpoint or cache entry."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def save_cache_entry(obj: Any, path: str | os.PathLike, what: str) -> bool:
    """Write a cache entry atomically; a cache that cannot be written (full disk: torch's
    ``RuntimeError``; read-only or missing folder: ``OSError``) only warns, since the result is
    still in memory and the run goes on. Returns whether it was written."""
    try:
        atomic_torch_save(obj, path)
        return True
    except (OSError, RuntimeError) as err:
        warnings.warn(f"could not write the {what} cache {path} ({str(err).splitlines()[0] if str(err) else err!r}); "
                      "going on without it", stacklevel=2)
        return False


def cache_dir() -> Path:
    """Where preprocessed datasets are cached: ``$VEIL_CACHE_DIR`` or ``~/.cache/veil``."""
    root = os.environ.get("VEIL_CACHE_DIR")
    return Path(root) if root else Path.home() / ".cache" / "veil"
