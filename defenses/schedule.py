"""Augmentation schedules: which ``AugmentParams`` a batch gets as a function of training progress.

A constant augmentation is one setting for the whole run. A ``Schedule`` is a list of phases,
each ending at a fraction of the run; a phase either holds one setting (``params``) or draws a
setting per batch from a box (``box``, TrivialAugment's control: a *stochastic constant*). Two
phases express what a constant cannot, e.g. strong low-band mixing while the network forms its
first features and a milder one after (critical learning periods, arXiv 1711.08856). Pure
configuration and a batched transform: which step of which run is the caller's business.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from .hybrid import HybridConfig, augment
from .params import ALPHA_MAX, ALPHA_MIN, AREA_MIN, AREA_SPAN, ASPECT_MAX, AugmentParams

PARAM_RANGES: dict[str, tuple[float, float]] = {
    "k": (1, 16), "alpha": (ALPHA_MIN, ALPHA_MAX), "radius": (0.0, 1.0), "high_band": (0, 1),
    "erase_p": (0.0, 1.0), "erase_area": (AREA_MIN, AREA_MIN + AREA_SPAN), "erase_aspect": (1.0, ASPECT_MAX),
    "label_follow": (0.0, 1.0)}
"""Each parameter's own range (``k`` up to 16 images)."""
LOG_SCALE = frozenset({"alpha", "radius", "erase_aspect"})
"""Scale parameters a box draws log-uniformly (where both ends are above 0)."""


@dataclass(frozen=True)
class ParamBox:
    """A box of settings drawn from per batch: ``{name: (lo, hi)}`` for every parameter of
    ``AugmentParams`` (lo == hi fixes it). ``k`` is drawn as a whole number in [lo, hi];
    ``alpha``, ``radius`` and ``erase_aspect`` log-uniformly when lo > 0; ``high_band`` is a switch,
    so it must be fixed; the rest uniformly."""

    ranges: Mapping[str, tuple[float, float]]

    def __post_init__(self) -> None:
        ranges = {k: (float(lo), float(hi)) for k, (lo, hi) in dict(self.ranges).items()}
        missing = [n for n in PARAM_RANGES if n not in ranges]
        unknown = [n for n in ranges if n not in PARAM_RANGES]
        if unknown:
            raise ValueError(f"box: unknown parameter {unknown[0]!r}; choose from {', '.join(PARAM_RANGES)}")
        if missing:
            raise ValueError(f"box: give a range for every parameter; {', '.join(missing)} missing "
                             "(lo = hi fixes one)")
        for name, (lo, hi) in ranges.items():
            if not (math.isfinite(lo) and math.isfinite(hi)) or lo > hi:
                raise ValueError(f"box: {name} must be finite with lo <= hi, got ({lo}, {hi})")
            rlo, rhi = PARAM_RANGES[name]
            if lo < rlo - 1e-9 or hi > rhi + 1e-9:
                raise ValueError(f"box: {name} ({lo:g}, {hi:g}) leaves its range [{rlo:g}, {rhi:g}]")
        if ranges["high_band"][0] != ranges["high_band"][1]:
            raise ValueError("box: high_band is a switch; fix it (lo = hi = 0 or 1)")
        object.__setattr__(self, "ranges", ranges)

    def draw(self, u: torch.Tensor) -> AugmentParams:
        """The setting at ``u``, one uniform number in [0, 1) per parameter (in ``PARAM_RANGES`` order)."""
        values: dict[str, Any] = {}
        for x, (name, (lo, hi)) in zip(u.tolist(), self.ranges.items()):
            if name == "k":
                values[name] = int(lo) + min(int(x * (int(hi) - int(lo) + 1)), int(hi) - int(lo))
            elif name == "high_band":
                values[name] = lo >= 0.5
            elif name in LOG_SCALE and lo > 0:
                values[name] = math.exp(math.log(lo) + x * (math.log(hi) - math.log(lo)))
            else:
                values[name] = lo + x * (hi - lo)
        return AugmentParams(**values)

    def sample(self, generator: torch.Generator | None = None) -> AugmentParams:
        """One setting drawn from the box."""
        return self.draw(torch.rand(len(self.ranges), generator=generator, dtype=torch.float64))


@dataclass(frozen=True)
class Phase:
    """Until ``until`` (a fraction of the run, in (0, 1]), every batch gets ``params``, or a
    fresh draw from ``box`` when one is given."""

    until: float
    params: AugmentParams | None = None
    box: ParamBox | None = None

    def __post_init__(self) -> None:
        if not (isinstance(self.until, (int, float)) and 0.0 < self.until <= 1.0):
            raise ValueError(f"a phase ends at a fraction of the run in (0, 1], got until={self.until!r}")
        if (self.params is None) == (self.box is None):
            raise ValueError("a phase holds either one setting (params) or a box to draw from, not both or neither")


@dataclass(frozen=True)
class Schedule:
    """Phases in order; the last ends at 1. ``mode`` (Fourier ``complex`` and its variants, or
    block ``dct``) and ``fill`` (the erase fill) are configuration shared by every phase."""

    phases: tuple[Phase, ...]
    mode: str = "complex"
    fill: str | float = "mean"
    _configs: tuple[HybridConfig | None, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        phases = tuple(self.phases)
        if not phases:
            raise ValueError("a schedule needs at least one phase")
        ends = [p.until for p in phases]
        if any(b <= a for a, b in zip(ends, ends[1:])):
            raise ValueError(f"phases must end in increasing order, got until = {ends}")
        if abs(ends[-1] - 1.0) > 1e-9:
            raise ValueError(f"the last phase must end at 1 (the end of the run), got until = {ends[-1]}")
        object.__setattr__(self, "phases", phases)
        configs = tuple(HybridConfig.from_params(p.params, mode=self.mode, fill=self.fill) if p.params else None
                        for p in phases)  # mode and fill checked here, once
        HybridConfig.from_params(AugmentParams(k=2, erase_p=1.0), mode=self.mode, fill=self.fill)
        object.__setattr__(self, "_configs", configs)

    @staticmethod
    def constant(params: AugmentParams, mode: str = "complex", fill: str | float = "mean") -> "Schedule":
        return Schedule((Phase(1.0, params=params),), mode, fill)

    def phase_index(self, progress: float) -> int:
        """The phase that covers ``progress`` (the fraction of the run done before this batch, clipped to [0, 1])."""
        p = min(1.0, max(0.0, float(progress)))
        return next((i for i, ph in enumerate(self.phases) if p < ph.until), len(self.phases) - 1)

    def params_at(self, progress: float, generator: torch.Generator | None = None) -> AugmentParams:
        """The setting a batch at ``progress`` gets (a draw from the phase's box, if it has one)."""
        phase = self.phases[self.phase_index(progress)]
        return phase.params if phase.params is not None else phase.box.sample(generator)  # type: ignore[union-attr]

    def augment(self, images: torch.Tensor, targets: torch.Tensor, progress: float,
                generator: torch.Generator | None = None) -> tuple[AugmentParams, torch.Tensor, torch.Tensor]:
        """Augment a batch at ``progress``: the setting used, the images and the soft targets."""
        i = self.phase_index(progress)
        params = self.params_at(progress, generator)
        config = self._configs[i] or HybridConfig.from_params(params, mode=self.mode, fill=self.fill)
        return (params, *augment(images, targets, config, generator))

    def to_dict(self) -> dict[str, Any]:
        """The schedule as plain values (``schedule_from_dict`` reads it back)."""
        phases = []
        for p in self.phases:
            entry: dict[str, Any] = {"until": p.until}
            if p.params is not None:
                entry.update(asdict(p.params))
            else:
                entry["box"] = {k: list(v) for k, v in p.box.ranges.items()}  # type: ignore[union-attr]
            phases.append(entry)
        return {"mode": self.mode, "fill": self.fill, "phase": phases}


def schedule_from_dict(raw: Mapping[str, Any], where: str = "schedule") -> Schedule:
    """A ``Schedule`` from plain values (a TOML file's tables): ``phase`` entries with ``until``
    and either every ``AugmentParams`` field or a ``box`` of ``[lo, hi]`` pairs. Every problem is a
    ``ValueError`` naming ``where`` and the entry."""
    if not isinstance(raw, Mapping):
        raise ValueError(f"{where}: expected a table")
    unknown = [k for k in raw if k not in ("mode", "fill", "phase")]
    if unknown:
        raise ValueError(f"{where}: unknown key {unknown[0]!r} (known: mode, fill, phase)")
    entries = raw.get("phase")
    if not isinstance(entries, list) or not entries:
        raise ValueError(f"{where}: give the phases as [[phase]] tables")
    names = set(PARAM_RANGES)
    phases = []
    for i, entry in enumerate(entries):
        at = f"{where}: phase {i + 1}"
        if not isinstance(entry, Mapping):
            raise ValueError(f"{at}: expected a table")
        until = entry.get("until")
        if isinstance(until, bool) or not isinstance(until, (int, float)):
            raise ValueError(f"{at}: until must be a number in (0, 1], got {until!r}")
        rest = {k: v for k, v in entry.items() if k != "until"}
        try:
            if "box" in rest:
                if set(rest) != {"box"}:
                    raise ValueError(f"a box phase takes until and box only, got {sorted(rest)}")
                box = rest["box"]
                if not isinstance(box, Mapping) or not all(
                        isinstance(v, list) and len(v) == 2 and all(_number(x) for x in v) for v in box.values()):
                    raise ValueError("box must map each parameter to [lo, hi]")
                phases.append(Phase(float(until), box=ParamBox({k: tuple(v) for k, v in box.items()})))
            else:
                missing, extra = names - set(rest), set(rest) - names
                if extra:
                    raise ValueError(f"unknown parameter {sorted(extra)[0]!r}; choose from {', '.join(PARAM_RANGES)}")
                if missing:
                    raise ValueError(f"give every parameter; {', '.join(sorted(missing))} missing")
                k_hi = int(PARAM_RANGES["k"][1])
                if isinstance(rest["k"], bool) or not isinstance(rest["k"], int) or not 1 <= rest["k"] <= k_hi:
                    raise ValueError(f"k must be a whole number in 1..{k_hi}, got {rest['k']!r}")
                if not isinstance(rest["high_band"], bool):
                    raise ValueError(f"high_band must be true or false, got {rest['high_band']!r}")
                if not all(_number(rest[n]) for n in names - {"k", "high_band"}):
                    bad = next(n for n in names - {"k", "high_band"} if not _number(rest[n]))
                    raise ValueError(f"{bad} must be a finite number, got {rest[bad]!r}")
                phases.append(Phase(float(until), params=AugmentParams(**rest)))
        except ValueError as err:
            raise ValueError(f"{at}: {err}") from None
    try:
        return Schedule(tuple(phases), str(raw.get("mode", "complex")), raw.get("fill", "mean"))
    except ValueError as err:
        raise ValueError(f"{where}: {err}") from None


def _number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def two_phase(strong: AugmentParams, relaxed: AugmentParams, switch: float, strong_first: bool = True,
              mode: str = "complex", fill: str | float = "mean") -> Schedule:
    """One setting until ``switch`` (a fraction of the run), the other after."""
    first, second = (strong, relaxed) if strong_first else (relaxed, strong)
    return Schedule((Phase(switch, params=first), Phase(1.0, params=second)), mode, fill)

