"""A reward term priced by deployment: what a fresh target trained under a value of one action
parameter loses in natural accuracy, as ``veil calibrate`` measured it, charged per step.

The game's own utility signals (validation accuracy, the held-out drop of the step's augmentation)
are measured on the game's FR model, which does not predict what a target trained under the policy
from scratch pays (docs/RESULTS.md, "Agents scored by their own batch"). This term reads the
calibration's measured drops instead, so the adversary may move the parameter anywhere its measured
price keeps the budget, and pays for the excess when it does not.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .actions import PARAM_NAMES


@dataclass(frozen=True)
class DeployPrice:
    """Measured deployment cost of one action parameter, linearly interpolated between the values
    a calibration trained targets at (held flat beyond the ends), and the reward term it makes.

    Args:
        param: the action parameter priced (a name from the action table, e.g. ``radius``).
        values: the parameter values targets were trained under, strictly increasing.
        drops: each value's mean paired natural-accuracy drop against undefended targets, as a
            fraction (0.02 = 2 points); negative when the augmentation helped. Read as measured,
            noise included, exactly as ``veil calibrate`` judges them (no monotone fit).
        budget: the accuracy the deployed target may lose (fraction).
        weight: the term is ``-weight * max(0, price(value) - budget)``; 100 by default (``veil train-agent
            --deploy-weight``): one point over budget costs 1, the scale of the adversary's z-scored gain.
    """

    param: str
    values: tuple[float, ...]
    drops: tuple[float, ...]
    budget: float = 0.02
    weight: float = 100.0

    def __post_init__(self) -> None:
        if self.param not in PARAM_NAMES:
            raise ValueError(f"deploy price: unknown parameter {self.param!r}; the action table has {list(PARAM_NAMES)}")
        if len(self.values) < 1 or len(self.values) != len(self.drops):
            raise ValueError(f"deploy price: need as many drops as values (at least one), got "
                             f"{len(self.values)} values and {len(self.drops)} drops")
        for what, seq in (("value", self.values), ("drop", self.drops)):
            bad = [v for v in seq if not math.isfinite(v)]
            if bad:
                raise ValueError(f"deploy price: {what} {bad[0]!r} is not finite")
        if any(b <= a for a, b in zip(self.values, self.values[1:])):
            raise ValueError(f"deploy price: values must be strictly increasing, got {list(self.values)}")
        if not 0.0 <= self.budget <= 1.0 or self.weight < 0:
            raise ValueError(f"deploy price: budget must be in [0, 1] and weight >= 0, got {self.budget}, {self.weight}")

    def price(self, value: float) -> float:
        """The interpolated accuracy drop (fraction) of deploying ``value``."""
        return float(np.interp(value, self.values, self.drops))

    def penalty(self, value: float) -> float:
        """The reward term for a step played at ``value`` (zero while the price keeps the budget)."""
        return -self.weight * max(0.0, self.price(value) - self.budget)

    def feasible(self) -> tuple[float, float] | None:
        """The widest range of values whose interpolated price keeps the budget and that contains
        the cheapest measured value, or ``None`` when no measured value keeps it (for reports)."""
        drops = np.asarray(self.drops)
        ok = drops <= self.budget
        if not ok.any():
            return None
        i = int(np.argmin(drops))
        lo, hi = i, i
        while lo > 0 and ok[lo - 1]:
            lo -= 1
        while hi < len(drops) - 1 and ok[hi + 1]:
            hi += 1
        v, d, b = self.values, self.drops, self.budget

        def cross(a: int, c: int) -> float:  # where the line from a (within) to c (over) meets the budget
            return v[a] + (v[c] - v[a]) * (b - d[a]) / (d[c] - d[a])

        left = v[0] if lo == 0 else cross(lo, lo - 1)
        right = v[-1] if hi == len(v) - 1 else cross(hi, hi + 1)
        return float(left), float(right)
