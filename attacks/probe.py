"""The cheap privacy probe the environment calls every K steps: the PCA-prior attack on a fixed
list of private identities for about 100 steps, scored by an evaluation model."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch
from torch import nn

from veil.recognition.device import module_device

from .metrics import evaluate_reconstructions
from .pca import FacePrior, PCAAttackConfig, pca_attack


@dataclass(frozen=True)
class ProbeConfig:
    """Args: identities: how many private identities (the first N of a seeded permutation);
    attack: the PCA attack's settings; seed: fixes identities and restarts."""

    identities: int = 10
    attack: PCAAttackConfig = field(default_factory=lambda: PCAAttackConfig(steps=100, seeds=1))
    seed: int = 0


class PrivacyProbe:
    """``probe(target) -> attack top-1`` by the evaluation model; ``last`` holds the full metrics,
    ``resolution`` the size of one reconstruction's step in top-1 (1 / number of reconstructions)."""

    def __init__(self, split, eval_model: nn.Module, config: ProbeConfig = ProbeConfig()) -> None:
        self.config = config
        self.split = split
        self.eval_model = eval_model
        self.prior = FacePrior.fit(split.public_images, config.attack.components)
        g = torch.Generator().manual_seed(config.seed)
        n = min(config.identities, split.num_private)
        self.classes = torch.randperm(split.num_private, generator=g)[:n].sort().values
        keep = torch.isin(split.train_labels, self.classes)
        self.private_images, self.private_labels = split.train_images[keep], split.train_labels[keep]
        self.resolution = 1.0 / (n * config.attack.seeds)
        self.last: dict[str, float] = {}

    def __call__(self, target: nn.Module) -> float:
        t0 = time.perf_counter()
        g = torch.Generator().manual_seed(self.config.seed)
        self.prior = self.prior.to(module_device(target))  # moved once, where the target trains
        recons, labels = pca_attack(target, self.prior, self.classes, self.config.attack, g)
        self.last = evaluate_reconstructions(recons, labels, self.eval_model, self.private_images,
                                             self.private_labels)
        self.last["seconds"] = time.perf_counter() - t0
        self.last["resolution"] = self.resolution
        return self.last["top1"]
