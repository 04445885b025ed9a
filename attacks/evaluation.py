"""The evaluation model: an independent judge of identity for reconstructions.

Reconstructions are optimized against the target and can be adversarial to it (the target
scores noise at confidence 1.0), so attack accuracy is read by a *different* architecture trained
on the same private training split, longer and with augmentation (the protocol of GMI, KEDMI and
PPA). It is trained once per dataset, split and config and cached on disk.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from dataclasses import asdict, dataclass
from functools import cached_property
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from veil.recognition import DeviceConfig, ModelConfig, Trainer, TrainerConfig, build_model
from veil.recognition.data import MappedImages
from veil.recognition.io import cache_dir, save_cache_entry
from veil.recognition.models import load_weights

from .cache import read_weights

EVAL_CACHE_VERSION = "1"


@dataclass(frozen=True)
class EvalModelConfig:
    """Args:
        model: backbone (``veil.recognition.models``); must differ from the target's (default ResNet-18
            against the small-CNN target).
        epochs, batch_size, lr: training budget (Adam, cosine schedule).
        scale_min, shift: random resized-crop augmentation: zoom in to at least ``scale_min`` of
            the side and shift by up to ``shift`` of the side, per sample.
        seed: training seed.
        weights: a local pretrained file the judge starts from (``ModelConfig.weights``: e.g.
            facenet-pytorch's InceptionResnetV1 VGGFace2 file with ``model="inception"``); its SHA-256,
            not its path, keys the cache, so another file never reuses a cached judge.
    """

    model: str = "resnet18"
    epochs: int = 40
    batch_size: int = 32
    lr: float = 1e-3
    scale_min: float = 0.85
    shift: float = 0.08
    seed: int = 0
    weights: str | None = None

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 1 or self.lr <= 0:
            raise ValueError(f"epochs and batch_size must be >= 1 and lr > 0, got {self.epochs}, "
                             f"{self.batch_size}, {self.lr}")
        if not 0.0 < self.scale_min <= 1.0 or not 0.0 <= self.shift < 0.5:
            raise ValueError(f"scale_min must be in (0, 1] and shift in [0, 0.5), got {self.scale_min}, {self.shift}")


@dataclass
class EvalModel:
    """A trained evaluation model with its private-test accuracy and where it is cached."""

    model: nn.Module
    config: EvalModelConfig
    metrics: dict[str, float]
    path: Path | None
    cached: bool

    @cached_property
    def fingerprint(self) -> str:
        """A digest of the weights and the accuracy. Attack scores from two evaluation models do not
        compare (two trainings of one config differ), so results record the model that scored them."""
        h = hashlib.sha256()
        for p in self.model.parameters():
            h.update(p.detach().cpu().numpy().tobytes())
        return f"{h.hexdigest()[:12]}@{self.metrics['top1']:.4f}"


def random_crop_shift(images: torch.Tensor, targets: torch.Tensor, generator: torch.Generator,
                      scale_min: float, shift: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample random zoom-in and shift through one batched ``grid_sample`` (no loop); drawn by
    ``generator`` on the CPU, the sampling grid moved to the images' device."""
    b = images.shape[0]
    s = scale_min + (1.0 - scale_min) * torch.rand(b, generator=generator)
    t = (2.0 * torch.rand(b, 2, generator=generator) - 1.0) * 2.0 * shift
    theta = torch.zeros(b, 2, 3)
    theta[:, 0, 0] = s
    theta[:, 1, 1] = s
    theta[:, :, 2] = t
    grid = F.affine_grid(theta, list(images.shape), align_corners=False).to(images.device)
    return F.grid_sample(images, grid, padding_mode="border", align_corners=False), targets


def _arch(split, config: EvalModelConfig) -> ModelConfig:
    """The backbone config of the evaluation model for ``split``."""
    c, size = int(split.train_images.shape[1]), int(split.train_images.shape[-1])
    return ModelConfig(name=config.model, num_classes=split.num_private, in_channels=c, image_size=size)


def _key(split, config: EvalModelConfig) -> str:
    """Cache key: the split's tensors, the training config and the backbone config (so a change of
    architecture, such as the small CNN's head in 0.4, never reloads another net's weights)."""
    h = hashlib.sha256()
    for t in (split.train_images, split.train_labels, split.test_images, split.test_labels):
        h.update(str(tuple(t.shape)).encode())
        # a memory-mapped set: which rows of which cache entry (named by its content), not its bytes
        h.update(t.fingerprint().encode() if isinstance(t, MappedImages) else t.contiguous().numpy().tobytes())
    cfg = asdict(config)
    if cfg.pop("weights"):  # absent without weights: the keys of judges cached before 0.18 stay valid
        cfg["weights_sha256"] = file_sha256(config.weights)
    key = {"config": cfg, "arch": asdict(_arch(split, config)), "v": EVAL_CACHE_VERSION}
    h.update(json.dumps(key, sort_keys=True).encode())
    return h.hexdigest()[:20]


def file_sha256(path: str | Path) -> str:
    """The SHA-256 of a file's bytes (read in blocks); a one-line error if it cannot be read."""
    h = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            while block := f.read(1 << 20):
                h.update(block)
    except OSError as err:
        raise ValueError(f"weights file {path} cannot be read: {err.strerror or err}") from None
    return h.hexdigest()


def build_eval_model(split, config: EvalModelConfig) -> nn.Module:
    """The evaluation model's architecture for ``split`` (untrained)."""
    return build_model(_arch(split, config))


def train_eval_model(split, config: EvalModelConfig = EvalModelConfig(), cache: bool = True,
                     progress: bool = True, device: str | torch.device | DeviceConfig = "cpu") -> EvalModel:
    """Train (or load from the cache) the evaluation model on ``split``'s private training images,
    on ``device`` (a name or a ``DeviceConfig``), where it stays to score reconstructions.

    The cache file is keyed by the split's images and labels and the config (not the device),
    written atomically under ``$VEIL_CACHE_DIR/eval-models``; a damaged file is retrained, not trusted.
    """
    # seeded here, not by the caller: before 0.6 the network was built before the seed, so its
    # initial weights (and the judge) hung on whatever the process had drawn before; fork_rng
    # keeps the caller's random stream as it was
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        return _train_or_load(split, config, cache, progress, device)


def _train_or_load(split, config: EvalModelConfig, cache: bool, progress: bool,
                   device: str | torch.device | DeviceConfig = "cpu") -> EvalModel:
    path = cache_dir() / "eval-models" / f"{config.model}-{_key(split, config)}.pt"
    model = build_eval_model(split, config)
    if cache and path.is_file():
        try:
            state = read_weights(path)
            model.load_state_dict(state["model"])
            model.eval()
            where = device if isinstance(device, DeviceConfig) else DeviceConfig(device=str(device))
            return EvalModel(model.to(where.resolve()), config, dict(state["metrics"]), path, cached=True)
        except Exception as err:  # a damaged cache entry: say so and retrain
            print(f"evaluation-model cache {path} is unreadable ({err}); retraining")
            torch.manual_seed(config.seed)
            model = build_eval_model(split, config)
    if config.weights:  # the judge starts from the user's pretrained backbone; its head is learned here
        load_weights(model, config.weights)
    trainer = Trainer(model, TrainerConfig(epochs=config.epochs, batch_size=config.batch_size, lr=config.lr,
                                           schedule="cosine", seed=config.seed), num_classes=split.num_private,
                      device=device)
    g = torch.Generator().manual_seed(config.seed + 17)
    t0 = time.perf_counter()
    trainer.fit(split.train_images, split.train_labels,
                augment=lambda x, y: random_crop_shift(x, y, g, config.scale_min, config.shift), progress=progress,
                desc="evaluation model")
    metrics = {k: float(v) for k, v in trainer.evaluate(split.test_images, split.test_labels).items()}
    metrics["train_seconds"] = time.perf_counter() - t0
    if not math.isfinite(metrics["loss"]):
        raise FloatingPointError(f"the evaluation model diverged (test loss {metrics['loss']})")
    model.eval()
    saved = cache and save_cache_entry({"model": model.state_dict(), "metrics": metrics, "config": asdict(config)},
                                       path, "evaluation-model")
    return EvalModel(model, config, metrics, path if saved else None, cached=False)
