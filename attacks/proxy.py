"""Cheap privacy proxies of a trained target: candidate reward signals, each a number in [0, 1]
(higher = more exposed), to be validated against the full attacks (rank correlation over many
targets) before any of them stands in for one.

- ``proxy_pca5``: the PCA-prior attack on a few private identities, scored by the evaluation
  model (the share of reconstructions it reads as their identity): a small full attack.
- ``proxy_conf``: the target's mean true-class probability on the held-out private images
  projected onto the public PCA basis, i.e. inside the PCA attack's own search space; nearly free.
- ``proxy_lowpass``: the target's top-1 on low-passed held-out images: how much identity the
  coarse, face-prior-like part of an image carries for the target.

Held-out images are ``split.test_images`` (validation images in a validation split), never the
training images the attacks try to recover.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from veil.defenses.mixup import radial_frequency
from veil.recognition.device import module_device

from .harness import pick_identities
from .metrics import _forward, _unit
from .pca import FacePrior, PCAAttackConfig, pca_attack

PROXIES = ("proxy_pca5", "proxy_conf", "proxy_lowpass")


@dataclass(frozen=True)
class ProxyConfig:
    """Args:
        components: public PCA basis size (as the PCA attack's prior).
        probe_identities: private identities the few-identity PCA probe attacks.
        probe_steps, probe_restarts: the probe's Adam steps and restarts per identity.
        lowpass_radius: radial frequencies below this fraction of Nyquist are kept by the low-pass
            proxy (frequencies reach sqrt(2) in the corners: any radius above keeps everything).
        seed: fixes the probed identities and the attack's random starts.
    """

    components: int = 64
    probe_identities: int = 5
    probe_steps: int = 100
    probe_restarts: int = 2
    lowpass_radius: float = 0.1
    seed: int = 0

    def __post_init__(self) -> None:
        if min(self.components, self.probe_identities, self.probe_steps, self.probe_restarts) < 1:
            raise ValueError(f"components, probe_identities, probe_steps and probe_restarts must be >= 1, got "
                             f"{self.components}, {self.probe_identities}, {self.probe_steps}, {self.probe_restarts}")
        if not (self.lowpass_radius > 0 and math.isfinite(self.lowpass_radius)):
            raise ValueError(f"lowpass_radius must be a positive number, got {self.lowpass_radius}")


@torch.no_grad()
def project_onto_prior(images: torch.Tensor, prior: FacePrior) -> torch.Tensor:
    """uint8 or [0, 1] images (N, C, H, W) -> their projection onto the prior's PCA subspace, in [0, 1]."""
    flat = _unit(images).to(prior.mean.device).flatten(1) - prior.mean
    proj = prior.mean + (flat @ prior.basis.T) @ prior.basis
    return proj.reshape(-1, *prior.shape).clamp(0.0, 1.0)


@torch.no_grad()
def low_pass(images: torch.Tensor, radius: float) -> torch.Tensor:
    """uint8 or [0, 1] images (N, C, H, W) with only the Fourier frequencies of radius < ``radius``
    (fraction of Nyquist) kept, clamped to [0, 1]."""
    x = _unit(images)
    h, w = x.shape[-2:]
    mask = (radial_frequency(h, w, x.device) < radius).to(x.dtype)
    return torch.fft.irfft2(torch.fft.rfft2(x) * mask, s=(h, w)).clamp(0.0, 1.0)


def _checked(name: str, value: torch.Tensor) -> float:
    """A proxy's value as a float; NaN (or inf) is a one-line ValueError naming the proxy."""
    v = float(value)
    if not math.isfinite(v):
        raise ValueError(f"privacy proxy {name} is {v} (the model's logits are not finite)")
    return v


def privacy_proxies(target: nn.Module, split, eval_model: nn.Module | None,
                    config: ProxyConfig = ProxyConfig()) -> dict[str, float]:
    """The proxies of ``PROXIES`` for ``target`` on ``split``, each in [0, 1] (higher = more exposed);
    ``proxy_pca5`` is left out when ``eval_model`` is None. ``target`` keeps its parameters and mode."""
    images, labels = split.test_images, split.test_labels
    if len(images) == 0 or len(labels) == 0:
        raise ValueError(f"privacy proxies need held-out private images, but the split's {_kind(split)} "
                         "set (test_images) is empty")
    device = module_device(target)
    prior = FacePrior.fit(split.public_images, config.components).to(device)
    was_training = target.training
    target.eval()
    out: dict[str, float] = {}
    try:
        if eval_model is not None:
            classes = pick_identities(split.num_private, config.probe_identities, config.seed)
            attack = PCAAttackConfig(components=config.components, steps=config.probe_steps,
                                     seeds=config.probe_restarts)
            g = torch.Generator().manual_seed(config.seed)
            recons, rec_labels = pca_attack(target, prior, classes, attack, g)
            eval_logits, _ = _forward(eval_model, recons)
            out["proxy_pca5"] = _checked("proxy_pca5", _top1(eval_logits, rec_labels.to(eval_logits.device), "proxy_pca5"))
        labels = labels.to(device)
        logits, _ = _forward(target, project_onto_prior(images, prior))
        _check_classes(logits, labels)
        true_prob = logits.softmax(1).gather(1, labels[:, None]).mean()
        out["proxy_conf"] = _checked("proxy_conf", true_prob)
        logits, _ = _forward(target, low_pass(images.to(device), config.lowpass_radius))
        out["proxy_lowpass"] = _checked("proxy_lowpass", _top1(logits, labels, "proxy_lowpass"))
    finally:
        target.train(was_training)
    return out


def _top1(logits: torch.Tensor, labels: torch.Tensor, name: str) -> torch.Tensor:
    """Share of rows whose arg-max is their label; NaN logits are refused (arg-max would hide them)."""
    if not torch.isfinite(logits).all():
        raise ValueError(f"privacy proxy {name}: the model's logits are not finite (NaN or inf)")
    _check_classes(logits, labels)
    return (logits.argmax(1) == labels).float().mean()


def _check_classes(logits: torch.Tensor, labels: torch.Tensor) -> None:
    """A model with fewer classes than the split's labels is a one-line ValueError, not an index error."""
    if int(labels.max()) >= logits.shape[1]:
        raise ValueError(f"the model predicts {logits.shape[1]} classes but the split has label {int(labels.max())}")


def _kind(split) -> str:
    """``test`` or ``validation``: what the split's held-out images are, for messages."""
    return str(getattr(split, "kind", "test"))


__all__ = ["PROXIES", "ProxyConfig", "low_pass", "privacy_proxies", "project_onto_prior"]
