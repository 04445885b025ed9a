"""One parameter space for every augmentation veil can apply, and the table that maps an
agent's action in [-1, 1]^8 to it and back.

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

The transform (Fourier complex / amplitude / phase, or block DCT) and ``k_max`` are
configuration, not actions. Bounds keep the adversary from winning by wiping the image.
A user may narrow any parameter further (``bounds``, ``veil train-agent --bound radius=0:0.05``):
[-1, 1] then decodes to that sub-range, a utility constraint the agent plays inside.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np

ACTION_DIM = 8
LEGACY_ACTION_DIM = 7  # before label_follow
ALPHA_MAX = 5.0
AREA_MIN, AREA_SPAN = 0.02, 0.48
ASPECT_MAX = 3.3

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


@dataclass(frozen=True)
class AugmentParams:
    """Every augmentation parameter, with its bounds.

    Args:
        k: images mixed per sample, 1..k_max (1 = no MixUp).
        alpha: Dirichlet concentration of the mixing weights, 0.2..5.
        radius: band radius as a fraction of Nyquist, 0..1 (a policy learned at 64 px carries to 112 px).
        high_band: mix the high band (radius < r) instead of the low band (r <= radius).
        erase_p: probability that a sample gets one erased rectangle, 0..1.
        erase_area: upper bound of the erased area fraction, 0.02..0.5 (lower bound = area/4).
        erase_aspect: rho >= 1; aspect ratios are drawn log-uniformly in [1/rho, rho].
        label_follow: how far MixUp's targets follow the mix, 0..1 (1: by the band's energy share;
            0: each sample keeps its own target, so the mixed band is noise to ignore).
    """

    k: int = 1
    alpha: float = 1.0
    radius: float = 0.5
    high_band: bool = False
    erase_p: float = 0.0
    erase_area: float = 0.4
    erase_aspect: float = 1.0
    label_follow: float = 1.0

    def __post_init__(self) -> None:
        checks = [
            (self.k >= 1, f"k must be >= 1, got {self.k}"),
            (0.2 - 1e-9 <= self.alpha <= ALPHA_MAX + 1e-9, f"alpha must be in [0.2, 5], got {self.alpha}"),
            (0.0 <= self.radius <= 1.0, f"radius must be in [0, 1], got {self.radius}"),
            (0.0 <= self.erase_p <= 1.0, f"erase_p must be in [0, 1], got {self.erase_p}"),
            (AREA_MIN - 1e-9 <= self.erase_area <= AREA_MIN + AREA_SPAN + 1e-9,
             f"erase_area must be in [0.02, 0.5], got {self.erase_area}"),
            (1.0 - 1e-9 <= self.erase_aspect <= ASPECT_MAX + 1e-9,
             f"erase_aspect must be in [1, 3.3], got {self.erase_aspect}"),
            (0.0 <= self.label_follow <= 1.0, f"label_follow must be in [0, 1], got {self.label_follow}"),
        ]
        for ok, msg in checks:
            if not ok:
                raise ValueError(msg)

    @property
    def erase_scale(self) -> tuple[float, float]:
        """Erased area fraction range (s_lo, s_hi) = (area/4, area)."""
        return (self.erase_area / 4.0, self.erase_area)

    @property
    def erase_ratio(self) -> tuple[float, float]:
        """Aspect ratio range (1/rho, rho)."""
        return (1.0 / self.erase_aspect, self.erase_aspect)


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


def check_bounds(bounds: dict[str, tuple[float, float]] | None, k_max: int = 6,
                 fixed: dict[str, float] | None = None) -> dict[str, tuple[float, float]]:
    """``bounds`` checked and normalized to ``{name: (lo, hi)}`` floats: names from the action
    table (not ``high_band``, a switch: fix it instead), ``lo <= hi``, both inside the parameter's
    own range, and no name both bounded and fixed. A bad entry is a ValueError naming it."""
    names = [name for name, _ in ACTION_TABLE]
    out: dict[str, tuple[float, float]] = {}
    for name, pair in (bounds or {}).items():
        if name not in names:
            raise ValueError(f"cannot bound {name!r}: not an action parameter; choose from {', '.join(names)}")
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


def bound_action(action: np.ndarray | list[float], bounds: dict[str, tuple[float, float]] | None,
                 k_max: int = 6) -> np.ndarray:
    """The action with each bounded dimension squeezed so that [-1, 1] decodes to ``[lo, hi]``
    of its parameter, on the dimension's own scale (log for alpha and aspect): a box the user sets
    as a utility constraint, inside which the agent still chooses freely."""
    a = np.clip(full_action(action), -1.0, 1.0)
    if not bounds:
        return a
    index = {name: i for i, (name, _) in enumerate(ACTION_TABLE)}
    for name, (lo, hi) in check_bounds(bounds, k_max).items():
        i = index[name]
        a_lo, a_hi = (float(encode(replace(AugmentParams(), **{name: v}), k_max)[i])
                      for v in (lo, hi))
        a[i] = a_lo + (a[i] + 1.0) / 2.0 * (a_hi - a_lo)
    return np.clip(a, -1.0, 1.0)


def decode(action: np.ndarray | list[float], k_max: int = 6,
           bounds: dict[str, tuple[float, float]] | None = None) -> AugmentParams:
    """Map an action in [-1, 1]^8 (clipped) to parameters, by the table in this module; a legacy
    action of 7 entries decodes with ``label_follow = 1`` (``full_action``). With ``bounds``,
    ``{name: (lo, hi)}``, those parameters span only ``[lo, hi]`` (``bound_action``)."""
    a = full_action(action)
    if not np.isfinite(a).all():
        raise ValueError(f"action contains NaN/inf: {a.tolist()}")
    if k_max < 1:
        raise ValueError(f"k_max must be >= 1, got {k_max}")
    if bounds:
        a = bound_action(a, bounds, k_max)
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


def with_fixed(params: AugmentParams, fixed: dict[str, float] | None) -> AugmentParams:
    """``params`` with some parameters fixed by configuration (their action dimensions are then
    ignored), e.g. ``{"label_follow": 0, "high_band": 0}``. Names come from the action table;
    ``k`` is rounded and ``high_band`` is true for values >= 0.5. A bad name or value is a
    ValueError naming it."""
    if not fixed:
        return params
    names = [name for name, _ in ACTION_TABLE]
    out: dict[str, float | int | bool] = {}
    for name, value in fixed.items():
        if name not in names:
            raise ValueError(f"cannot fix {name!r}: not an action parameter; choose from {', '.join(names)}")
        value = float(value)
        if not math.isfinite(value):
            raise ValueError(f"fixed {name} must be a finite number, got {value}")
        out[name] = int(round(value)) if name == "k" else (value >= 0.5) if name == "high_band" else value
    return replace(params, **out)  # AugmentParams validates the values and names the bad one


def markdown_table(k_max: int = 6) -> str:
    """The action table as Markdown, for docs and MLflow."""
    rows = ["| dim | parameter | decoding of a in [-1, 1] |", "|---|---|---|"]
    rows += [f"| {i} | `{name}` | {rule.replace('k_max', str(k_max))} |" for i, (name, rule) in enumerate(ACTION_TABLE)]
    return "\n".join(rows)
