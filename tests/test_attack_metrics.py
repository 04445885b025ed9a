"""The white-box attack, SSIM, per-identity metrics, the feature-space Fréchet distance and DDCS
(veil's reading), each on inputs whose answer is known."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from veil.attacks.ddcs import _class_median_pairwise, ddcs, ddcs_veil
from veil.attacks.metrics import (evaluate_reconstructions, feature_frechet, frechet_distance, per_identity, ssim,
                             summarize)
from veil.attacks.whitebox import WhiteBoxConfig, mean_face, total_variation, whitebox_attack
from veil.recognition import (DataConfig, ModelConfig, SplitConfig, Trainer, TrainerConfig, build_model, load_faces,
                         split_identities)


class Pixels(nn.Module):
    """An evaluation model whose embedding is the pixels and whose logits are minus the distance
    to each class's mean private image: known features, known predictions."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, classes: int) -> None:
        super().__init__()
        self.means = torch.stack([images[labels == c].float().mean(0) for c in range(classes)]).flatten(1)

    def forward(self, x: torch.Tensor) -> dict:
        return {"logits": -torch.cdist(x.flatten(1), self.means), "embedding": x.flatten(1), "hidden": []}


@pytest.fixture(scope="module")
def split():
    data = load_faces(DataConfig(synthetic_identities=12, synthetic_images=12, image_size=32,
                                 synthetic_difficulty=0.3))
    return split_identities(data, SplitConfig(n_private=6))


@pytest.fixture(scope="module")
def target(split):
    torch.manual_seed(0)
    model = build_model(ModelConfig(num_classes=split.num_private, width=8, embedding_dim=32))
    Trainer(model, TrainerConfig(epochs=6, batch_size=8, lr=3e-3, schedule="constant"), split.num_private).fit(
        split.train_images, split.train_labels, progress=False)
    return model


# ---------------------------------------------------------------- SSIM


def test_ssim_is_one_for_identical_images_and_falls_with_noise() -> None:
    g = torch.Generator().manual_seed(0)
    a = torch.rand(4, 3, 32, 32, generator=g)
    assert torch.allclose(ssim(a, a), torch.ones(4), atol=1e-5)
    noise = torch.randn(a.shape, generator=g)
    s1 = ssim(a, (a + 0.05 * noise).clamp(0, 1))
    s2 = ssim(a, (a + 0.3 * noise).clamp(0, 1))
    assert (s1 < 0.999).all() and (s2 < s1).all()


def test_ssim_fits_its_window_to_small_images_and_rejects_bad_shapes() -> None:
    a = torch.rand(2, 1, 8, 8)
    assert torch.allclose(ssim(a, a), torch.ones(2), atol=1e-5)  # 7 px window on 8 px images
    with pytest.raises(ValueError, match=r"\(2, 1, 8, 8\)"):
        ssim(a, a[:, :, :4])


# ---------------------------------------------------------------- Fréchet


def test_frechet_of_a_set_with_itself_is_zero_and_a_shift_adds_its_square() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(200, 8, generator=g) @ torch.randn(8, 8, generator=g)
    same = frechet_distance(x, x)
    assert same["frechet"] == pytest.approx(0.0, abs=1e-6)
    assert same["frechet_dims"] == 8 and not same["frechet_reduced"]
    assert "Inception" in same["frechet_note"] and "PCA" not in same["frechet_note"]
    shift = torch.full((8,), 0.5)
    assert frechet_distance(x, x + shift)["frechet"] == pytest.approx(8 * 0.25, rel=1e-6)


def test_frechet_matches_the_scipy_sqrtm_formula() -> None:
    scipy_linalg = pytest.importorskip("scipy.linalg")
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(100, 5, generator=g), 2 * torch.randn(80, 5, generator=g) + 1
    xa, ya = x.double().numpy(), y.double().numpy()
    s1, s2 = np.cov(xa, rowvar=False), np.cov(ya, rowvar=False)
    ref = (((xa.mean(0) - ya.mean(0)) ** 2).sum() + np.trace(s1) + np.trace(s2)
           - 2 * np.trace(scipy_linalg.sqrtm(s1 @ s2).real))
    assert frechet_distance(x, y)["frechet"] == pytest.approx(ref, rel=1e-6)


def test_frechet_reduces_by_pca_and_says_so_when_samples_are_fewer_than_dims() -> None:
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(10, 32, generator=g), torch.randn(12, 32, generator=g)
    out = frechet_distance(x, y)
    assert out["frechet_reduced"] and out["frechet_dims"] == 9  # below the smaller set's 10 samples
    assert "PCA" in out["frechet_note"] and "from 32 to 9" in out["frechet_note"]
    assert math.isfinite(out["frechet"]) and out["frechet"] > 0
    assert frechet_distance(x, x)["frechet"] == pytest.approx(0.0, abs=1e-6)
    far = frechet_distance(x, y + 3.0)["frechet"]
    assert far > out["frechet"] + 32 * 9 * 0.5  # the shift lies in the pooled PCA's top component


def test_feature_frechet_reads_the_evaluation_models_embedding(split) -> None:
    priv = split.train_images.float() / 255
    model = Pixels(priv, split.train_labels, split.num_private)
    assert feature_frechet(priv, split.train_images, model)["frechet"] == pytest.approx(0.0, abs=1e-3)


# ---------------------------------------------------------------- report keys, per identity


def test_evaluate_reconstructions_adds_ssim_its_mean_face_reference_and_frechet(split) -> None:
    priv = split.train_images.float() / 255
    model = Pixels(priv, split.train_labels, split.num_private)
    m = evaluate_reconstructions(priv, split.train_labels, model, split.train_images, split.train_labels,
                                 split.public_images, frechet=True)
    assert m["ssim"] == pytest.approx(1.0, abs=1e-5)
    assert 0 < m["ssim_mean_face"] < 0.9
    assert m["frechet"] == pytest.approx(0.0, abs=1e-3) and m["frechet_dims"] == len(priv) - 1
    assert all(isinstance(v, float) for v in m.values())


def test_per_identity_metrics_and_their_mean_and_std(split) -> None:
    priv = split.train_images.float() / 255
    model = Pixels(priv, split.train_labels, split.num_private)
    labels = split.train_labels
    keep = labels < 2
    recons, rec_labels = priv[keep].clone(), labels[keep].clone()
    recons[rec_labels == 1] = priv[labels == 2][0]  # identity 1's reconstructions all show identity 2
    per = per_identity(recons, rec_labels, model, split.train_images, labels)
    assert per["identity"] == [0, 1] and per["n"] == [8.0, 8.0]
    assert per["top1"] == [1.0, 0.0] and per["nn_pixel_acc"] == [1.0, 0.0]
    assert per["ssim"][0] == pytest.approx(1.0, abs=1e-5) and per["ssim"][1] < 0.9
    assert math.isinf(per["psnr"][0]) and math.isfinite(per["psnr"][1])  # exact copies: PSNR inf
    summary = summarize(per)
    assert summary["identities"] == 2.0
    assert summary["top1_mean"] == 0.5 and summary["top1_std"] == pytest.approx(math.sqrt(0.5))
    assert summary["psnr_std"] == 0.0  # one finite identity left


# ---------------------------------------------------------------- DDCS (veil's reading)


def _features() -> tuple[torch.Tensor, torch.Tensor]:
    """Two identities of 4 private samples on a line (identity 0 at x = 0, 1, 2, 3; identity 1 far away)."""
    xs = torch.tensor([0.0, 1.0, 2.0, 3.0])
    feats = torch.cat([torch.stack([xs, torch.zeros(4)], 1), torch.stack([xs, torch.full((4,), 100.0)], 1)])
    return feats, torch.tensor([0, 0, 0, 0, 1, 1, 1, 1])


def test_class_median_pairwise_distance() -> None:
    feats, labels = _features()
    # pairs of one identity: 1, 1, 1, 2, 2, 3 -> median (1 + 2) / 2
    assert torch.allclose(_class_median_pairwise(feats, labels), torch.full((8,), 1.5, dtype=torch.float32))


def test_ddcs_is_one_for_exact_reconstructions_and_zero_for_samples_never_nearest() -> None:
    feats, labels = _features()
    recon = torch.stack([feats[1], feats[6], feats[6] + torch.tensor([0.3, 0.0])])
    out = ddcs_veil(recon, torch.tensor([0, 1, 1]), feats, labels)
    s = out["scores"]
    assert s[1] == pytest.approx(1.0) and s[6] == pytest.approx(1.0)
    never = [0, 2, 3, 4, 5, 7]  # no reconstruction has them as its nearest private image
    assert not out["covered"][never].any() and (s[never] == 0).all()
    assert out["distance"][0] == pytest.approx(1 / 1.5)  # 1 from recon 0, in units of the median 1.5
    assert out["nearest_recon"].tolist() == [0, 0, 0, 0, 1, 1, 1, 2]  # x = 3 is nearer x = 2.3


def test_ddcs_ranks_the_copied_samples_first_and_skips_unattacked_identities() -> None:
    feats, labels = _features()
    images = feats.reshape(8, 1, 1, 2)  # the Pixels model's embedding is the flattened image
    model = Pixels(images, labels, 2)
    # identity 0 only: sample 2 copied, sample 3 missed by 0.6
    recons = torch.stack([images[2], images[3] + torch.tensor([0.6, 0.0]).reshape(1, 1, 2)])
    out = ddcs(recons, torch.tensor([0, 0]), model, images, labels, top=3)
    assert out["ranking"][:2].tolist() == [2, 3] and out["ranking_recon"][:2].tolist() == [0, 1]
    assert out["ranking_scores"][0] == pytest.approx(1.0)
    assert out["ranking_scores"][1] == pytest.approx(math.exp(-0.6 / 1.5))
    assert (out["scores"][4:] == 0).all() and (out["nearest_recon"][4:] == -1).all()
    assert out["mean"] == pytest.approx((1 + math.exp(-0.4)) / 4)  # over identity 0's four samples
    assert out["covered_share"] == 0.5 and "veil's reading" in out["formula"]


# ---------------------------------------------------------------- white-box attack


def test_whitebox_config_names_bad_values() -> None:
    with pytest.raises(ValueError, match="steps=0"):
        WhiteBoxConfig(steps=0)
    with pytest.raises(ValueError, match="tv=-1"):
        WhiteBoxConfig(tv=-1.0)


def test_total_variation_of_a_constant_is_zero_and_of_a_checkerboard_is_two() -> None:
    assert total_variation(torch.full((1, 3, 8, 8), 0.4)).item() == 0.0
    board = (torch.arange(8)[:, None] + torch.arange(8)[None, :]) % 2
    assert total_variation(board.float().expand(1, 3, 8, 8)).item() == pytest.approx(2.0)


def test_whitebox_attack_raises_the_targets_confidence_from_the_mean_face(split, target) -> None:
    classes = torch.arange(split.num_private)
    target.train()
    target.embed.weight.requires_grad_(False)  # a frozen layer must stay frozen, the rest trainable
    before = [p.clone() for p in target.parameters()]
    recons, labels = whitebox_attack(target, split.public_images, classes, WhiteBoxConfig(steps=40, seeds=2),
                                     torch.Generator().manual_seed(0))
    assert recons.shape == (12, 3, 32, 32) and recons.min() >= 0 and recons.max() <= 1
    assert labels.tolist() == [c for c in range(6) for _ in range(2)]
    assert all(torch.equal(a, b) for a, b in zip(before, target.parameters()))
    assert target.training and not target.embed.weight.requires_grad and target.head.weight.requires_grad
    assert not torch.equal(recons[0], recons[1])  # restarts differ by their initial noise
    target.embed.weight.requires_grad_(True)
    target.eval()
    with torch.no_grad():
        start = mean_face(split.public_images).expand(12, -1, -1, -1)
        p_attack = target(recons)["logits"].softmax(1)[torch.arange(12), labels]
        p_mean = target(start)["logits"].softmax(1)[torch.arange(12), labels]
    assert (p_attack > p_mean).all() and p_attack.mean() > 0.8 > p_mean.mean()
