"""Defenses: the augmentation parameters, batched random erasing (with torchvision parity), frequency MixUp
and the hybrid of both."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch
from torchvision.transforms import v2

from veil.defenses.erasing import EraseConfig, apply_erasing, random_erasing, sample_erasing
from veil.defenses.mixup import MODES, MixConfig, apply_mixup, band_for, radial_frequency, sample_mixup
from veil.defenses.params import AugmentParams


def _batch(b: int = 16, classes: int = 5, size: int = 32, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(b, 3, size, size, generator=g)
    y = torch.nn.functional.one_hot(torch.arange(b) % classes, classes).float()
    return x, y


# ----------------------------------------------------------------------------- parameters

def test_params_validate_their_bounds() -> None:
    with pytest.raises(ValueError, match="erase_p"):
        AugmentParams(erase_p=1.5)
    with pytest.raises(ValueError, match="label_follow"):
        AugmentParams(label_follow=-0.5)


# ----------------------------------------------------------------------------- erasing

def test_erasing_keeps_shape_dtype_and_leaves_the_input_alone() -> None:
    x, _ = _batch()
    before = x.clone()
    out = random_erasing(x, EraseConfig(p=1.0), torch.Generator().manual_seed(0))
    assert out.shape == x.shape and out.dtype == x.dtype
    assert torch.equal(x, before) and not torch.equal(out, x)


def test_erasing_with_p_zero_is_the_identity() -> None:
    x, _ = _batch()
    assert torch.equal(random_erasing(x, EraseConfig(p=0.0)), x)


def test_erased_pixels_are_exactly_the_boxes_and_filled_with_the_value() -> None:
    x, _ = _batch()
    rec = sample_erasing(x.shape, EraseConfig(p=1.0, value=0.25), torch.Generator().manual_seed(1))
    out = apply_erasing(x, rec)
    for i in range(len(x)):
        t, l, h, w = rec.boxes[i].tolist()
        assert torch.all(out[i, :, t:t + h, l:l + w] == 0.25)
        assert int((out[i, 0] != x[i, 0]).sum()) == h * w


def test_rectangles_differ_across_samples() -> None:
    x, _ = _batch(b=64)
    rec = sample_erasing(x.shape, EraseConfig(p=1.0, scale=(0.02, 0.33), ratio=(0.3, 3.3)),
                         torch.Generator().manual_seed(2))
    assert len({tuple(b) for b in rec.boxes.tolist()}) > 60
    # positions are not correlated across samples
    top = rec.boxes[:, 0].float()
    assert abs(np.corrcoef(top[:-1], top[1:])[0, 1]) < 0.3


def test_replaying_a_record_gives_identical_output_even_with_random_fill() -> None:
    x, _ = _batch()
    rec = sample_erasing(x.shape, EraseConfig(p=1.0, value="random"), torch.Generator().manual_seed(3))
    assert torch.equal(apply_erasing(x, rec), apply_erasing(x, rec))


def test_same_seed_same_boxes() -> None:
    cfg = EraseConfig(p=0.5)
    a = sample_erasing((32, 3, 32, 32), cfg, torch.Generator().manual_seed(4))
    b = sample_erasing((32, 3, 32, 32), cfg, torch.Generator().manual_seed(4))
    assert torch.equal(a.boxes, b.boxes) and torch.equal(a.erased, b.erased)


def test_mean_fill_is_the_batch_channel_mean() -> None:
    x, _ = _batch()
    rec = sample_erasing(x.shape, EraseConfig(p=1.0, value="mean"), torch.Generator().manual_seed(5))
    out = apply_erasing(x, rec)
    t, l, h, w = rec.boxes[0].tolist()
    assert torch.allclose(out[0, :, t, l], x.mean(dim=(0, 2, 3)))


def test_bad_erase_config_names_the_value() -> None:
    with pytest.raises(ValueError, match="1.5"):
        EraseConfig(p=1.5)
    with pytest.raises(ValueError, match="blue"):
        EraseConfig(value="blue")


def _boxes_from_torchvision(n: int, size: tuple[int, int], scale: tuple[float, float],
                            ratio: tuple[float, float]) -> np.ndarray:
    torch.manual_seed(0)
    t = v2.RandomErasing(p=1.0, scale=scale, ratio=ratio, value=0)
    img = torch.ones(1, *size)
    out = []
    for _ in range(n):
        params = t.make_params([img])
        i, j, h, w = params["i"], params["j"], params["h"], params["w"]
        out.append((i, j, h, w) if params["v"] is not None else (0, 0, 0, 0))
    return np.array(out, dtype=np.float64)


@pytest.mark.parametrize("scale,ratio", [((0.02, 0.33), (0.3, 3.3)), ((0.1, 0.8), (1.0, 1.0))])
def test_box_distribution_matches_torchvision_random_erasing(scale: tuple[float, float],
                                                             ratio: tuple[float, float]) -> None:
    """Per-image torchvision draws vs our batched draws: same mean and spread of area, aspect,
    position, and the same share of 'nothing fits' (erased nothing)."""
    n, size = 4000, (40, 48)
    ref = _boxes_from_torchvision(n, size, scale, ratio)
    rec = sample_erasing((n, 1, *size), EraseConfig(p=1.0, scale=scale, ratio=ratio),
                         torch.Generator().manual_seed(7))
    ours = rec.boxes.double().numpy()

    def stats(b: np.ndarray) -> dict[str, tuple[float, float]]:
        ok = b[:, 2] > 0
        area = b[ok, 2] * b[ok, 3] / (size[0] * size[1])
        log_aspect = np.log(b[ok, 2] / b[ok, 3])
        centre_y = (b[ok, 0] + b[ok, 2] / 2) / size[0]
        centre_x = (b[ok, 1] + b[ok, 3] / 2) / size[1]
        return {"area": (area.mean(), area.std()), "aspect": (log_aspect.mean(), log_aspect.std()),
                "cy": (centre_y.mean(), centre_y.std()), "cx": (centre_x.mean(), centre_x.std()),
                "erased": (ok.mean(), 0.0)}

    a, b = stats(ref), stats(ours)
    for key in a:
        for k in range(2):
            # 4000 draws: standard errors are about 1.6% of the spread; allow 4 of them
            tol = 0.07 * max(a[key][1], 1e-3) + 0.01
            assert abs(a[key][k] - b[key][k]) < tol, (key, k, a[key], b[key])


# ----------------------------------------------------------------------------- frequency MixUp

@pytest.mark.parametrize("mode", MODES)
def test_mixup_keeps_shapes_and_targets_sum_to_one(mode: str) -> None:
    x, y = _batch()
    rec = sample_mixup(len(x), MixConfig(k=3, band=(0.0, 0.5), mode=mode), torch.Generator().manual_seed(0))
    out, t = apply_mixup(x, y, rec)
    assert out.shape == x.shape and out.dtype == torch.float32
    assert t.shape == y.shape and torch.allclose(t.sum(1), torch.ones(len(x)), atol=1e-5)
    assert (t >= 0).all() and not torch.equal(out, x)


@pytest.mark.parametrize("mode", MODES)
def test_k_one_is_exactly_the_identity(mode: str) -> None:
    x, y = _batch()
    out, t = apply_mixup(x, y, sample_mixup(len(x), MixConfig(k=1, mode=mode)))
    assert torch.equal(out, x) and torch.equal(t, y)


def test_an_empty_band_is_exactly_the_identity() -> None:
    x, y = _batch()
    out, t = apply_mixup(x, y, sample_mixup(len(x), MixConfig(k=4, band=(1.5, 2.0))))
    assert torch.equal(out, x) and torch.equal(t, y)


@pytest.mark.parametrize("mode", ["complex", "dct"])
def test_full_band_complex_mix_is_pixel_space_mixup(mode: str) -> None:
    x, y = _batch()
    rec = sample_mixup(len(x), MixConfig(k=3, band=(0.0, math.inf), mode=mode), torch.Generator().manual_seed(1))
    out, t = apply_mixup(x, y, rec)
    w = rec.weights
    assert torch.allclose(out, (w[:, :, None, None, None] * x[rec.perm]).sum(1), atol=1e-5)
    assert torch.allclose(t, (w[:, :, None] * y[rec.perm]).sum(1), atol=1e-6)


def test_first_partner_is_the_sample_itself_and_weights_are_dirichlet() -> None:
    rec = sample_mixup(32, MixConfig(k=4, alpha=0.5), torch.Generator().manual_seed(2))
    assert torch.equal(rec.perm[:, 0], torch.arange(32))
    assert torch.allclose(rec.weights.sum(1), torch.ones(32)) and (rec.weights >= 0).all()


def test_high_band_mix_leaves_the_low_frequencies_alone() -> None:
    x, y = _batch()
    rec = sample_mixup(len(x), MixConfig.high(0.5, k=3), torch.Generator().manual_seed(3))
    out, _ = apply_mixup(x, y, rec)
    low = radial_frequency(32, 32) < 0.5
    assert torch.allclose(torch.fft.rfft2(out)[..., low], torch.fft.rfft2(x)[..., low], atol=1e-3)
    assert not torch.allclose(torch.fft.rfft2(out)[..., ~low], torch.fft.rfft2(x)[..., ~low], atol=1e-3)


def test_label_share_is_the_energy_share_of_the_band() -> None:
    """Low band holds most of a natural image's energy, so low-band mixing moves labels more."""
    x, y = _batch()
    x = torch.nn.functional.avg_pool2d(x, 5, 1, 2)  # smooth, image-like spectrum
    low_t = apply_mixup(x, y, sample_mixup(len(x), MixConfig.low(0.3, k=2), torch.Generator().manual_seed(4)))[1]
    high_t = apply_mixup(x, y, sample_mixup(len(x), MixConfig.high(0.3, k=2), torch.Generator().manual_seed(4)))[1]
    own = torch.arange(len(x)) % 5
    assert low_t[torch.arange(len(x)), own].mean() < high_t[torch.arange(len(x)), own].mean()


@pytest.mark.parametrize("mode", ["complex", "dct"])
def test_label_follow_scales_how_far_the_targets_follow_the_mix(mode: str) -> None:
    """label_follow = 0 mixes the images but keeps every target; 0.5 moves the targets half as far."""
    x, y = _batch()
    recs = {f: sample_mixup(len(x), MixConfig(k=3, band=(0.0, 0.5), mode=mode, label_follow=f),
                            torch.Generator().manual_seed(6)) for f in (0.0, 0.5, 1.0)}
    out = {f: apply_mixup(x, y, r) for f, r in recs.items()}
    assert torch.equal(out[0.0][0], out[1.0][0]) and not torch.equal(out[0.0][0], x)  # same images, mixed
    assert torch.equal(out[0.0][1], y)
    assert torch.allclose(out[0.5][1] - y, 0.5 * (out[1.0][1] - y), atol=1e-6)
    assert (out[1.0][1] - y).abs().max() > 0.1


@pytest.mark.parametrize("follow", [-0.1, 1.5, math.nan])
def test_label_follow_outside_zero_one_names_the_value(follow: float) -> None:
    with pytest.raises(ValueError, match="label_follow"):
        MixConfig(k=2, label_follow=follow)


@pytest.mark.parametrize("mode", ["complex", "dct"])
def test_mix_p_leaves_the_unchosen_samples_clean_and_mixes_the_rest(mode: str) -> None:
    """p = 0.5: about half the batch is mixed exactly as at p = 1; the rest keep image and target."""
    x, y = _batch()
    cfg = MixConfig(k=3, band=(0.0, 0.5), mode=mode)
    full = apply_mixup(x, y, sample_mixup(len(x), cfg, torch.Generator().manual_seed(6)))
    half = apply_mixup(x, y, sample_mixup(len(x), dataclasses.replace(cfg, p=0.5), torch.Generator().manual_seed(6)))
    clean = (half[0] - x).flatten(1).abs().amax(1) < 1e-5
    assert 3 <= int(clean.sum()) <= 13  # 16 samples, each kept with probability 0.5
    assert torch.allclose(half[1][clean], y[clean])
    assert torch.allclose(half[0][~clean], full[0][~clean], atol=1e-5)  # same partners and weights as p = 1
    assert torch.allclose(half[1][~clean], full[1][~clean], atol=1e-6)


def test_mix_p_zero_changes_nothing() -> None:
    x, y = _batch()
    out, t = apply_mixup(x, y, sample_mixup(len(x), MixConfig(k=3, p=0.0), torch.Generator().manual_seed(2)))
    assert torch.allclose(out, x, atol=1e-5) and torch.equal(t, y)


@pytest.mark.parametrize("p", [-0.1, 1.5, math.nan])
def test_mix_p_outside_zero_one_names_the_value(p: float) -> None:
    with pytest.raises(ValueError, match="p \\(the probability"):
        MixConfig(k=2, p=p)


def test_replay_gives_identical_output() -> None:
    x, y = _batch()
    rec = sample_mixup(len(x), MixConfig(k=3, mode="phase"), torch.Generator().manual_seed(5))
    a, b = apply_mixup(x, y, rec), apply_mixup(x, y, rec)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def test_dct_drop_dc_removes_each_blocks_mean() -> None:
    x, y = _batch()
    out, t = apply_mixup(x, y, sample_mixup(len(x), MixConfig(k=1, mode="dct", drop_dc=True)))
    blocks = out.reshape(16, 3, 4, 8, 4, 8)
    assert blocks.mean(dim=(3, 5)).abs().max() < 1e-5
    assert torch.equal(t, y)


def test_dct_mode_handles_sizes_that_are_not_multiples_of_8() -> None:
    x, y = _batch(size=30)
    out, _ = apply_mixup(x, y, sample_mixup(len(x), MixConfig(k=2, mode="dct"), torch.Generator().manual_seed(6)))
    assert out.shape == x.shape


def test_band_for_maps_each_kind_and_its_radii_to_the_band_mixed() -> None:
    assert band_for("low", [0.05]) == (0.0, 0.05)
    assert band_for("high", (0.3,)) == (0.3, math.inf)
    assert band_for("band", [0.1, 0.6]) == (0.1, 0.6)
    assert MixConfig.low(0.2).band == band_for("low", [0.2]) and MixConfig.high(0.2).band == band_for("high", [0.2])


@pytest.mark.parametrize("kind, radius, message", [("band", [0.1], "needs two radii"),
                                                   ("low", [0.1, 0.2], "a low band takes one radius"),
                                                   ("high", [], "a high band takes one radius"),
                                                   ("mid", [0.1], "band kind must be one of low, high, band")])
def test_band_for_refuses_a_wrong_kind_or_count_in_one_line(kind: str, radius: list, message: str) -> None:
    with pytest.raises(ValueError, match=message) as err:
        band_for(kind, radius)
    assert "\n" not in str(err.value)


def test_k_larger_than_the_batch_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="k=5"):
        sample_mixup(4, MixConfig(k=5))


# ----------------------------------------------------------------------------- hybrid

def test_hybrid_from_params_mixes_then_erases_and_replays() -> None:
    from veil.defenses.hybrid import HybridConfig, apply, sample

    x, y = _batch()
    params = AugmentParams(k=3, alpha=1.0, radius=0.4, high_band=False, erase_p=1.0, erase_area=0.3,
                           erase_aspect=2.0, label_follow=0.5)
    cfg = HybridConfig.from_params(params, fill=0.0)
    assert cfg.mix.band == (0.0, 0.4) and cfg.erase.scale == pytest.approx((0.075, 0.3))
    assert cfg.mix.label_follow == 0.5
    rec = sample(cfg, x, torch.Generator().manual_seed(0))
    out, t = apply(x, y, rec)
    mixed, t_mix = apply_mixup(x, y, rec.mix)
    assert torch.equal(out, apply_erasing(mixed.clamp(0, 1), rec.erase)) and torch.equal(t, t_mix)
    again, _ = apply(x, y, rec)
    assert torch.equal(out, again)
    assert out.min() >= 0 and out.max() <= 1


def test_hybrid_caps_k_at_the_batch_size_and_keeps_every_other_mix_setting() -> None:
    from veil.defenses.hybrid import HybridConfig, sample

    x, _ = _batch(b=4)
    mix = MixConfig(k=6, alpha=2.0, band=(0.1, 0.6), mode="amplitude", label_follow=0.25)
    rec = sample(HybridConfig(mix=mix), x, torch.Generator().manual_seed(0))
    assert rec.mix.config.k == 4 and rec.mix.perm.shape == (4, 4)
    assert (rec.mix.config.alpha, rec.mix.config.band, rec.mix.config.mode, rec.mix.config.label_follow) == \
        (2.0, (0.1, 0.6), "amplitude", 0.25)


def test_hybrid_with_k_one_and_p_zero_is_the_identity() -> None:
    from veil.defenses.hybrid import HybridConfig, augment

    x, y = _batch()
    out, t = augment(x, y, HybridConfig.from_params(AugmentParams(k=1, erase_p=0.0)))
    assert torch.equal(out, x) and torch.equal(t, y)
