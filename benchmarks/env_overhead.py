"""Environment overhead: FaceAugmentEnv steps per second against a plain loop doing the same FR
steps with the same decoded augmentation (the game's ``ActionCodec``) on the same batches, in the
same process.

    python benchmarks/env_overhead.py [--steps 200] [--threads 2]

Target (env issue): overhead <= 5% without probes.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from veil.env import ACTION_DIM, EnvConfig, FaceAugmentEnv
from veil.recognition import DataConfig


def main() -> None:
    """Measure the overhead with bookkeeping only, then with the default clean-loss and validation passes."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=4,
                    help="env/loop pairs, run in alternating order (env first, then loop first) so drift "
                         "in the machine's speed cancels; report medians")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    for label, extra in (("bookkeeping only (no clean-loss or validation passes)", dict(val_every=0, clean_every=10**9)),
                         ("default settings (clean loss on 16 images every 4 steps, validation every 64)", {})):
        cfg = EnvConfig(data=DataConfig(), batch_size=args.batch, episode_steps=10**9, schedule="interleaved",
                        **extra)
        measure(FaceAugmentEnv(cfg), cfg, args, label)


def measure(env: FaceAugmentEnv, cfg: EnvConfig, args: argparse.Namespace, label: str) -> None:
    """Median seconds of ``args.steps`` env steps and of the same loop without the env, printed."""
    rng = np.random.default_rng(0)
    actions = rng.uniform(-1, 1, (args.steps, ACTION_DIM)).astype(np.float32)

    def run_env() -> float:
        env.reset(seed=0)
        t0 = time.perf_counter()
        for a in actions:
            env.step(a)
        return time.perf_counter() - t0

    def run_loop() -> float:
        """The same work without the env: next batch, decode, sample, apply, FR step."""
        env.reset(seed=0)
        trainer, gen = env.trainer, torch.Generator().manual_seed(0)
        t0 = time.perf_counter()
        for a in actions:
            x, y = env._next_batch()
            _, xa, ya = cfg.codec.augment(a, x, y, gen)
            trainer.step(xa, ya)
        return time.perf_counter() - t0

    run_env(), run_loop()  # warm-up round, discarded
    env_t, loop_t = [], []
    for r in range(args.rounds):
        if r % 2 == 0:
            env_t.append(run_env())
            loop_t.append(run_loop())
        else:
            loop_t.append(run_loop())
            env_t.append(run_env())
    e, l = float(np.median(env_t)), float(np.median(loop_t))
    print(f"[{label}] {args.steps} steps, batch {args.batch}x3x64x64, default CNN, {args.threads} threads, no probe")
    print(f"plain loop: {args.steps / l:.2f} steps/s   env: {args.steps / e:.2f} steps/s")
    print(f"env overhead: {100 * (e / l - 1):+.1f}% (target <= 5%)")


if __name__ == "__main__":
    main()
