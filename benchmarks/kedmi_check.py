"""Open item 1 of docs/attacks-peer-check.md: is veil's KEDMI weak because of its two departures
from the authors' code? KEDMI runs on a benchmark cell's saved target four ways, at the same
300-step GAN budget, scored by the plan's judge exactly as a cell's attacks are: veil's settings
(1 discriminator update per generator update, initial log-variance 0), the authors' initial
log-variance 1 (K-8), the authors' 5 discriminator updates (K-6), and both.

    python benchmarks/kedmi_check.py --plan docs/results/cfp-sota-60ep/plan.toml --seeds 0,1 \\
        --out docs/results/cfp-sota-60ep/kedmi-check-none.json

The targets are the plan's ``none`` cells (``checkpoints/none-s<seed>.pt``, made by ``veil benchmark
--config PLAN --defenses none``); the first variant must give the committed cell's KEDMI top-1 (it
reuses the cell's cached GAN), which the script checks before it trusts the others.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from veil.agents.attack_cli import attack_settings, load_target
from veil.agents.plan import load_plan
from veil.attacks import AttackSettings, EvalModelConfig, HarnessConfig, register, run_attack, train_eval_model
from veil.attacks.harness import gan_budget
from veil.attacks.kedmi import KEDMIConfig, kedmi_attack, train_kedmi_gan
from veil.recognition import load_faces, split_identities

# name -> (discriminator updates per generator update, initial log-variance)
VARIANTS = {"veil": (1, 0.0), "authors-log-var": (1, 1.0), "authors-n-critic": (5, 0.0), "authors-both": (5, 1.0)}
KEYS = ("top1", "top5", "sink_share", "nn_pixel_acc", "knn_dist")


def kedmi_variant(n_critic: int, init_log_var: float):
    """A harness attack: KEDMI with these two settings, everything else as ``veil benchmark`` runs it."""
    def attack(target, split, classes, settings: AttackSettings, generator: torch.Generator) -> tuple:
        gan = train_kedmi_gan(target, split.public_images, settings.gan_config(n_critic=n_critic), source=split.source)
        cfg = replace(settings.attack_config(KEDMIConfig), init_log_var=init_log_var)
        return (*kedmi_attack(target, gan, classes, cfg, generator, public_images=split.public_images), gan_budget(gan))
    return attack


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--plan", type=Path, required=True)
    p.add_argument("--seeds", default="0")
    p.add_argument("--row", default="none", help="the plan row whose targets are attacked")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    plan = load_plan(args.plan)
    out_dir = Path(plan.out_dir)
    split = split_identities(load_faces(plan.data), plan.split)
    ev = train_eval_model(split, EvalModelConfig(model=plan.attacks.eval_arch, epochs=plan.attacks.eval_epochs,
                                                 weights=plan.attacks.eval_weights))
    settings = attack_settings(plan.attacks)  # as veil benchmark builds them
    result: dict[str, Any] = {"plan": str(args.plan), "row": args.row, "judge": ev.fingerprint, "variants":
                              {k: {"n_critic": v[0], "init_log_var": v[1]} for k, v in VARIANTS.items()}, "cells": []}
    for name, (n_critic, log_var) in VARIANTS.items():
        register(f"kedmi-{name}", kedmi_variant(n_critic, log_var))
    for seed in [int(s) for s in args.seeds.split(",")]:
        cell = json.loads((out_dir / "cells" / f"{args.row}-s{seed}.json").read_text())
        committed = cell["attacks"]["kedmi"]
        if committed["evaluator"] != ev.fingerprint:
            raise SystemExit(f"cell {args.row}-s{seed} was judged by {committed['evaluator']}, this machine's judge is "
                             f"{ev.fingerprint}: its KEDMI top-1 cannot be compared")
        target, _, _ = load_target(str(out_dir / "checkpoints" / f"{args.row}-s{seed}.pt"))
        for name in VARIANTS:
            t0 = time.perf_counter()
            report = run_attack(f"kedmi-{name}", target, split, ev.model,
                                HarnessConfig(identities=plan.attacks.identities, attack_seeds=plan.attacks.attack_seeds,
                                              settings=settings, seed=seed))
            row = {"seed": seed, "variant": name, **{k: report.summary.get(k) for k in KEYS},
                   "seconds": time.perf_counter() - t0, **report.extra.get("budget", {})}
            print(json.dumps(row))
            if name == "veil" and abs(row["top1"] - committed["top1"]) > 1e-9:
                raise SystemExit(f"veil's KEDMI gives top-1 {row['top1']} on {args.row}-s{seed}, the committed cell "
                                 f"{committed['top1']}: the check does not run what the benchmark ran")
            result["cells"].append(row)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=args.out.parent, prefix=f".{args.out.name}.")
    with os.fdopen(fd, "w") as f:
        json.dump(result, f, indent=1)
    os.replace(tmp, args.out)
    print(f"written: {args.out}")


if __name__ == "__main__":
    main()
