"""The on-disk cache of what the attacks train (GAN priors, LOMMA surrogates; the evaluation model
reads through ``read_weights``): content keys, weights-only loading, atomic writes.

Entries live in ``cache_dir()`` (``$VEIL_CACHE_DIR`` or ``~/.cache/veil``) as
``<prefix>-<key>.pt``; a key hashes everything the entry depends on, so a changed input is a new
entry and nothing is ever invalidated by hand. Loading is weights-only (no pickle): a cache file
can hold tensors, numbers, strings and containers of them, never code.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from veil.recognition.io import cache_dir, save_cache_entry

CACHE_VERSION = "1"  # hashed into every key: bumping it retires every GAN and LOMMA entry at once


def tensor_fingerprint(t: torch.Tensor) -> str:
    """A short content hash of a tensor (dtype, shape and bytes), for cache keys. Flattened first:
    a 0-d tensor (BatchNorm's ``num_batches_tracked``) cannot be viewed as bytes; the bytes, and so
    every key of an n-d tensor, are unchanged."""
    h = hashlib.sha1(f"{t.dtype}:{tuple(t.shape)}".encode())
    h.update(t.detach().cpu().reshape(-1).contiguous().view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()[:16]


def model_fingerprint(model: nn.Module) -> str:
    """A short content hash of a model's state dict (names, shapes, values): the cache key of
    everything trained against a given target."""
    h = hashlib.sha1(type(model).__name__.encode())
    for k, v in model.state_dict().items():
        h.update(k.encode())
        h.update(tensor_fingerprint(v).encode())
    return h.hexdigest()[:16]


def cache_key(*parts: Any) -> str:
    """Hash JSON-able parts (configs as dicts) into a 16-hex-digit cache key."""
    return hashlib.sha1(json.dumps([CACHE_VERSION, *parts], sort_keys=True, default=str).encode()).hexdigest()[:16]


def cache_path(prefix: str, key: str) -> Path:
    """Where the cache entry ``prefix`` (e.g. ``gan-gmi``, ``lomma``) with this key lives."""
    return cache_dir() / f"{prefix}-{key}.pt"


def read_weights(path: str | os.PathLike) -> Any:
    """Load a file written by ``torch.save`` onto the CPU, weights-only (raises if damaged)."""
    return torch.load(path, map_location="cpu", weights_only=True)


def load_cached(prefix: str, key: str) -> dict | None:
    """Read a cache entry written by ``save_cached`` (``None`` if absent or damaged)."""
    path = cache_path(prefix, key)
    if not path.is_file():
        return None
    try:
        return read_weights(path)
    except Exception as err:  # a damaged entry is rebuilt, never trusted
        warnings.warn(f"ignoring damaged cache file {path}: {err}", stacklevel=2)
        return None


def save_cached(prefix: str, key: str, blob: dict) -> None:
    """Write a cache entry atomically; a failure to write only warns (the result is still used)."""
    save_cache_entry(blob, cache_path(prefix, key), prefix)
