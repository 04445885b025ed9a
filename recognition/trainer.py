"""The face-recognition trainer: a one-batch ``step`` (what the RL environment calls), a
side-effect-free ``evaluate_batch``, ``fit`` built on ``step``, clean top-1/top-5 evaluation,
an LR schedule and atomic, resumable checkpoints. It knows nothing of RL or MLflow."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .data import Images, MappedImages, one_hot, random_hflip, to_float
from .device import DeviceConfig, as_device_config, autocast, grad_scaler, to_device
from .io import atomic_torch_save
from .progress import progress_bar

Augment = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]
"""A batch transform ``(images in [0,1], soft targets) -> (images, soft targets)``."""
Regularizer = Callable[[dict[str, Any], torch.Tensor, torch.Tensor], torch.Tensor]
"""An extra loss term ``(model outputs, images, soft targets) -> scalar`` (MID, BiDO hook)."""
BeforeStep = Callable[[torch.Tensor, torch.Tensor], None]
"""Called by ``step`` with the batch ``(images, soft targets)`` on the device before the model's
forward pass: for defenses whose own state follows the model batch by batch (Trap-MID's triggers)."""


@dataclass(frozen=True)
class TrainerConfig:
    """Optimization settings.

    Args:
        epochs: passes over the private training split in ``fit``.
        batch_size: images per step.
        lr: peak learning rate.
        optimizer: ``adam``, ``adamw`` or ``sgd`` (momentum 0.9, nesterov).
        weight_decay: L2 / decoupled weight decay.
        schedule: ``cosine`` (to 1% of ``lr``), ``step`` (x0.1 at 50% and 75%) or ``constant``;
            over ``total_steps`` (set by ``fit`` when unset; constant when neither is known).
        warmup_steps: linear warm-up steps.
        hflip: random horizontal flips in ``fit`` (standard for faces; not a privacy defense).
        grad_clip: clip the gradient norm to this value (``None``: no clipping, norm still reported).
        seed: seeds the model-independent randomness (shuffling, flips).
        eval_batch_size: batch size of ``evaluate``.
    """

    epochs: int = 10
    batch_size: int = 64
    lr: float = 1e-3
    optimizer: str = "adam"
    weight_decay: float = 0.0
    schedule: str = "cosine"
    warmup_steps: int = 0
    total_steps: int | None = None
    hflip: bool = True
    grad_clip: float | None = None
    seed: int = 0
    eval_batch_size: int = 256

    def __post_init__(self) -> None:
        if self.optimizer not in ("adam", "adamw", "sgd"):
            raise ValueError(f"optimizer must be adam, adamw or sgd, got {self.optimizer!r}")
        if self.schedule not in ("cosine", "step", "constant"):
            raise ValueError(f"schedule must be cosine, step or constant, got {self.schedule!r}")
        if not 0 < self.lr < torch.finfo(torch.float32).max:  # nan fails too; beyond float32 the optimizer overflows
            raise ValueError(f"lr must be a positive number below {torch.finfo(torch.float32).max:.3g}, got {self.lr}")
        if self.batch_size < 1 or self.epochs < 0:
            raise ValueError(f"batch_size must be >= 1 and epochs >= 0, got {self.batch_size}, {self.epochs}")


@dataclass
class StepStats:
    """What one batch did: mean loss, top-1 accuracy against argmax of the soft targets, and the
    gradient norm before clipping (``nan`` for ``evaluate_batch``)."""

    loss: float
    accuracy: float
    grad_norm: float = float("nan")


def soft_cross_entropy(logits: torch.Tensor, soft_targets: torch.Tensor) -> torch.Tensor:
    """Cross-entropy against soft targets (MixUp mixes labels), averaged over the batch."""
    return -(soft_targets * F.log_softmax(logits, dim=1)).sum(dim=1).mean()


def make_optimizer(model: nn.Module, config: TrainerConfig) -> torch.optim.Optimizer:
    """The optimizer ``config`` names over ``model``'s trainable parameters (also for a defense's
    auxiliary network trained with the target's settings, e.g. Trap-MID's discriminator)."""
    params = [p for p in model.parameters() if p.requires_grad]
    if config.optimizer == "sgd":
        return torch.optim.SGD(params, lr=config.lr, momentum=0.9, nesterov=True, weight_decay=config.weight_decay)
    if config.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    return torch.optim.Adam(params, lr=config.lr, weight_decay=config.weight_decay)


class Trainer:
    """Trains ``model`` (any ``veil.recognition.models`` backbone) on soft targets, on ``device``
    (a name or a ``DeviceConfig`` with mixed precision, channels-last and ``torch.compile``).

    Example:
        >>> trainer = Trainer(model, TrainerConfig(epochs=5), num_classes=50)
        >>> stats = trainer.step(images, soft_targets)      # one optimizer step
        >>> trainer.fit(split.train_images, split.train_labels, split.test_images, split.test_labels)
        >>> trainer.evaluate(split.test_images, split.test_labels)["top1"]
    """

    def __init__(self, model: nn.Module, config: TrainerConfig, num_classes: int,
                 device: str | torch.device | DeviceConfig = "cpu") -> None:
        self.config = config
        self.num_classes = num_classes
        # ``device``: a device name, or a DeviceConfig with the speed options (AMP, channels-last, compile)
        self.device_config = as_device_config(device)
        self.device = self.device_config.resolve()
        torch.manual_seed(config.seed)
        self.model = model.to(self.device)
        if self.device_config.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.scaler = grad_scaler(self.device, self.device_config.amp)  # fp16 on CUDA only
        self._compiled: tuple[nn.Module, Callable[..., Any]] | None = None
        self.optimizer = self._make_optimizer()
        self.generator = torch.Generator().manual_seed(config.seed)
        self.total_steps = config.total_steps
        self.global_step = 0
        self.epoch = 0
        self.history: list[dict[str, float]] = []
        self.regularizers: list[Regularizer] = []
        self.before_step: list[BeforeStep] = []
        self.last_stats: StepStats | None = None  # what the last step() saw (a policy augmenter reads it)

    # ------------------------------------------------------------------ optimization

    def _make_optimizer(self) -> torch.optim.Optimizer:
        return make_optimizer(self.model, self.config)

    def lr_at(self, step: int) -> float:
        """The scheduled learning rate at ``step``."""
        c = self.config
        if c.warmup_steps and step < c.warmup_steps:
            return c.lr * (step + 1) / c.warmup_steps
        if not self.total_steps or c.schedule == "constant":
            return c.lr
        t = min(1.0, (step - c.warmup_steps) / max(1, self.total_steps - c.warmup_steps))
        if c.schedule == "cosine":
            return c.lr * (0.01 + 0.99 * 0.5 * (1.0 + math.cos(math.pi * t)))
        return c.lr * (0.1 ** ((t >= 0.5) + (t >= 0.75)))

    def _check_batch(self, images: torch.Tensor, soft_targets: torch.Tensor) -> None:
        if images.ndim != 4 or not images.is_floating_point():
            raise ValueError(f"images must be float (B, C, H, W) in [0, 1], got {images.dtype} {tuple(images.shape)}")
        if soft_targets.shape != (images.shape[0], self.num_classes):
            raise ValueError(f"soft_targets must have shape ({images.shape[0]}, {self.num_classes}), "
                             f"got {tuple(soft_targets.shape)}")
        if not bool(torch.isfinite(images).all() & torch.isfinite(soft_targets).all()):  # one host sync for both
            if not torch.isfinite(images).all():
                raise ValueError(f"images contain {int((~torch.isfinite(images)).sum())} NaN/inf values")
            raise ValueError("soft_targets contain NaN/inf values")

    def net(self) -> Callable[..., Any]:
        """The model as the forward passes call it: ``torch.compile``d with ``DeviceConfig.compile``
        (rebuilt if ``self.model`` was replaced, e.g. wrapped by DP-SGD), else the model itself."""
        if not self.device_config.compile:
            return self.model
        if self._compiled is None or self._compiled[0] is not self.model:
            self._compiled = (self.model, torch.compile(self.model))
        return self._compiled[1]

    def _inputs(self, images: torch.Tensor) -> torch.Tensor:
        """A float batch on the device, channels-last when the model is."""
        images = to_device(images, self.device)
        return images.contiguous(memory_format=torch.channels_last) if self.device_config.channels_last else images

    def loss(self, outputs: dict[str, Any], images: torch.Tensor, soft_targets: torch.Tensor) -> torch.Tensor:
        """Soft cross-entropy plus every registered regularizer."""
        loss = soft_cross_entropy(outputs["logits"], soft_targets)
        for reg in self.regularizers:
            loss = loss + reg(outputs, images, soft_targets)
        return loss

    def step(self, images: torch.Tensor, soft_targets: torch.Tensor) -> StepStats:
        """One optimizer step on a batch of float images in [0, 1] with soft targets (after the
        ``before_step`` hooks)."""
        self._check_batch(images, soft_targets)
        images, soft_targets = self._inputs(images), to_device(soft_targets, self.device)
        for hook in self.before_step:
            hook(images, soft_targets)
        self.model.train()
        lr = self.lr_at(self.global_step)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        with autocast(self.device, self.device_config.amp):
            outputs = self.net()(images)
            loss = self.loss(outputs, images, soft_targets)
        self.optimizer.zero_grad(set_to_none=True)
        (loss if self.scaler is None else self.scaler.scale(loss)).backward()
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)
        params = [p for p in self.model.parameters() if p.grad is not None]
        grad_norm = torch.nn.utils.clip_grad_norm_(params, self.config.grad_clip or float("inf"))
        acc = (outputs["logits"].argmax(1) == soft_targets.argmax(1)).float().mean()
        # one host sync per step: the loss (checked before the weights move), accuracy and gradient norm
        loss_v, acc_v, norm_v = torch.stack([loss.detach().float(), acc, grad_norm.float()]).tolist()
        if not math.isfinite(loss_v):
            raise FloatingPointError(f"non-finite loss {loss_v} at step {self.global_step} (lr={lr:.3g}); "
                                     "lower the learning rate or check the inputs")
        if self.scaler is None:
            self.optimizer.step()
        else:  # skips the step when fp16 gradients overflowed, and adapts the scale
            self.scaler.step(self.optimizer)
            self.scaler.update()
        self.global_step += 1
        self.last_stats = StepStats(loss_v, acc_v, norm_v)
        return self.last_stats

    @torch.no_grad()
    def evaluate_batch(self, images: torch.Tensor, soft_targets: torch.Tensor) -> StepStats:
        """Loss and accuracy of a batch in eval mode; parameters, buffers and the train/eval
        mode are left exactly as they were (the env's policy phase relies on it)."""
        self._check_batch(images, soft_targets)
        was_training = self.model.training
        self.model.eval()
        try:
            with autocast(self.device, self.device_config.amp):
                outputs = self.net()(self._inputs(images))
            logits = outputs["logits"].float()
            targets = to_device(soft_targets, self.device)
            loss = soft_cross_entropy(logits, targets)
            acc = (logits.argmax(1) == targets.argmax(1)).float().mean()
        finally:
            self.model.train(was_training)
        loss_v, acc_v = torch.stack([loss, acc]).tolist()  # one host sync
        return StepStats(loss_v, acc_v)

    @torch.no_grad()
    def evaluate(self, images: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
        """Clean top-1, top-5 and loss on uint8 (or [0, 1] float) images with hard labels."""
        if len(labels) == 0:
            raise ValueError("evaluate() got an empty set")
        was_training = self.model.training
        self.model.eval()
        k = min(5, self.num_classes)
        losses, hits1, hits5 = [], [], []  # per batch, on the device: one host sync at the end
        try:
            for i in range(0, len(labels), self.config.eval_batch_size):
                x = to_device(images[i:i + self.config.eval_batch_size], self.device)
                x = to_float(x) if x.dtype == torch.uint8 else x
                y = to_device(labels[i:i + self.config.eval_batch_size], self.device)
                with autocast(self.device, self.device_config.amp):
                    logits = self.net()(self._inputs(x))["logits"]
                logits = logits.float()
                losses.append(F.cross_entropy(logits, y, reduction="sum"))
                topk = logits.topk(k, dim=1).indices
                hits1.append((topk[:, 0] == y).sum())
                hits5.append((topk == y[:, None]).any(1).sum())
        finally:
            self.model.train(was_training)
        n = len(labels)
        # summed on the host in batch order, in double precision, as the per-batch .item() sums were
        loss_sum = sum(torch.stack(losses).tolist(), 0.0)
        return {"top1": sum(torch.stack(hits1).tolist()) / n, "top5": sum(torch.stack(hits5).tolist()) / n,
                "loss": loss_sum / n}

    # ------------------------------------------------------------------ fit

    def batches(self, images: Images, labels: torch.Tensor,
                order: torch.Tensor) -> Iterable[tuple[torch.Tensor, torch.Tensor]]:
        """``(uint8 images, labels)`` of each ``batch_size`` slice of ``order``: indexed in memory, or,
        for a memory-mapped set, read by its ``DataLoader`` workers (the same batches, bit for bit)."""
        chunks = [order[i:i + self.config.batch_size] for i in range(0, len(order), self.config.batch_size)]
        if isinstance(images, MappedImages):
            return images.loader(chunks, labels, pin_memory=self.device.type == "cuda")
        return ((images[idx], labels[idx]) for idx in chunks)

    def fit(self, train_images: Images, train_labels: torch.Tensor,
            test_images: torch.Tensor | None = None, test_labels: torch.Tensor | None = None,
            augment: Augment | None = None, on_epoch_end: Callable[[dict[str, float]], None] | None = None,
            checkpoint_path: str | Path | None = None, progress: bool = True,
            checkpoint_extra: dict[str, Any] | None = None, desc: str = "training") -> list[dict[str, float]]:
        """Train for ``config.epochs`` epochs (continuing from ``self.epoch`` after a resume).

        Each batch: uint8 -> [0, 1], random flips, ``augment`` (a defense), then ``step``.
        After each epoch the test split is evaluated, ``on_epoch_end(metrics)`` is called and
        the checkpoint (if a path is given) is written atomically, with ``checkpoint_extra`` (what
        a reader needs beside the weights, e.g. the model config), so an interrupted run leaves a
        checkpoint as readable as a finished one. With ``progress``, a bar named ``desc`` on a
        terminal, periodic progress lines elsewhere (``veil.recognition.progress``).
        """
        n = len(train_labels)
        if n == 0:
            raise ValueError("fit() got an empty training set")
        bs = self.config.batch_size
        steps_per_epoch = math.ceil(n / bs)
        # the schedule spans the configured run: a resume with more epochs stretches it to the new
        # total (the added epochs continue at the rate a run planned that long has there, instead
        # of at the floor the shorter schedule already reached)
        self.total_steps = self.config.total_steps or steps_per_epoch * self.config.epochs
        epochs = range(self.epoch, self.config.epochs)
        bar = progress_bar(total=steps_per_epoch * len(epochs), desc=desc, unit="batch", enabled=progress,
                           dynamic_ncols=True)
        try:
            for epoch in epochs:
                order = torch.randperm(n, generator=torch.Generator().manual_seed(self.config.seed * 100_003 + epoch))
                t0 = time.perf_counter()
                loss_sum = acc_sum = 0.0
                for xb, yb in self.batches(train_images, train_labels, order):
                    # to the device first: flips and ``augment`` run where the model does
                    x = to_float(to_device(xb, self.device))
                    y = one_hot(to_device(yb, self.device), self.num_classes)
                    if self.config.hflip:
                        x = random_hflip(x, self.generator)
                    if augment is not None:
                        x, y = augment(x, y)
                    stats = self.step(x, y)
                    loss_sum += stats.loss * len(yb)
                    acc_sum += stats.accuracy * len(yb)
                    bar.set_postfix({"epoch": f"{epoch + 1}/{self.config.epochs}", "loss": f"{stats.loss:.3f}",
                                     "acc": f"{stats.accuracy:.2f}"}, refresh=False)
                    bar.update(1)
                elapsed = time.perf_counter() - t0
                self.epoch = epoch + 1
                metrics = {"epoch": float(self.epoch), "train_loss": loss_sum / n, "train_acc": acc_sum / n,
                           "lr": self.lr_at(self.global_step - 1), "images_per_s": n / elapsed}
                if test_images is not None and test_labels is not None:
                    ev = self.evaluate(test_images, test_labels)
                    metrics.update({"test_top1": ev["top1"], "test_top5": ev["top5"], "test_loss": ev["loss"]})
                self.history.append(metrics)
                self._check_finite(metrics)  # a diverged epoch never replaces the last good checkpoint
                if checkpoint_path is not None:
                    self.save_checkpoint(checkpoint_path, checkpoint_extra)
                if on_epoch_end is not None:
                    on_epoch_end(metrics)
                if progress and "test_top1" in metrics:
                    bar.write(f"epoch {self.epoch}/{self.config.epochs}: loss {metrics['train_loss']:.3f} "
                              f"train {metrics['train_acc']:.1%} test top-1 {metrics['test_top1']:.1%} "
                              f"({metrics['images_per_s']:.0f} img/s)")
        finally:
            bar.close()
        return self.history

    def _check_finite(self, metrics: dict[str, float]) -> None:
        """Raise if the epoch just trained diverged: a non-finite test loss or weight (the last step's
        update can blow up the weights after its own loss was finite)."""
        bad = [k for k in ("train_loss", "test_loss") if k in metrics and not math.isfinite(metrics[k])]
        if not bad and not all(torch.isfinite(p).all() for p in self.model.parameters()):
            bad = ["weights"]
        if bad:
            raise FloatingPointError(f"epoch {self.epoch} diverged (non-finite {', '.join(bad)}, lr "
                                     f"{self.lr_at(self.global_step - 1):.3g}); its checkpoint was not written, the "
                                     "last good one is kept: lower the learning rate")

    # ------------------------------------------------------------------ checkpoints

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume: weights, optimizer, counters, RNG states, history."""
        state = {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                 "global_step": self.global_step, "epoch": self.epoch, "total_steps": self.total_steps,
                 "num_classes": self.num_classes, "config": asdict(self.config), "history": self.history,
                 "generator": self.generator.get_state(), "torch_rng": torch.get_rng_state()}
        if self.scaler is not None:
            state["scaler"] = self.scaler.state_dict()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("num_classes") != self.num_classes:
            raise ValueError(f"checkpoint has {state.get('num_classes')} classes, this trainer {self.num_classes}")
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.global_step = int(state["global_step"])
        self.epoch = int(state["epoch"])
        self.total_steps = state["total_steps"]
        self.history = list(state["history"])
        # RNG states are CPU byte tensors whatever map_location put them on
        self.generator.set_state(state["generator"].cpu())
        torch.set_rng_state(state["torch_rng"].cpu())
        if self.scaler is not None and "scaler" in state:
            self.scaler.load_state_dict(state["scaler"])

    def save_checkpoint(self, path: str | Path, extra: dict[str, Any] | None = None) -> Path:
        """Write a resumable checkpoint atomically (temporary file, then rename)."""
        state = self.state_dict()
        if extra:
            state["extra"] = extra
        return atomic_torch_save(state, path)

    def load_checkpoint(self, path: str | Path,
                        check: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
        """Resume from ``path``; returns the checkpoint's ``extra`` dict. ``check`` sees that dict
        before any weight is loaded, so a caller can refuse a checkpoint of another model clearly."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"checkpoint {path} does not exist")
        try:
            state = torch.load(path, map_location=self.device, weights_only=True)
        except Exception as err:
            raise ValueError(f"checkpoint {path} is damaged or not a veil checkpoint: {err}") from err
        if check is not None:
            check(state.get("extra", {}))
        self.load_state_dict(state)
        return state.get("extra", {})

