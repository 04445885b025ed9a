"""One benchmark cell, timed part by part, on whichever device ``--device`` names: the target
trained at the plan's budget (``--defense none`` or ``c125``, veil's best CFP row), the evaluation
model, then each attack scored by it. Built from ``veil.recognition``, ``veil.defenses`` and
``veil.attacks`` alone (no MLflow, no RL), so it runs on a machine that has torch and little else.

    VEIL_DATA_ROOT=../shared/datasets python benchmarks/device_cell.py --device cuda --amp bf16

Target (issue 32, on one H200): the CFP cell (100 private identities, 60 epochs, train + PCA + GMI)
in at most 2 minutes. ``--quick`` (synthetic faces, 2 epochs, tiny attacks) is the CPU smoke run.
The FR model trains as ``veil benchmark`` trains a cell's target (same data, split, budget and
augmentation); the cell's MLflow logging, reports and privacy proxies are left out.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from veil.attacks import AttackSettings, EvalModelConfig, HarnessConfig, run_attack, train_eval_model
from veil.attacks.harness import target_accuracy
from veil.defenses.erasing import EraseConfig
from veil.defenses.hybrid import HybridConfig, augment
from veil.defenses.mixup import MixConfig, band_for
from veil.recognition import (
    DataConfig,
    DeviceConfig,
    ModelConfig,
    SplitConfig,
    Trainer,
    TrainerConfig,
    build_model,
    load_faces,
    split_identities,
)
from veil.recognition.device import synchronize

# veil's best CFP row (docs/results/cfp-sota-60ep/plan.toml, [defenses.c125])
C125 = HybridConfig(mix=MixConfig(k=4, alpha=1.0, band=band_for("low", [0.125]), label_follow=0.0),
                    erase=EraseConfig(p=0.5, scale=(0.065, 0.26), ratio=(1 / 1.81659, 1.81659), value="mean"))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default="cfp", help="face set (DataConfig.source; cfp is aligned as the plan does)")
    p.add_argument("--n-private", type=int, default=100)
    p.add_argument("--epochs", type=int, default=60)
    p.add_argument("--lr", type=float, default=3e-4)
    p.add_argument("--defense", choices=("none", "c125"), default="c125")
    p.add_argument("--attacks", default="pca,gmi")
    p.add_argument("--identities", type=int, default=20)
    p.add_argument("--gan-steps", type=int, default=300)
    p.add_argument("--eval-epochs", type=int, default=40)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto")
    p.add_argument("--amp", choices=("none", "bf16", "fp16"), default="none")
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    p.add_argument("--quick", action="store_true", help="synthetic faces, 2 epochs, tiny attacks (smoke run)")
    p.add_argument("--json", type=Path, default=None, help="also write the timings here")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    dev = DeviceConfig(device=args.device, amp=args.amp, channels_last=args.channels_last)
    device = dev.resolve()
    if args.quick:
        data_cfg, n_private, epochs, eval_epochs, gan_steps, identities = (
            DataConfig(source="synthetic", synthetic_identities=20, synthetic_images=10), 10, 2, 1, 5, 2)
    else:
        data_cfg = DataConfig(source=args.data, align=args.data in ("att", "cfp"))
        n_private, epochs, eval_epochs, gan_steps, identities = (args.n_private, args.epochs, args.eval_epochs,
                                                                 args.gan_steps, args.identities)
    times: dict[str, float] = {}
    t0 = time.perf_counter()
    split = split_identities(load_faces(data_cfg), SplitConfig(n_private=n_private))
    times["data"] = time.perf_counter() - t0

    torch.manual_seed(args.seed)
    model = build_model(ModelConfig(name="cnn", num_classes=split.num_private, image_size=data_cfg.image_size))
    trainer = Trainer(model, TrainerConfig(epochs=epochs, lr=args.lr, seed=args.seed), split.num_private, device=dev)
    g = torch.Generator().manual_seed(args.seed + 7919)  # as a cell's make_augment seeds it
    aug = (lambda x, y: augment(x, y, C125, g)) if args.defense == "c125" else None
    synchronize(device)
    t0 = time.perf_counter()
    trainer.fit(split.train_images, split.train_labels, augment=aug)
    synchronize(device)
    times["target fit"] = time.perf_counter() - t0
    natural = target_accuracy(trainer.model, split)

    t0 = time.perf_counter()
    ev = train_eval_model(split, EvalModelConfig(epochs=eval_epochs), cache=False, device=dev)
    synchronize(device)
    times["judge fit"] = time.perf_counter() - t0

    settings = AttackSettings(gan_steps=gan_steps, max_seconds=None, **({"seeds": 1, "steps": 5} if args.quick else {}))
    scores = {}
    for name in args.attacks.split(","):
        t0 = time.perf_counter()
        report = run_attack(name, trainer.model, split, ev.model,
                            HarnessConfig(identities=identities, settings=settings, seed=args.seed), progress=False)
        synchronize(device)
        times[f"attack {name}"] = time.perf_counter() - t0
        scores[name] = report.summary["top1"]
    cell = times["target fit"] + sum(v for k, v in times.items() if k.startswith("attack"))
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"device {device} ({name}), amp {args.amp}, channels_last {args.channels_last}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} CPU thread(s); {data_cfg.source}: {split.num_private} private identities, "
          f"{epochs} epochs, defense {args.defense}")
    for k, v in times.items():
        print(f"{k:<16} {v:8.1f} s")
    print(f"{'cell':<16} {cell:8.1f} s  (target fit + attacks; the judge is trained once per plan)")
    print(f"natural top-1 {100 * natural['top1']:.1f}%; attack top-1 "
          + ", ".join(f"{k} {100 * v:.1f}%" for k, v in scores.items()))
    if args.json:
        args.json.write_text(json.dumps({"device": str(device), "name": name, "amp": args.amp, "seconds": times,
                                         "cell_seconds": cell, "natural_top1": natural["top1"], "top1": scores,
                                         "defense": args.defense, "epochs": epochs}, indent=1))


if __name__ == "__main__":
    main()
