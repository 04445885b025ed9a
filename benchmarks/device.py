"""What a device buys: FR training throughput per backbone, image size and precision, each defense's
cost as a share of a training step, one iteration of each attack and the env's overhead, all as
ratios against one training step of the small CNN measured in the same process, on whichever
device ``--device`` names (default: auto, CUDA then MPS then CPU).

    python benchmarks/device.py [--device auto] [--batch 64] [--threads 2] [--quick]

Targets (issue 32, on one H200): the hybrid augmentation <= 5% of a training step; the small CNN at
64 px >= 20,000 images/s with AMP. ``--quick`` (batch 16, fewer repeats, no 112 px CNN/ResNet rows)
is the CPU smoke run. Its table on this project's 2-core CPU (torch 2.14.1, one thread, while two
long experiment jobs held both cores, so the figures are noisy: read them as orders of magnitude;
the extra cost of trapmid and loft is measured against plain steps called alternately):

    device cpu, batch 16, 1 thread(s), torch 2.14.1+cu130;
    baseline: a cnn 64 px fp32 training step = 171.6 ms (93 img/s)
    FR training step                         img/s  x baseline
    cnn 64px bf16                              155        1.66
    resnet18 64px fp32                          42        0.45
    resnet18 64px bf16                          60        0.64
    inception 112px fp32                        17        0.18
    inception 112px bf16                        25        0.27
    defense (cnn 64px)                     ms/batch   % of step
    re (batched erasing, mean fill)            0.62        0.4%
    mixup (frequency, k=3, low band)           2.92        1.7%
    hybrid (mixup + re)                        2.98        1.7%
    trapmid (extra per step)                 609.72      618.4%
    loft (extra per step)                     -1.89       -1.1%
    attack (cnn 64px target)                ms/iter   % of step
    pca                                      195.06      113.7%
    whitebox                                 200.70      117.0%
    gmi                                      149.71       87.3%
    kedmi                                    376.33      219.3%
    plgmi                                    304.30      177.4%
    env (cnn 64px)                          ms/step      x step
    FaceAugmentEnv.step (FR phase)           154.16        1.06

No GPU figures yet: run it on one with ``--device cuda`` (AMP rows: bf16 and fp16).
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import numpy as np
import torch

from veil.attacks.gan import GANConfig, train_gan
from veil.attacks.gmi import GMIConfig, gmi_attack
from veil.attacks.kedmi import KEDMIConfig, kedmi_attack, train_kedmi_gan
from veil.attacks.pca import FacePrior, PCAAttackConfig, pca_attack
from veil.attacks.plgmi import PLGMIConfig, plgmi_attack, train_plgmi_gan
from veil.attacks.whitebox import WhiteBoxConfig, whitebox_attack
from veil.defenses.erasing import EraseConfig
from veil.defenses.hybrid import HybridConfig, augment
from veil.defenses.loft import LoFtConfig, LoFtModel
from veil.defenses.mixup import MixConfig
from veil.defenses.trapmid import TrapMID, TrapMIDConfig, before_step_hook
from veil.env.face_augment import EnvConfig, FaceAugmentEnv
from veil.recognition import (
    DataConfig,
    DeviceConfig,
    ModelConfig,
    SplitConfig,
    Trainer,
    TrainerConfig,
    build_model,
    load_faces,
    resolve_device,
    split_identities,
)
from veil.recognition.device import synchronize
from veil.recognition.trainer import make_optimizer

CLASSES = 50


def timeit(fn: Callable[[], object], device: torch.device, repeat: int, warmup: int = 2) -> float:
    """Median seconds per call, the device synchronized around each."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeat):
        synchronize(device)
        t0 = time.perf_counter()
        fn()
        synchronize(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def paired(plain: Callable[[], object], other: Callable[[], object], device: torch.device,
           repeat: int) -> tuple[float, float]:
    """Median seconds per call of ``plain`` and ``other``, called alternately (a busy machine's drift
    hits both alike), after one warm-up call each."""
    plain()
    other()
    a, b = [], []
    for _ in range(repeat):
        for fn, out in ((plain, a), (other, b)):
            synchronize(device)
            t0 = time.perf_counter()
            fn()
            synchronize(device)
            out.append(time.perf_counter() - t0)
    return statistics.median(a), statistics.median(b)


def amp_modes(device: torch.device) -> list[str]:
    """The mixed precisions worth timing here: bf16 where the device has it, fp16 on CUDA."""
    if device.type == "cuda":
        return ["none", "bf16", "fp16"] if torch.cuda.is_bf16_supported() else ["none", "fp16"]
    return ["none", "bf16"]


def batch(device: torch.device, n: int, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    x = torch.rand(n, 3, size, size, generator=g).to(device)
    y = torch.nn.functional.one_hot(torch.arange(n) % CLASSES, CLASSES).float().to(device)
    return x, y


def trainer_for(name: str, size: int, device: torch.device, amp: str = "none", model: torch.nn.Module | None = None,
                channels_last: bool = False) -> Trainer:
    torch.manual_seed(0)
    model = model or build_model(ModelConfig(name=name, num_classes=CLASSES, image_size=size))
    return Trainer(model, TrainerConfig(), CLASSES, device=DeviceConfig(device=str(device), amp=amp,
                                                                       channels_last=channels_last))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="auto", help="auto|cpu|cuda|cuda:N|mps (default: auto)")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=20)
    ap.add_argument("--quick", action="store_true", help="batch 16, 5 repeats, 64 px CNN/ResNet and 112 px Inception")
    args = ap.parse_args()
    if args.quick:
        args.batch, args.repeat = 16, 7
    torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    rep = args.repeat

    x, y = batch(device, args.batch, 64)
    base_trainer = trainer_for("cnn", 64, device)
    base = timeit(lambda: base_trainer.step(x, y), device, rep)
    print(f"device {device}, batch {args.batch}, {args.threads} thread(s), torch {torch.__version__}; "
          f"baseline: a cnn 64 px fp32 training step = {base * 1e3:.1f} ms ({args.batch / base:.0f} img/s)")

    print(f"{'FR training step':38s} {'img/s':>7s} {'x baseline':>11s}")
    shapes = [("cnn", 64), ("resnet18", 64), ("inception", 112)]
    if not args.quick:
        shapes = [("cnn", 64), ("cnn", 112), ("resnet18", 64), ("resnet18", 112), ("inception", 112)]
    for name, size in shapes:
        xs, ys = batch(device, args.batch, size)
        for amp in amp_modes(device):
            if (name, size, amp) == ("cnn", 64, "none"):
                continue  # the baseline itself
            t = trainer_for(name, size, device, amp, channels_last=device.type == "cuda" and name != "cnn")
            s = timeit(lambda: t.step(xs, ys), device, max(3, rep // 2))
            label = f"{name} {size}px {'fp32' if amp == 'none' else amp}"
            print(f"{label:38s} {args.batch / s:7.0f} {base / s:11.2f}")

    print(f"{'defense (cnn 64px)':38s} {'ms/batch':>8s} {'% of step':>11s}")
    g = torch.Generator().manual_seed(1)
    erase = EraseConfig(p=1.0, scale=(0.1, 0.4), value="mean")
    mix = MixConfig(k=3, band=(0.0, 0.125), label_follow=0.0)
    rows = [("re (batched erasing, mean fill)", HybridConfig(erase=erase)),
            ("mixup (frequency, k=3, low band)", HybridConfig(mix=mix)),
            ("hybrid (mixup + re)", HybridConfig(mix=mix, erase=erase))]
    for label, cfg in rows:
        s = timeit(lambda: augment(x, y, cfg, g), device, rep)
        print(f"{label:38s} {s * 1e3:8.2f} {100 * s / base:10.1f}%")
    trap_trainer = trainer_for("cnn", 64, device)
    torch.manual_seed(1)
    disc = build_model(ModelConfig(num_classes=2, image_size=64)).to(device)
    trap = TrapMID(trap_trainer.model, CLASSES, (3, 64, 64), TrapMIDConfig(), disc,
                   make_optimizer(disc, trap_trainer.config), device=device)
    trap_trainer.before_step.append(before_step_hook(trap))
    trap_trainer.regularizers.append(trap.loss_term)
    plain, s = paired(lambda: base_trainer.step(x, y), lambda: trap_trainer.step(x, y), device, rep)
    print(f"{'trapmid (extra per step)':38s} {(s - plain) * 1e3:8.2f} {100 * (s - plain) / plain:10.1f}%")
    torch.manual_seed(0)
    backbone = build_model(ModelConfig(num_classes=CLASSES, image_size=64))
    with torch.no_grad():
        dim = int(backbone.eval()(torch.zeros(1, 3, 64, 64))["embedding"].shape[1])
    loft = LoFtModel(backbone.train(), dim, CLASSES, LoFtConfig())
    loft_trainer = trainer_for("cnn", 64, device, model=loft)
    plain, s = paired(lambda: base_trainer.step(x, y), lambda: loft_trainer.step(x, y), device, rep)
    print(f"{'loft (extra per step)':38s} {(s - plain) * 1e3:8.2f} {100 * (s - plain) / plain:10.1f}%")

    print(f"{'attack (cnn 64px target)':38s} {'ms/iter':>8s} {'% of step':>11s}")
    data = load_faces(DataConfig(synthetic_identities=20, synthetic_images=6, image_size=64, use_cache=False))
    split = split_identities(data, SplitConfig(n_private=10))
    torch.manual_seed(0)
    target = build_model(ModelConfig(num_classes=split.num_private, image_size=64)).to(device)
    classes = torch.arange(split.num_private)
    gan_cfg = GANConfig(steps=1, max_seconds=None)
    prior = FacePrior.fit(split.public_images, 64)
    gmi_gan = train_gan(split.public_images, gan_cfg, cache=False, progress=False, device=device)
    kedmi_gan = train_kedmi_gan(target, split.public_images, gan_cfg, cache=False, progress=False)
    plgmi_gan = train_plgmi_gan(target, split.public_images, gan_cfg, cache=False, progress=False)
    n = 5
    attacks: dict[str, Callable[[], object]] = {
        "pca": lambda: pca_attack(target, prior, classes, PCAAttackConfig(steps=n, seeds=2), g),
        "whitebox": lambda: whitebox_attack(target, split.public_images, classes, WhiteBoxConfig(steps=n, seeds=2), g),
        "gmi": lambda: gmi_attack(target, gmi_gan, classes, GMIConfig(steps=n, seeds=2), g),
        "kedmi": lambda: kedmi_attack(target, kedmi_gan, classes, KEDMIConfig(steps=n, seeds=2), g),
        "plgmi": lambda: plgmi_attack(target, plgmi_gan, classes, PLGMIConfig(steps=n, seeds=2), g),
    }
    for name, run in attacks.items():
        s = timeit(run, device, max(2, rep // 4), warmup=1) / n
        print(f"{name:38s} {s * 1e3:8.2f} {100 * s / base:10.1f}%")

    print(f"{'env (cnn 64px)':38s} {'ms/step':>8s} {'x step':>11s}")
    env = FaceAugmentEnv(EnvConfig(data=DataConfig(synthetic_identities=20, synthetic_images=12, image_size=64,
                                                   use_cache=False),
                                   split=SplitConfig(n_private=10), batch_size=args.batch, policy_steps=0, fr_steps=1,
                                   val_every=0, device=str(device)))
    env.reset(seed=0)
    action = np.zeros(8, dtype=np.float32)
    env_x, env_y = env._next_batch()
    env_step, s = paired(lambda: env.trainer.step(env_x, env_y), lambda: env.step(action), device, rep)
    print(f"{'FaceAugmentEnv.step (FR phase)':38s} {s * 1e3:8.2f} {s / env_step:11.2f}")


if __name__ == "__main__":
    main()
