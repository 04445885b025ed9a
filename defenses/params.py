"""One parameter set for every augmentation veil applies (frequency MixUp, then random erasing),
with the range of each parameter. How an agent's action maps onto it is the environment's
business (``veil.env.actions``); here it is plain configuration.

Bounds keep the adversary from winning by wiping the image.
"""

from __future__ import annotations

from dataclasses import dataclass

ALPHA_MIN, ALPHA_MAX = 0.2, 5.0
AREA_MIN, AREA_SPAN = 0.02, 0.48  # erased area fraction: 0.02 .. 0.5
ASPECT_MAX = 3.3


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
            (ALPHA_MIN - 1e-9 <= self.alpha <= ALPHA_MAX + 1e-9, f"alpha must be in [0.2, 5], got {self.alpha}"),
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
