"""Schedule files and the ``ScheduleAugmenter`` that applies one in any training loop.

A schedule file is TOML (data only: nothing in it executes), written atomically::

    format = "veil-schedule-1"
    mode = "complex"
    fill = "mean"
    [[phase]]              # strong low-band mixing for the first third of the run
    until = 0.333333
    k = 4
    alpha = 1.0
    radius = 0.2
    high_band = false
    erase_p = 0.5
    erase_area = 0.26
    erase_aspect = 1.817
    label_follow = 0.0
    [[phase]]              # then a setting drawn per batch from a box
    until = 1.0
    box = { k = [1, 6], alpha = [0.2, 5.0], radius = [0.0125, 0.2], high_band = [0, 0], ... }

``veil train-fr --schedule FILE`` trains with it; a plan row ``use = "schedule"`` with
``schedule = "FILE"`` benchmarks it; the learners export what they found in this format.
"""

from __future__ import annotations

import math
import os
import tempfile
import tomllib
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from veil.defenses.params import AugmentParams
from veil.defenses.schedule import Schedule, schedule_from_dict

FORMAT = "veil-schedule-1"
MAX_BYTES = 1 << 20  # a schedule is a few phases; a bigger file is not one


def load_schedule(path: str | Path) -> Schedule:
    """The schedule in ``path``; a missing, oversized or malformed file is a one-line error naming it."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"schedule file {path} does not exist")
    if path.stat().st_size > MAX_BYTES:
        raise ValueError(f"{path}: {path.stat().st_size} bytes is not a schedule file (at most {MAX_BYTES})")
    try:
        raw = tomllib.loads(path.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{path}: not a TOML schedule: {err}") from None
    fmt = raw.pop("format", None)
    if fmt != FORMAT:
        raise ValueError(f"{path}: format must be {FORMAT!r}, got {fmt!r}")
    raw.pop("note", None)
    return schedule_from_dict(raw, str(path))


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if not math.isfinite(v):
            raise ValueError(f"cannot write {v} to a schedule file")
        return repr(v)
    if isinstance(v, str):
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{ " + ", ".join(f"{k} = {_toml_value(x)}" for k, x in v.items()) + " }"
    raise ValueError(f"cannot write {v!r} to a schedule file")


def schedule_toml(schedule: Schedule, note: str = "") -> str:
    """The file text of ``schedule`` (``load_schedule`` reads it back to an equal schedule)."""
    d = schedule.to_dict()
    lines = [f"format = {_toml_value(FORMAT)}"]
    if note:
        lines.append(f"note = {_toml_value(note)}")
    lines += [f"mode = {_toml_value(d['mode'])}", f"fill = {_toml_value(d['fill'])}"]
    for phase in d["phase"]:
        lines.append("")
        lines.append("[[phase]]")
        lines += [f"{k} = {_toml_value(v)}" for k, v in phase.items()]
    return "\n".join(lines) + "\n"


def save_schedule(schedule: Schedule, path: str | Path, note: str = "") -> Path:
    """Write ``schedule`` to ``path`` atomically (temporary file, then rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    with os.fdopen(fd, "w") as f:
        f.write(schedule_toml(schedule, note))
    os.replace(tmp, path)
    return path


class ScheduleAugmenter:
    """A schedule for any FR training loop: ``images, targets = aug(images, targets, step=s,
    total_steps=n)`` with float images in [0, 1] (B, C, H, W) and soft targets (B, K). The
    phase follows ``step / total_steps``; draws come from the augmenter's seeded generator.

    Example:
        >>> aug = ScheduleAugmenter.load("schedule.toml", seed=0)
        >>> for step, (x, y) in enumerate(loader):
        ...     x, y = aug(x, y, step=step, total_steps=n_steps)
    """

    def __init__(self, schedule: Schedule, seed: int = 0) -> None:
        self.schedule = schedule
        self.generator = torch.Generator().manual_seed(seed)
        self.last_params: AugmentParams | None = None
        self._sums: dict[str, float] = {}
        self._n = 0

    @classmethod
    def load(cls, path: str | Path, seed: int = 0) -> "ScheduleAugmenter":
        return cls(load_schedule(path), seed)

    def __call__(self, images: torch.Tensor, targets: torch.Tensor, step: int = 0,
                 total_steps: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
        params, images, targets = self.schedule.augment(images, targets, step / max(1, total_steps), self.generator)
        self.last_params = params
        for name, value in asdict(params).items():
            self._sums[name] = self._sums.get(name, 0.0) + float(value)
        self._n += 1
        return images, targets

    def take_param_means(self) -> dict[str, float]:
        """The mean of each parameter over the batches since the last call (for logs); then starts again."""
        out = {k: v / self._n for k, v in self._sums.items()} if self._n else {}
        self._sums, self._n = {}, 0
        return out
