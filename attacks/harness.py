"""The attack harness: run one model-inversion attack on a target, over several attack seeds,
and score it with the evaluation model into an ``AttackReport``.

Attacks are looked up by name in ``ATTACKS``; each is a function
``(target, split, classes, settings, generator) -> (images in [0, 1], labels[, budget])`` so a
new attack is one entry; the optional ``budget`` dict (e.g. GAN steps done under a time cap) goes
to the report's ``extra["budget"]``. ``settings`` is an ``AttackSettings`` (``veil.attacks.settings``),
which derives each attack's config; settings not given take each attack's own defaults.

An attack runs where the target is (``veil.recognition.device.module_device``): move the target and
the evaluation model to the device first. Each seed's reconstructions come back to the CPU once.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from veil.recognition.device import module_device
from veil.recognition.progress import progress_bar

from .gan import GANBundle, train_gan
from .gmi import GMIConfig, gmi_attack
from .kedmi import KEDMIConfig, kedmi_attack, train_kedmi_gan
from .metrics import _forward, evaluate_reconstructions
from .pca import FacePrior, PCAAttackConfig, pca_attack
from .plgmi import PLGMIConfig, plgmi_attack, train_plgmi_gan
from .report import AttackReport
from .settings import AttackSettings
from .whitebox import WhiteBoxConfig, whitebox_attack

AttackFn = Callable[[nn.Module, Any, torch.Tensor, AttackSettings, torch.Generator], tuple]


def _pca(target: nn.Module, split, classes: torch.Tensor, settings: AttackSettings,
         generator: torch.Generator) -> tuple:
    """The PCA-prior attack, its prior fitted on the public images."""
    cfg = settings.attack_config(PCAAttackConfig)
    prior = FacePrior.fit(split.public_images, cfg.components)
    return pca_attack(target, prior, classes, cfg, generator)


def _whitebox(target: nn.Module, split, classes: torch.Tensor, settings: AttackSettings,
              generator: torch.Generator) -> tuple:
    """White-box inversion from the public mean face."""
    return whitebox_attack(target, split.public_images, classes, settings.attack_config(WhiteBoxConfig), generator)


def gan_budget(gan: GANBundle) -> dict[str, Any]:
    """What a GAN prior cost: steps done of steps asked, seconds, and whether the time cap cut it
    short. A time-capped GAN trains fewer steps on a busier or slower machine, so two results are
    comparable only when their steps are."""
    return {"gan_steps_done": int(gan.steps_done), "gan_steps": int(gan.config.steps),
            "gan_max_seconds": gan.config.max_seconds, "gan_seconds": round(float(gan.seconds), 1),
            "gan_time_capped": bool(gan.steps_done < gan.config.steps), "gan_from_cache": bool(gan.from_cache)}


def _gmi(target: nn.Module, split, classes: torch.Tensor, settings: AttackSettings,
         generator: torch.Generator) -> tuple:
    """GMI: the WGAN-GP prior is trained once per public set and config (cached), not per target."""
    gan = train_gan(split.public_images, settings.gan_config(), source=split.source, device=module_device(target))
    cfg = settings.attack_config(GMIConfig)
    return (*gmi_attack(target, gan, classes, cfg, generator, public_images=split.public_images), gan_budget(gan))


def _kedmi(target: nn.Module, split, classes: torch.Tensor, settings: AttackSettings,
           generator: torch.Generator) -> tuple:
    """KEDMI: its GAN learns from the target's soft labels, so it trains per target (cached by weights)."""
    gan = train_kedmi_gan(target, split.public_images, settings.gan_config(n_critic=1), source=split.source)
    cfg = settings.attack_config(KEDMIConfig)
    return (*kedmi_attack(target, gan, classes, cfg, generator, public_images=split.public_images), gan_budget(gan))


def _plgmi(target: nn.Module, split, classes: torch.Tensor, settings: AttackSettings,
           generator: torch.Generator) -> tuple:
    """PLG-MI: a conditional GAN on public images pseudo-labelled by the target, per target."""
    gan = train_plgmi_gan(target, split.public_images, settings.gan_config(), source=split.source)
    cfg = settings.attack_config(PLGMIConfig)
    return (*plgmi_attack(target, gan, classes, cfg, generator, public_images=split.public_images), gan_budget(gan))


ATTACKS: dict[str, AttackFn] = {"pca": _pca, "whitebox": _whitebox, "gmi": _gmi, "kedmi": _kedmi, "plgmi": _plgmi}


def register(name: str, fn: AttackFn) -> None:
    """Add an attack under ``name`` (the GAN attacks and white-box inversion register here)."""
    ATTACKS[name] = fn


@dataclass(frozen=True)
class HarnessConfig:
    """Args:
        identities: private identities attacked (the first N of a seeded permutation; 0 = all).
        attack_seeds: independent runs of the attack (each with its own restarts); the report
            gives mean ± std over them.
        settings: the attack's options (``AttackSettings``: restarts per identity, steps, LOMMA,
            the GAN prior's budget); those not given keep each attack's own defaults.
        seed: fixes the identities and the attack seeds.
    """

    identities: int = 0
    attack_seeds: int = 2
    settings: AttackSettings = field(default_factory=AttackSettings)
    seed: int = 0

    def __post_init__(self) -> None:
        if not isinstance(self.settings, AttackSettings):
            raise TypeError(f"settings must be an AttackSettings, got {type(self.settings).__name__} (build one "
                            "from a dict with AttackSettings.from_mapping(d, where=...))")
        if self.identities < 0 or self.attack_seeds < 1:
            raise ValueError(f"identities must be >= 0 and attack_seeds >= 1, got {self.identities}, "
                             f"{self.attack_seeds}")


def pick_identities(num_private: int, n: int, seed: int) -> torch.Tensor:
    """The fixed, sorted list of attacked identities."""
    g = torch.Generator().manual_seed(seed)
    n = num_private if n <= 0 else min(n, num_private)
    return torch.randperm(num_private, generator=g)[:n].sort().values


def run_attack(name: str, target: nn.Module, split, eval_model: nn.Module, config: HarnessConfig = HarnessConfig(),
               progress: bool = True) -> AttackReport:
    """Attack ``target`` with attack ``name`` and score the reconstructions; ``target`` is left
    unchanged (each attack restores parameters and mode)."""
    if name not in ATTACKS:
        raise ValueError(f"unknown attack {name!r}; known: {sorted(ATTACKS)}")
    classes = pick_identities(split.num_private, config.identities, config.seed)
    keep = torch.isin(split.train_labels, classes)
    priv_x, priv_y = split.train_images[keep], split.train_labels[keep]
    images, labels, per_seed, seconds = [], [], [], []
    budget: dict[str, Any] = {}
    for s in progress_bar(range(config.attack_seeds), desc=f"attack {name}", unit="seed", enabled=progress):
        g = torch.Generator().manual_seed(config.seed * 1000 + s)
        torch.manual_seed(config.seed * 1000 + s)
        t0 = time.perf_counter()
        out = ATTACKS[name](target, split, classes, config.settings, g)
        x, y = out[0].detach().cpu(), out[1].cpu()  # one copy per seed, not per step
        if len(out) > 2 and not budget:  # the first seed trains what later seeds reuse
            budget = dict(out[2])
        seconds.append(time.perf_counter() - t0)
        if x.shape[1:] != split.train_images.shape[1:] or not torch.isfinite(x).all():
            raise ValueError(f"attack {name} returned images of shape {tuple(x.shape)} (finite: "
                             f"{bool(torch.isfinite(x).all())}); expected (*, {tuple(split.train_images.shape[1:])})")
        images.append(x.clamp(0, 1))
        labels.append(y)
        per_seed.append(evaluate_reconstructions(x, y, eval_model, priv_x, priv_y))
    recons, rec_labels = torch.cat(images), torch.cat(labels)
    report = AttackReport.build(name, recons, rec_labels, eval_model, split, priv_x, priv_y, per_seed,
                                settings=config.settings.to_dict(), seconds=seconds, classes=classes)
    if budget:
        report.extra["budget"] = budget
    return report


def target_accuracy(target: nn.Module, split) -> dict[str, float]:
    """Clean top-1/top-5 of the target on the private test split, and ``collapsed`` (1.0 when its
    logits do not depend on the input: a model that never learned, whose 'privacy' is no defense)."""
    logits, _ = _forward(target, split.test_images)
    k = min(5, logits.shape[1])
    topk = logits.topk(k, 1).indices
    y = split.test_labels.to(logits.device)
    collapsed = float(len(logits) > 1 and logits.std(0).max().item() < 1e-5)
    return {"top1": (topk[:, 0] == y).float().mean().item(), "top5": (topk == y[:, None]).any(1).float().mean().item(),
            "collapsed": collapsed}
