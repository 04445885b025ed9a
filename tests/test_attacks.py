"""Attacks and privacy metrics: known inputs, the PCA prior, the probe."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from veil.attacks.metrics import evaluate_reconstructions, psnr
from veil.attacks.pca import FacePrior, PCAAttackConfig, pca_attack
from veil.attacks.probe import PrivacyProbe, ProbeConfig
from veil.recognition import (DataConfig, ModelConfig, SplitConfig, Trainer, TrainerConfig, build_model, load_faces,
                         split_identities)


class Oracle(nn.Module):
    """An evaluation model that knows the private images: embedding = pixels, logits = minus the
    distance to the nearest private image of each class."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, classes: int) -> None:
        super().__init__()
        self.images, self.labels, self.classes = images.flatten(1), labels, classes

    def forward(self, x: torch.Tensor) -> dict:
        d = torch.cdist(x.flatten(1), self.images)
        logits = torch.stack([-d[:, self.labels == c].min(1).values for c in range(self.classes)], 1)
        return {"logits": logits, "embedding": x.flatten(1), "hidden": []}


@pytest.fixture(scope="module")
def tiny_split():
    data = load_faces(DataConfig(synthetic_identities=12, synthetic_images=6, image_size=32))
    return split_identities(data, SplitConfig(n_private=6))


def test_psnr_of_identical_images_is_infinite_and_known_for_a_constant_offset() -> None:
    a = torch.rand(2, 3, 8, 8) * 0.5
    assert torch.isinf(psnr(a, a)).all()
    assert psnr(a, a + 0.1)[0].item() == pytest.approx(20.0, abs=1e-3)


def test_private_images_as_reconstructions_score_perfectly(tiny_split) -> None:
    s = tiny_split
    priv = s.train_images.float() / 255
    oracle = Oracle(priv, s.train_labels, s.num_private)
    m = evaluate_reconstructions(priv, s.train_labels, oracle, s.train_images, s.train_labels, s.public_images)
    assert m["top1"] == 1.0 and m["top5"] == 1.0
    assert m["knn_dist"] == pytest.approx(0.0, abs=1e-3)
    assert m["nn_feature_acc"] == 1.0 and m["nn_pixel_acc"] == 1.0
    assert m["sink_share"] == pytest.approx(4 / 24)  # 6 classes x 4 train images, predictions spread evenly
    assert math.isfinite(m["psnr_mean_face"]) and m["psnr_mean_face"] < 40


def test_one_sink_class_is_reported(tiny_split) -> None:
    s = tiny_split
    priv = s.train_images.float() / 255
    oracle = Oracle(priv, s.train_labels, s.num_private)
    sink = priv[s.train_labels == 0][:1].expand(len(priv), -1, -1, -1)
    m = evaluate_reconstructions(sink, s.train_labels, oracle, s.train_images, s.train_labels)
    assert m["sink_share"] == 1.0 and m["top1"] == pytest.approx(4 / 24)


def test_pca_prior_reconstructs_the_mean_at_zero_and_fits_its_data(tiny_split) -> None:
    prior = FacePrior.fit(tiny_split.public_images, components=8)
    pub = tiny_split.public_images.float() / 255
    assert torch.allclose(prior.decode(torch.zeros(1, 8))[0], pub.mean(0).clamp(0, 1), atol=1e-5)
    assert prior.basis.shape == (8, 3 * 32 * 32)
    assert torch.allclose(prior.basis @ prior.basis.T, torch.eye(8), atol=1e-4)


def test_pca_attack_raises_the_targets_confidence_and_stays_in_range(tiny_split) -> None:
    s = tiny_split
    torch.manual_seed(0)
    model = build_model(ModelConfig(num_classes=s.num_private, width=8, embedding_dim=16))
    Trainer(model, TrainerConfig(epochs=8, batch_size=8, lr=3e-3), s.num_private).fit(
        s.train_images, s.train_labels, progress=False)
    prior = FacePrior.fit(s.public_images, components=16)
    classes = torch.arange(s.num_private)
    before = [p.clone() for p in model.parameters()]
    recons, labels = pca_attack(model, prior, classes, PCAAttackConfig(steps=60, seeds=2),
                                torch.Generator().manual_seed(0))
    assert recons.shape == (12, 3, 32, 32) and recons.min() >= 0 and recons.max() <= 1
    assert labels.tolist() == [c for c in range(6) for _ in range(2)]
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
    with torch.no_grad():
        model.eval()
        p_attack = model(recons)["logits"].softmax(1)[torch.arange(12), labels].mean()
        p_mean = model(prior.decode(torch.zeros(12, 16)))["logits"].softmax(1)[torch.arange(12), labels].mean()
        real = s.train_images.float() / 255
        p_real = model(real)["logits"].softmax(1)[torch.arange(len(real)), s.train_labels].mean()
    # the target is weak (24 training images); the attack still beats the mean face and the real faces
    assert p_attack > 1.5 * p_mean and p_attack > p_real


def test_probe_returns_top1_with_its_resolution(tiny_split) -> None:
    s = tiny_split
    oracle = Oracle(s.train_images.float() / 255, s.train_labels, s.num_private)
    target = build_model(ModelConfig(num_classes=s.num_private, width=8, embedding_dim=16))
    probe = PrivacyProbe(s, oracle, ProbeConfig(identities=4, attack=PCAAttackConfig(steps=5, seeds=1)))
    score = probe(target)
    assert 0.0 <= score <= 1.0 and probe.resolution == 0.25
    assert probe.last["top1"] == score and probe.last["seconds"] > 0
