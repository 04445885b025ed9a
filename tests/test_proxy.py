"""The cheap privacy proxies: range, determinism, the optional attack proxy, the low-pass and
projection edge cases, mode handling, and bad input."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch import nn

from veil.attacks.harness import pick_identities, target_accuracy
from veil.attacks.pca import FacePrior
from veil.attacks.proxy import PROXIES, ProxyConfig, low_pass, privacy_proxies, project_onto_prior
from veil.recognition import DataConfig, ModelConfig, SplitConfig, Trainer, TrainerConfig, build_model, load_faces
from veil.recognition.data import split_identities

FAST = ProxyConfig(components=16, probe_identities=3, probe_steps=15, probe_restarts=1, lowpass_radius=0.3)


class Constant(nn.Module):
    """A model whose logits are ``value`` for every class, whatever the input."""

    def __init__(self, classes: int, value: float = 0.0) -> None:
        super().__init__()
        self.classes, self.value = classes, value

    def forward(self, x: torch.Tensor) -> dict:
        logits = torch.full((x.shape[0], self.classes), self.value) + 0.0 * x.flatten(1)[:, :1]
        return {"logits": logits, "embedding": x.flatten(1), "hidden": []}


class OneClass(nn.Module):
    """A model that predicts class ``k`` for every input."""

    def __init__(self, classes: int, k: int) -> None:
        super().__init__()
        self.classes, self.k = classes, k

    def forward(self, x: torch.Tensor) -> dict:
        logits = 10.0 * nn.functional.one_hot(torch.full((x.shape[0],), self.k), self.classes).float()
        return {"logits": logits, "embedding": x.flatten(1), "hidden": []}


@pytest.fixture(scope="module")
def split():
    data = load_faces(DataConfig(synthetic_identities=12, synthetic_images=6, image_size=32, use_cache=False))
    return split_identities(data, SplitConfig(n_private=6))


def _trained(split, seed: int, dropout: float = 0.0) -> nn.Module:
    torch.manual_seed(seed)
    model = build_model(ModelConfig(num_classes=split.num_private, image_size=32, width=8, embedding_dim=16,
                                    dropout=dropout))
    Trainer(model, TrainerConfig(epochs=6, batch_size=8, lr=3e-3, seed=seed), split.num_private).fit(
        split.train_images, split.train_labels, progress=False)
    return model.eval()


@pytest.fixture(scope="module")
def target(split) -> nn.Module:
    return _trained(split, seed=0, dropout=0.5)


@pytest.fixture(scope="module")
def eval_model(split) -> nn.Module:
    return _trained(split, seed=1)


@pytest.fixture(scope="module")
def full(split, target, eval_model) -> dict[str, float]:
    torch.manual_seed(0)
    return privacy_proxies(target, split, eval_model, FAST)


def test_all_proxies_are_present_and_in_the_unit_interval(full) -> None:
    out = full
    assert set(out) == set(PROXIES)
    assert all(isinstance(v, float) and 0.0 <= v <= 1.0 for v in out.values()), out


def test_same_inputs_give_the_same_numbers_whatever_the_global_seed(split, target, eval_model, full) -> None:
    torch.manual_seed(1)  # full was computed after manual_seed(0)
    assert privacy_proxies(target, split, eval_model, FAST) == full


def test_a_target_in_train_mode_is_scored_in_eval_mode_and_left_in_train_mode(split, target, eval_model,
                                                                             full) -> None:
    target.train()  # dropout 0.5: were it left on, the numbers would move
    try:
        got = privacy_proxies(target, split, eval_model, FAST)
        assert target.training
    finally:
        target.eval()
    assert got == full  # full was computed with the target in eval mode
    assert not eval_model.training


def test_the_attack_proxy_is_left_out_without_an_evaluation_model(split, target, full) -> None:
    cheap = privacy_proxies(target, split, None, FAST)
    assert set(cheap) == {"proxy_conf", "proxy_lowpass"}
    assert cheap == {k: full[k] for k in cheap}


def test_the_attack_proxy_is_the_share_the_evaluation_model_reads_as_their_identity(split, target) -> None:
    probed = pick_identities(split.num_private, FAST.probe_identities, FAST.seed)
    unprobed = next(k for k in range(split.num_private) if k not in probed.tolist())
    # an evaluation model that answers k whatever it sees: right for the one restart of identity k only
    yes = privacy_proxies(target, split, OneClass(split.num_private, int(probed[0])), FAST)["proxy_pca5"]
    no = privacy_proxies(target, split, OneClass(split.num_private, unprobed), FAST)["proxy_pca5"]
    assert yes == pytest.approx(1.0 / len(probed)) and no == 0.0


def test_a_low_pass_keeping_every_frequency_is_the_plain_top1(split, target) -> None:
    # radial frequencies reach sqrt(2) of Nyquist in the corners, so 1.5 keeps them all
    x = split.test_images.float() / 255
    assert torch.allclose(low_pass(split.test_images, 1.5), x, atol=1e-5)
    out = privacy_proxies(target, split, None, dataclasses.replace(FAST, lowpass_radius=1.5))
    assert out["proxy_lowpass"] == pytest.approx(target_accuracy(target, split)["top1"])


def test_a_low_pass_keeping_only_dc_leaves_each_channel_mean(split) -> None:
    x = split.test_images.float() / 255
    flat = low_pass(split.test_images, 1e-6)
    assert torch.allclose(flat, x.mean(dim=(2, 3), keepdim=True).expand_as(x), atol=1e-5)


def test_projection_onto_the_public_basis_keeps_public_images_it_was_fitted_on(split) -> None:
    pub = split.public_images[:10]
    prior = FacePrior.fit(pub, components=9)  # 10 images span a 9-dimensional affine subspace
    assert torch.allclose(project_onto_prior(pub, prior), pub.float() / 255, atol=1e-4)


def test_uniform_logits_give_a_confidence_of_one_over_the_classes(split) -> None:
    out = privacy_proxies(Constant(split.num_private), split, None, FAST)
    assert out["proxy_conf"] == pytest.approx(1.0 / split.num_private, abs=1e-6)


def test_an_empty_held_out_set_is_refused(split, target) -> None:
    empty = dataclasses.replace(split, test_images=split.test_images[:0], test_labels=split.test_labels[:0])
    with pytest.raises(ValueError, match="held-out.*empty"):
        privacy_proxies(target, empty, None, FAST)


def test_nan_logits_are_refused_naming_the_proxy(split) -> None:
    with pytest.raises(ValueError, match="proxy_conf"):
        privacy_proxies(Constant(split.num_private, float("nan")), split, None, FAST)


def test_a_bad_config_is_refused() -> None:
    with pytest.raises(ValueError, match="lowpass_radius"):
        ProxyConfig(lowpass_radius=0.0)
    with pytest.raises(ValueError, match="probe_identities"):
        ProxyConfig(probe_identities=0)
