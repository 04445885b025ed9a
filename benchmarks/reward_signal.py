"""How much of each reward term the step's own action explains: uniform random actions through
``FaceAugmentEnv``, then a linear least-squares fit of each term on the action (R^2, slopes).

    python benchmarks/reward_signal.py [--data att] [--n-private 20] [--steps 768] [--threads 1]

Why: the adversary can only learn what its action moves. A term with R^2 near 0 (the validation
and probe terms, which move with the FR model over many steps) adds noise to every return at
``--gamma 0.99``; the terms with a large R^2 are what ``--gamma 0`` keeps. The first quarter of the
steps is left out of the fit (the reward's running statistics are still settling).
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from veil.agents.rl import PARAM_NAMES
from veil.env import EnvConfig, FaceAugmentEnv
from veil.recognition import DataConfig, SplitConfig

TERMS = ("reward", "reward_adv", "reward_preserve", "reward_utility", "acc_aug")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="att")
    ap.add_argument("--n-private", type=int, default=20)
    ap.add_argument("--steps", type=int, default=768)
    ap.add_argument("--warmup-steps", type=int, default=100)
    ap.add_argument("--preserve-budget", type=float, default=0.5)
    ap.add_argument("--acc-budget", type=float, default=0.95)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    data_cfg, split_cfg = DataConfig(source=a.data), SplitConfig(n_private=a.n_private)
    # the recipe of the 0.10.2 agents: labels kept and low band fixed, 8 policy / 8 FR steps
    env = FaceAugmentEnv(EnvConfig(data=data_cfg, split=split_cfg, batch_size=32, policy_steps=8, fr_steps=8,
                                   warmup_steps=a.warmup_steps, val_every=16, acc_budget=a.acc_budget,
                                   utility_weight=20.0, preserve_budget=a.preserve_budget, seed=a.seed,
                                   fixed_params={"label_follow": 0.0, "high_band": 0.0}))
    env.reset(seed=a.seed)
    rng = np.random.default_rng(a.seed)
    actions, values = [], {t: [] for t in TERMS}
    t0 = time.perf_counter()
    for _ in range(a.steps):
        act = rng.uniform(-1, 1, env.action_space.shape).astype(np.float32)
        _, reward, _, truncated, info = env.step(act)
        actions.append(act)
        for t in TERMS:
            values[t].append(reward if t == "reward" else info[t])
        if truncated:
            env.reset()
    secs = (time.perf_counter() - t0) / a.steps
    start = a.steps // 4
    free = [i for i, n in enumerate(PARAM_NAMES) if n not in ("label_follow", "high_band")]
    x = np.c_[np.asarray(actions)[start:, free], np.ones(a.steps - start)]
    print(f"{a.data}, {a.steps} random steps ({secs * 1000:.0f} ms each), fit on the last {a.steps - start}; "
          f"slopes per unit of action")
    print(f"| term | std | R^2 | {' | '.join(PARAM_NAMES[i] for i in free)} |")
    print("|---|---|---|" + "---|" * len(free))
    for t in TERMS:
        y = np.asarray(values[t], dtype=np.float64)[start:]
        coef, *_ = np.linalg.lstsq(x, y, rcond=None)
        r2 = 1.0 - (y - x @ coef).var() / y.var() if y.var() > 0 else 0.0
        print(f"| {t} | {y.std():.3f} | {r2:.2f} | " + " | ".join(f"{c:+.3f}" for c in coef[:-1]) + " |")


if __name__ == "__main__":
    main()
