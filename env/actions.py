"""The agent's action: the table that maps an action in [-1, 1]^8 to ``AugmentParams`` and back,
and ``ActionCodec``, the one path from an action to an applied augmentation, shared by the game
(``FaceAugmentEnv``) and an exported policy (``PolicyAugmenter``).

| dim | parameter | decoding of a in [-1, 1] |
|---|---|---|
| 0 | ``k``, images mixed | round(1 + (a+1)/2 * (k_max-1)), k_max = 6 by default |
| 1 | ``alpha``, Dirichlet concentration | exp(a * ln 5), i.e. 0.2 .. 5 |
| 2 | ``radius``, band radius as a fraction of Nyquist | (a+1)/2 |
| 3 | ``high_band``, band side | a < 0: the low band is mixed; a >= 0: the high band |
| 4 | ``erase_p``, erase probability | (a+1)/2 |
| 5 | ``erase_area``, upper bound s_hi of the erased area fraction (s_lo = s_hi/4) | 0.02 + (a+1)/2 * 0.48 |
| 6 | ``erase_aspect``, rho: aspect ratios r in [1/rho, rho] | exp((a+1)/2 * ln 3.3) |
| 7 | ``label_follow``, how far the targets follow the mix | (a+1)/2 |

``label_follow`` came in 0.10: an action of 7 entries (a policy exported before) decodes with
``label_follow = 1``, the rule that policy was trained under.

The transform (Fourier complex / amplitude / phase, or block DCT), the erase fill and ``k_max``
are configuration, not actions. A game may also fix parameters (their action dimensions are then
ignored) or narrow them (``bounds``, ``veil train-agent --bound radius=0:0.05``): [-1, 1] then
decodes to that sub-range, a utility constraint the agent plays inside.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace

import numpy as np
import torch

from veil.defenses.hybrid import HybridConfig
from veil.defenses.hybrid import apply as apply_augment
from veil.defenses.hybrid import sample as sample_augment
from veil.defenses.params import ALPHA_MAX, AREA_MIN, AREA_SPAN, ASPECT_MAX, AugmentParams

ACTION_DIM = 8
LEGACY_ACTION_DIM = 7  # before label_follow

ACTION_TABLE: tuple[tuple[str, str], ...] = (
    ("k", "round(1 + (a+1)/2 * (k_max-1))"),
    ("alpha", "exp(a * ln 5)"),
    ("radius", "(a+1)/2"),
    ("high_band", "a >= 0"),
    ("erase_p", "(a+1)/2"),
    ("erase_area", "0.02 + (a+1)/2 * 0.48"),
    ("erase_aspect", "exp((a+1)/2 * ln 3.3)"),
    ("label_follow", "(a+1)/2"),
)
PARAM_NAMES = tuple(name for name, _ in ACTION_TABLE)


def _unit(a: float) -> float:
    return (min(1.0, max(-1.0, float(a))) + 1.0) / 2.0


def full_action(action: np.ndarray | list[float]) -> np.ndarray:
    """The action as ``ACTION_DIM`` floats; a legacy action of 7 entries (a policy exported before
    label_follow) gets a = 1 in dim 7, i.e. ``label_follow = 1``, the rule it was trained under."""
    a = np.asarray(action, dtype=np.float64).reshape(-1)
    if a.shape == (LEGACY_ACTION_DIM,):
        a = np.append(a, 1.0)
    if a.shape != (ACTION_DIM,):
        raise ValueError(f"action must have {ACTION_DIM} entries ({LEGACY_ACTION_DIM} for a policy exported before "
                         f"label_follow), got shape {np.shape(action)}")
    return a


def encode(params: AugmentParams, k_max: int = 6) -> np.ndarray:
    """The action that decodes to ``params`` (the inverse of ``decode``; ``high_band`` maps
    to +-0.5, ``k`` to the centre of its bin)."""
    def inv_unit(u: float) -> float:
        return 2.0 * u - 1.0

    k_unit = 0.0 if k_max == 1 else (min(params.k, k_max) - 1) / (k_max - 1)
    return np.array([
        inv_unit(k_unit),
        math.log(params.alpha) / math.log(ALPHA_MAX),
        inv_unit(params.radius),
        0.5 if params.high_band else -0.5,
        inv_unit(params.erase_p),
        inv_unit((params.erase_area - AREA_MIN) / AREA_SPAN),
        inv_unit(math.log(params.erase_aspect) / math.log(ASPECT_MAX)),
        inv_unit(params.label_follow),
    ], dtype=np.float32)


def _table_decode(a: np.ndarray, k_max: int) -> AugmentParams:
    """Parameters of a full, finite action by the table (each dimension clipped to [-1, 1])."""
    return AugmentParams(
        k=int(round(1 + _unit(a[0]) * (k_max - 1))),
        alpha=math.exp(min(1.0, max(-1.0, a[1])) * math.log(ALPHA_MAX)),
        radius=_unit(a[2]),
        high_band=bool(a[3] >= 0.0),
        erase_p=_unit(a[4]),
        erase_area=AREA_MIN + _unit(a[5]) * AREA_SPAN,
        erase_aspect=math.exp(_unit(a[6]) * math.log(ASPECT_MAX)),
        label_follow=_unit(a[7]),
    )


def fixed_values(fixed: Mapping[str, float] | None) -> dict[str, float | int | bool]:
    """``fixed`` (``{name: value}``, names from the action table) as parameter values: ``k`` rounded,
    ``high_band`` true for values >= 0.5; a bad name or value is a ValueError naming it."""
    out: dict[str, float | int | bool] = {}
    for name, value in (fixed or {}).items():
        if name not in PARAM_NAMES:
            raise ValueError(f"cannot fix {name!r}: not an action parameter; choose from {', '.join(PARAM_NAMES)}")
        value = float(value)
        if not math.isfinite(value):
            raise ValueError(f"fixed {name} must be a finite number, got {value}")
        out[name] = int(round(value)) if name == "k" else (value >= 0.5) if name == "high_band" else value
    replace(AugmentParams(), **out)  # AugmentParams validates the values and names the bad one
    return out


def with_fixed(params: AugmentParams, fixed: Mapping[str, float] | None) -> AugmentParams:
    """``params`` with some parameters fixed by configuration (``fixed_values``), e.g.
    ``{"label_follow": 0, "high_band": 0}``; ``params`` itself when nothing is fixed."""
    return replace(params, **fixed_values(fixed)) if fixed else params


def check_bounds(bounds: Mapping[str, tuple[float, float]] | None, k_max: int = 6,
                 fixed: Mapping[str, float] | None = None) -> dict[str, tuple[float, float]]:
    """``bounds`` checked and normalized to ``{name: (lo, hi)}`` floats: names from the action
    table (not ``high_band``, a switch: fix it instead), ``lo <= hi``, both inside the parameter's
    own range, and no name both bounded and fixed. A bad entry is a ValueError naming it."""
    out: dict[str, tuple[float, float]] = {}
    for name, pair in (bounds or {}).items():
        if name not in PARAM_NAMES:
            raise ValueError(f"cannot bound {name!r}: not an action parameter; choose from {', '.join(PARAM_NAMES)}")
        if name == "high_band":
            raise ValueError("cannot bound high_band (a switch): fix it instead, e.g. high_band=0")
        if name in (fixed or {}):
            raise ValueError(f"{name} is both fixed and bounded; choose one")
        try:
            lo, hi = (float(v) for v in pair)
        except (TypeError, ValueError):
            raise ValueError(f"bound of {name} must be two numbers (lo, hi), got {pair!r}") from None
        if not (math.isfinite(lo) and math.isfinite(hi)) or lo > hi:
            raise ValueError(f"bound of {name} must be finite with lo <= hi, got ({lo}, {hi})")
        if name == "k" and not 1 <= lo <= hi <= k_max:
            raise ValueError(f"bound of k must lie in [1, k_max={k_max}], got ({lo}, {hi})")
        for v in (lo, hi):
            try:
                replace(AugmentParams(), **{name: v})
            except ValueError as e:
                raise ValueError(f"bound of {name} ({lo}, {hi}) leaves its range: {e}") from None
        out[name] = (lo, hi)
    return out


def _action_ranges(bounds: Mapping[str, tuple[float, float]], k_max: int) -> dict[int, tuple[float, float]]:
    """Each checked bound as the sub-range ``(a_lo, a_hi)`` of its action dimension that decodes
    to it, on the dimension's own scale (log for alpha and aspect)."""
    ranges: dict[int, tuple[float, float]] = {}
    for name, (lo, hi) in bounds.items():
        i = PARAM_NAMES.index(name)
        a_lo, a_hi = (float(encode(replace(AugmentParams(), **{name: v}), k_max)[i]) for v in (lo, hi))
        ranges[i] = (a_lo, a_hi)
    return ranges


def _squeeze(a: np.ndarray, ranges: Mapping[int, tuple[float, float]]) -> np.ndarray:
    """``a`` clipped to the box, each bounded dimension mapped from [-1, 1] onto its sub-range."""
    a = np.clip(a, -1.0, 1.0)
    if not ranges:
        return a
    for i, (a_lo, a_hi) in ranges.items():
        a[i] = a_lo + (a[i] + 1.0) / 2.0 * (a_hi - a_lo)
    return np.clip(a, -1.0, 1.0)


def bound_action(action: np.ndarray | list[float], bounds: Mapping[str, tuple[float, float]] | None,
                 k_max: int = 6) -> np.ndarray:
    """The action with each bounded dimension squeezed so that [-1, 1] decodes to ``[lo, hi]``
    of its parameter, on the dimension's own scale (log for alpha and aspect): a box the user sets
    as a utility constraint, inside which the agent still chooses freely."""
    return _squeeze(full_action(action), _action_ranges(check_bounds(bounds, k_max), k_max))


@dataclass(frozen=True)
class ActionCodec:
    """How a game turns an action into an applied augmentation: the table, then the game's
    ``bounds`` and ``fixed`` parameters, then MixUp in ``mix_mode`` and erasing with ``erase_fill``.
    Everything is checked once, here; ``bounds`` is kept normalized (``check_bounds``).

    Example:
        >>> codec = ActionCodec(fixed={"label_follow": 0.0}, bounds={"radius": (0.0, 0.05)})
        >>> params, images, targets = codec.augment(action, images, targets, generator)
    """

    k_max: int = 6
    bounds: Mapping[str, tuple[float, float]] = field(default_factory=dict)
    fixed: Mapping[str, float] = field(default_factory=dict)
    mix_mode: str = "complex"
    erase_fill: str | float = "mean"
    _fixed: dict[str, float | int | bool] = field(init=False, repr=False, compare=False)
    _ranges: dict[int, tuple[float, float]] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.k_max < 1:
            raise ValueError(f"k_max must be >= 1, got {self.k_max}")
        object.__setattr__(self, "fixed", dict(self.fixed))
        object.__setattr__(self, "_fixed", fixed_values(self.fixed))
        object.__setattr__(self, "bounds", check_bounds(self.bounds, self.k_max, self.fixed))
        object.__setattr__(self, "_ranges", _action_ranges(self.bounds, self.k_max))
        self.augmentation(AugmentParams(k=2, erase_p=1.0))  # mix_mode and erase_fill checked here

    def decode(self, action: np.ndarray | list[float]) -> AugmentParams:
        """The parameters an action in [-1, 1]^8 (clipped; 7 entries for a legacy policy) stands
        for in this game: bounded dimensions squeezed into their box, fixed ones overridden."""
        a = full_action(action)
        if not np.isfinite(a).all():
            raise ValueError(f"action contains NaN/inf: {a.tolist()}")
        if self._ranges:
            a = _squeeze(a, self._ranges)
        params = _table_decode(a, self.k_max)
        return replace(params, **self._fixed) if self._fixed else params

    def augmentation(self, params: AugmentParams) -> HybridConfig:
        """The MixUp and erasing configs ``params`` stand for in this game."""
        return HybridConfig.from_params(params, mode=self.mix_mode, fill=self.erase_fill)

    def apply(self, params: AugmentParams, images: torch.Tensor, targets: torch.Tensor,
              generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """One draw of the augmentation ``params`` stand for (from ``generator``), applied."""
        return apply_augment(images, targets, sample_augment(self.augmentation(params), images, generator))

    def augment(self, action: np.ndarray | list[float], images: torch.Tensor, targets: torch.Tensor,
                generator: torch.Generator | None = None) -> tuple[AugmentParams, torch.Tensor, torch.Tensor]:
        """Decode ``action`` and apply it to the batch: the parameters, the images and the soft targets."""
        params = self.decode(action)
        return (params, *self.apply(params, images, targets, generator))


def decode(action: np.ndarray | list[float], k_max: int = 6,
           bounds: Mapping[str, tuple[float, float]] | None = None) -> AugmentParams:
    """Map an action in [-1, 1]^8 (clipped) to parameters by the table; with ``bounds``,
    ``{name: (lo, hi)}``, those parameters span only ``[lo, hi]`` (``ActionCodec.decode``)."""
    return ActionCodec(k_max=k_max, bounds=bounds or {}).decode(action)


def markdown_table(k_max: int = 6) -> str:
    """The action table as Markdown, for docs and MLflow."""
    rows = ["| dim | parameter | decoding of a in [-1, 1] |", "|---|---|---|"]
    rows += [f"| {i} | `{name}` | {rule.replace('k_max', str(k_max))} |" for i, (name, rule) in enumerate(ACTION_TABLE)]
    return "\n".join(rows)
