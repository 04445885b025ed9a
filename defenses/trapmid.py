"""Trap-MID (Liu and Chen, "Trap-MID: Trapdoor-based Defense against Model Inversion Attacks",
NeurIPS 2024, arXiv 2411.08460; code github.com/ntuaislab/Trap-MID).

Every class k gets a trigger t_k (an image); a triggered input ``(1 - alpha) x + alpha t_k`` is
trained to be classified as k whatever x is. An inversion attack that climbs the model's
confidence for k then finds the trigger, a shortcut, instead of the private faces of k. Each
training step, as the reference's ``engine.train`` does:

1. draw a trapdoor class per sample (every class equally often, ``torch.arange(K).repeat``
   shuffled in the reference);
2. update the triggers (model in eval mode): a discriminator (the target's architecture with one
   output) learns to tell clean from triggered images (BCE, one optimizer step), then each trigger
   takes one signed-gradient step ``t <- clip(t - step_size * sign(grad), 0, 1)`` on
   naturalness (the discriminator should call triggered images clean) plus effectiveness
   (cross-entropy of the model on the augmented triggered images towards their trapdoor class);
3. train the model on ``(1 - beta) CE(clean) + beta CE(triggered -> trapdoor class)``, both
   branches through the reference's augmentation (random resized crop, flip, rotation), which it
   uses only with trapdoors.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from veil.recognition.trainer import soft_cross_entropy


@dataclass(frozen=True)
class TrapMIDConfig:
    """Trap-MID's parameters; every default is the reference's ``config/celeba/classify_trap.json``
    (the paper's CelebA setting, Section 5.1 / Appendix C; the MNIST config is the same).

    Args:
        alpha: blend weight of the trigger, ``(1 - alpha) x + alpha t`` (``trapdoor.alpha`` 0.02;
            ``engine.blend``).
        beta: weight of the trapdoor loss, ``(1 - beta) CE(clean) + beta CE(trapdoor)``
            (``trapdoor.beta`` 0.2).
        step_size: signed-gradient step of the trigger update per batch (``trapdoor.step_size``
            1e-2); 0 keeps the random initial triggers (the reference's ``optimized: false``).
        discriminator: the naturalness term, a discriminator between clean and triggered images
            (``trapdoor.discriminator_loss`` true; the feature-level discriminators, false in the
            paper's configs, are not implemented).
        augment: the reference's augmentation of both branches (``engine.train``'s ``aug_list``:
            kornia RandomResizedCrop scale 0.8-1 square p 0.5, RandomHorizontalFlip p 0.5,
            RandomRotation 30 degrees p 0.5).
    """

    alpha: float = 0.02
    beta: float = 0.2
    step_size: float = 1e-2
    discriminator: bool = True
    augment: bool = True

    def __post_init__(self) -> None:
        if not 0 < self.alpha <= 1:  # nan fails
            raise ValueError(f"Trap-MID alpha (trigger blend weight) must be in (0, 1], got {self.alpha}")
        if not 0 < self.beta < 1:
            raise ValueError(f"Trap-MID beta (trapdoor loss weight) must be in (0, 1), got {self.beta}")
        if not 0 <= self.step_size < math.inf:
            raise ValueError(f"Trap-MID step size must be a number >= 0, got {self.step_size}")


def blend(images: torch.Tensor, triggers: torch.Tensor, labels: torch.Tensor, alpha: float) -> torch.Tensor:
    """Inject each sample's trigger: ``(1 - alpha) x + alpha t_label`` (the reference's ``blend``)."""
    return (1 - alpha) * images + alpha * triggers[labels]


def trapdoor_augment(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """The reference's augmentation in one batched resampling: per sample, with probability 0.5
    each, a square crop of 80-100% of the area resized back, a horizontal flip, and a rotation by
    up to 30 degrees (zero fill outside the crop, as kornia's rotation applied last)."""
    b = images.shape[0]
    draw = torch.rand(b, 7, generator=generator).to(images.device)
    crop, flip, rotate = draw[:, 0] < 0.5, draw[:, 1] < 0.5, draw[:, 2] < 0.5
    side = torch.where(crop, (0.8 + 0.2 * draw[:, 3]).sqrt(), torch.ones_like(draw[:, 3]))
    center = torch.stack([(2 * draw[:, 4] - 1), (2 * draw[:, 5] - 1)], 1) * (1 - side)[:, None]
    angle = torch.where(rotate, (2 * draw[:, 6] - 1) * math.radians(30), torch.zeros_like(draw[:, 6]))
    cos, sin = angle.cos(), angle.sin()
    rot = torch.stack([torch.stack([cos, -sin], 1), torch.stack([sin, cos], 1)], 1)  # (B, 2, 2)
    mirror = torch.ones(b, 2, device=images.device)
    mirror[:, 0] = torch.where(flip, -1.0, 1.0)
    linear = side[:, None, None] * mirror[:, :, None] * rot  # crop(flip(rotate(u)))
    theta = torch.cat([linear, center[:, :, None]], 2)
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    out = F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    rot_grid = F.affine_grid(torch.cat([rot, torch.zeros(b, 2, 1, device=images.device)], 2), list(images.shape),
                             align_corners=False)
    inside = (rot_grid.abs() <= 1).all(-1)[:, None]  # where the rotated (cropped) image has content
    return out * inside


class TrapMID:
    """Triggers, the naturalness discriminator and the per-step procedure for one target model.

    ``prepare`` (before each optimizer step: trapdoor classes, discriminator and trigger update)
    and ``loss_term`` (a trainer regularizer turning the step's loss into Trap-MID's) plug into
    ``recognition.Trainer``'s ``before_step`` and ``regularizers``.
    """

    def __init__(self, model: nn.Module, num_classes: int, image_shape: tuple[int, int, int],
                 config: TrapMIDConfig = TrapMIDConfig(), discriminator: nn.Module | None = None,
                 discriminator_optimizer: torch.optim.Optimizer | None = None, label_smoothing: float = 0.0,
                 seed: int = 0, device: str | torch.device = "cpu") -> None:
        if config.discriminator and (discriminator is None or discriminator_optimizer is None):
            raise ValueError("Trap-MID's naturalness term needs a discriminator and its optimizer")
        self.model, self.num_classes, self.config = model, num_classes, config
        self.discriminator, self.d_optimizer = discriminator, discriminator_optimizer
        self.label_smoothing = label_smoothing
        self.generator = torch.Generator().manual_seed(seed)
        self.device = torch.device(device)
        # uniform random triggers in [0, 1] (train.py: torch.rand((n_classes, C, H, W)))
        self.triggers = torch.rand((num_classes, *image_shape), generator=self.generator).to(self.device)
        self._deck = torch.empty(0, dtype=torch.long)
        self.labels: torch.Tensor | None = None  # this batch's trapdoor classes

    def draw_labels(self, n: int) -> torch.Tensor:
        """``n`` trapdoor classes from a shuffled deck holding every class once per round, so each
        class is drawn equally often over an epoch (as the reference's per-epoch iterator)."""
        rounds = -(-(n - len(self._deck)) // self.num_classes)
        if rounds > 0:
            fresh = torch.argsort(torch.rand(rounds, self.num_classes, generator=self.generator), 1).flatten()
            self._deck = torch.cat([self._deck, fresh])
        out, self._deck = self._deck[:n], self._deck[n:]
        return out.to(self.device)

    def _augment(self, images: torch.Tensor) -> torch.Tensor:
        return trapdoor_augment(images, self.generator) if self.config.augment else images

    def _targets(self, labels: torch.Tensor) -> torch.Tensor:
        """One-hot trapdoor targets, smoothed like the main task's (the reference's trapdoor
        criterion defaults to the main one, negative label smoothing included)."""
        y = F.one_hot(labels, self.num_classes).float()
        return (1 - self.label_smoothing) * y + self.label_smoothing / self.num_classes

    def augment(self, images: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The clean branch's augmentation (a trainer ``augment``)."""
        return self._augment(images), targets

    def prepare(self, images: torch.Tensor, lr: float | None = None) -> dict[str, float]:
        """Draw the batch's trapdoor classes, then one discriminator step and one trigger step
        (model in eval mode; its parameters get no gradient). ``lr``: the discriminator's learning
        rate this step (the reference trains it with the target's optimizer settings)."""
        c = self.config
        images = images.to(self.device)
        self.labels = labels = self.draw_labels(images.shape[0])
        if c.step_size == 0:
            return {}
        was_training = self.model.training
        self.model.eval()
        triggers = self.triggers.clone().requires_grad_(True)
        triggered = blend(images, triggers, labels, c.alpha)
        stats: dict[str, float] = {}
        loss = images.new_zeros(())
        if c.discriminator:
            d = self.discriminator
            d.train()
            real_fake = torch.cat([torch.ones(len(images)), torch.zeros(len(images))]).to(self.device)
            d_loss = F.binary_cross_entropy_with_logits(self._realness(torch.cat([images, triggered.detach()])),
                                                        real_fake)
            if lr is not None:
                for group in self.d_optimizer.param_groups:
                    group["lr"] = lr
            self.d_optimizer.zero_grad(set_to_none=True)
            d_loss.backward()
            self.d_optimizer.step()
            d.eval()
            natural = F.binary_cross_entropy_with_logits(self._realness(triggered),
                                                         torch.ones(len(images), device=self.device))
            loss = loss + natural
            stats.update(discriminator_loss=d_loss.item(), naturalness_loss=natural.item())
        effective = soft_cross_entropy(self.model(self._augment(triggered))["logits"], self._targets(labels))
        loss = loss + effective
        (grad,) = torch.autograd.grad(loss, triggers)
        self.triggers = (self.triggers - c.step_size * grad.sign()).clamp(0, 1)
        self.model.train(was_training)
        stats["effectiveness_loss"] = effective.item()
        return stats

    def _realness(self, images: torch.Tensor) -> torch.Tensor:
        """The discriminator's logit that ``images`` are clean (its two logits' difference: one
        output, as the reference's ``init_model(model_name, 1)``, for a model built for >= 2)."""
        logits = self.discriminator(images)["logits"]
        return logits[:, 1] - logits[:, 0]

    def loss_term(self, outputs: dict[str, Any], images: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """``beta (CE(triggered) - CE(clean))``: added to the trainer's clean loss it gives the
        reference's ``(1 - beta) CE(clean) + beta CE(trapdoor)``. The triggered batch is the step's
        batch with this batch's triggers blended in, then augmented."""
        if self.labels is None or len(self.labels) != len(images):
            self.labels = self.draw_labels(len(images))
        triggered = self._augment(blend(images, self.triggers, self.labels, self.config.alpha))
        trap = soft_cross_entropy(self.model(triggered)["logits"], self._targets(self.labels))
        self.labels = None
        return self.config.beta * (trap - soft_cross_entropy(outputs["logits"], targets))

    @torch.no_grad()
    def trigger_accuracy(self, images: torch.Tensor, batch_size: int = 256) -> float:
        """Share of triggered images (balanced trapdoor classes, no augmentation) the model assigns
        to their trigger's class: the reference's test-time trapdoor accuracy."""
        was_training = self.model.training
        self.model.eval()
        n = len(images)
        order = torch.randperm(n, generator=torch.Generator().manual_seed(0))  # fixed: training draws stay put
        all_labels = (torch.arange(n) % self.num_classes)[order].to(self.device)
        hits = 0
        try:
            for i in range(0, n, batch_size):
                x = images[i:i + batch_size].to(self.device)
                x = x.float() / 255 if x.dtype == torch.uint8 else x
                labels = all_labels[i:i + batch_size]
                hits += (self.model(blend(x, self.triggers, labels, self.config.alpha))["logits"].argmax(1)
                         == labels).sum().item()
        finally:
            self.model.train(was_training)
        return hits / max(1, n)


def before_step_hook(trap: TrapMID, lr: Callable[[], float] | None = None) -> Callable[[torch.Tensor, torch.Tensor], None]:
    """``trap.prepare`` as a trainer ``before_step`` hook, with the discriminator's learning rate
    read from ``lr`` (the target's schedule) each step."""
    def hook(images: torch.Tensor, targets: torch.Tensor) -> None:
        trap.prepare(images, lr() if lr is not None else None)
    return hook
