"""Cost of each defense per batch against one training step of the default CNN, same process.

    python benchmarks/augment.py [--batch 64] [--size 64] [--threads 2]

Targets (defenses issue): batched erasing with a constant/mean fill >= 5x faster than looping
torchvision's RandomErasing over the batch; hybrid <= 10% of a training step at 64x3x64x64.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
from torchvision.transforms import v2

from veil.defenses.erasing import EraseConfig, random_erasing
from veil.defenses.hybrid import HybridConfig, augment
from veil.defenses.mixup import MixConfig, frequency_mixup
from veil.recognition import ModelConfig, Trainer, TrainerConfig, build_model


def timeit(fn: Callable[[], object], repeat: int = 30, warmup: int = 3) -> float:
    """Median seconds per call."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--classes", type=int, default=50)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=30)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    g = torch.Generator().manual_seed(0)
    x = torch.rand(args.batch, 3, args.size, args.size, generator=g)
    y = torch.nn.functional.one_hot(torch.arange(args.batch) % args.classes, args.classes).float()

    trainer = Trainer(build_model(ModelConfig(num_classes=args.classes, image_size=args.size)),
                      TrainerConfig(), num_classes=args.classes)
    step = timeit(lambda: trainer.step(x, y), repeat=max(5, args.repeat // 3))

    tv = v2.RandomErasing(p=1.0, scale=(0.1, 0.4), ratio=(1.0, 1.0), value=0.5)
    tv_loop = timeit(lambda: torch.stack([tv(img) for img in x]), args.repeat)
    erase_cfg = EraseConfig(p=1.0, scale=(0.1, 0.4), ratio=(1.0, 1.0), value="mean")
    rows: list[tuple[str, float]] = [
        ("torchvision RandomErasing, looped per image", tv_loop),
        ("erasing, batched, mean fill", timeit(lambda: random_erasing(x, erase_cfg, g), args.repeat)),
        ("erasing, batched, constant fill", timeit(lambda: random_erasing(x, EraseConfig(value=0.5), g), args.repeat)),
        ("erasing, batched, random fill", timeit(lambda: random_erasing(x, EraseConfig(value="random"), g), args.repeat)),
        ("rfft2 + irfft2 round trip", timeit(lambda: torch.fft.irfft2(torch.fft.rfft2(x), s=x.shape[-2:]), args.repeat)),
    ]
    for mode in ("complex", "amplitude", "phase", "dct"):
        cfg = MixConfig(k=3, band=(0.0, 0.5), mode=mode)
        rows.append((f"frequency MixUp k=3, {mode}", timeit(lambda: frequency_mixup(x, y, cfg, g), args.repeat)))
    for mode in ("complex", "dct"):
        hyb = HybridConfig(mix=MixConfig(k=3, band=(0.0, 0.5), mode=mode), erase=erase_cfg)
        rows.append((f"hybrid (MixUp {mode} k=3 + erasing)", timeit(lambda: augment(x, y, hyb, g), args.repeat)))
    hyb6 = HybridConfig(mix=MixConfig(k=6, band=(0.0, 0.5)), erase=erase_cfg)
    rows.append(("hybrid (MixUp complex k=6 + erasing)", timeit(lambda: augment(x, y, hyb6, g), args.repeat)))

    print(f"batch {args.batch}x3x{args.size}x{args.size}, {args.threads} threads, torch {torch.__version__}")
    print(f"baseline: one training step of the default CNN: {step * 1e3:.1f} ms")
    print(f"{'operation':48s} {'ms/batch':>9s} {'% of step':>10s}")
    for name, t in rows:
        print(f"{name:48s} {t * 1e3:9.2f} {100 * t / step:9.1f}%")
    batched = dict(rows)["erasing, batched, mean fill"]
    print(f"\nbatched erasing (mean fill) vs looped torchvision: {tv_loop / batched:.1f}x faster (target >= 5x)")
    hybrid = dict(rows)["hybrid (MixUp complex k=3 + erasing)"]
    print(f"hybrid (Fourier) / training step: {100 * hybrid / step:.1f}% (target <= 10%)")
    hybrid_dct = dict(rows)["hybrid (MixUp dct k=3 + erasing)"]
    print(f"hybrid (DCT) / training step: {100 * hybrid_dct / step:.1f}%")


if __name__ == "__main__":
    main()
