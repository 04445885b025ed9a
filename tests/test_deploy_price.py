"""DeployPrice: the calibration's measured accuracy drops as a per-step reward term."""

from __future__ import annotations

import math

import pytest

from veil.env import DeployPrice

# the synthetic default's radius calibration (docs/results/syn-calibrate-30ep), drops as fractions
SYN = DeployPrice("radius", (0.025, 0.05, 0.1, 0.2), (0.0033, -0.0333, 0.0011, 0.0233), budget=0.02, weight=30.0)


def test_the_price_interpolates_between_measured_values_and_holds_flat_beyond_them() -> None:
    assert SYN.price(0.05) == pytest.approx(-0.0333)
    assert SYN.price(0.15) == pytest.approx((0.0011 + 0.0233) / 2)
    assert SYN.price(0.0) == pytest.approx(0.0033) and SYN.price(0.5) == pytest.approx(0.0233)


def test_the_penalty_is_zero_within_budget_and_linear_beyond_it() -> None:
    assert SYN.penalty(0.1) == 0.0
    assert SYN.penalty(0.2) == pytest.approx(-30.0 * (0.0233 - 0.02))


def test_the_feasible_range_ends_where_the_interpolated_price_crosses_the_budget() -> None:
    lo, hi = SYN.feasible()
    assert lo == pytest.approx(0.025)  # every value up to the first keeps it
    assert hi == pytest.approx(0.1 + 0.1 * (0.02 - 0.0011) / (0.0233 - 0.0011))
    assert SYN.price(hi) == pytest.approx(0.02)


def test_noise_in_the_measurements_is_read_as_measured_not_smoothed() -> None:
    # AT&T's calibration: r 0.025 cost 3.5 points, r 0.05 1.0, r 0.1 5.5; only around 0.05 is within 2
    att = DeployPrice("radius", (0.0125, 0.025, 0.05, 0.1, 0.2), (0.035, 0.035, 0.01, 0.055, 0.09))
    lo, hi = att.feasible()
    assert lo == pytest.approx(0.04) and hi == pytest.approx(0.05 + 0.05 / 4.5)


def test_no_measured_value_within_budget_has_no_feasible_range() -> None:
    assert DeployPrice("radius", (0.1, 0.2), (0.05, 0.09)).feasible() is None


@pytest.mark.parametrize("kw, message", [
    (dict(param="blur", values=(0.1,), drops=(0.0,)), "unknown parameter 'blur'"),
    (dict(param="radius", values=(0.2, 0.1), drops=(0.0, 0.0)), "strictly increasing"),
    (dict(param="radius", values=(0.1, 0.2), drops=(0.0,)), "as many drops as values"),
    (dict(param="radius", values=(0.1,), drops=(math.nan,)), "drop nan is not finite"),
    (dict(param="radius", values=(0.1,), drops=(0.0,), budget=-0.1), "budget must be in"),
])
def test_bad_measurements_are_refused_naming_the_value(kw: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        DeployPrice(**kw)
