"""kill -9 at random points of veil train-fr, train-agent and benchmark (tiny configs), then resume until
done: does the result equal an uninterrupted run's, and are no MLflow runs left RUNNING?

    python benchmarks/kill_resume.py [--points 5] [--seed 0] [--commands train-fr,train-agent,benchmark]

For each command: one uninterrupted reference run, then ``--points`` runs killed (SIGKILL, no
handler runs) at a uniformly drawn time within the reference's wall time and resumed (train-fr:
``--resume`` its checkpoint; train-agent: ``--resume`` its last game checkpoint; benchmark: the
same command again) until one exits 0. Prints a
Markdown table: the kill time, how many restarts it took, whether the final weights (train-fr),
policy (train-agent) or cells (benchmark) equal the reference's, and how many MLflow runs are still RUNNING at the end.
One torch thread per process; report the machine's load beside the times.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import mlflow
import torch
from mlflow.tracking import MlflowClient
from safetensors.torch import load_file

TINY = ["--data", "synthetic", "--synthetic-identities", "8", "--synthetic-images", "8", "--image-size", "32",
        "--batch-size", "16", "--threads", "1"]
COMMANDS = {
    "train-fr": ["train-fr", *TINY, "--epochs", "12", "--checkpoint", "ck.pt"],
    "train-agent": ["train-agent", *TINY, "--timesteps", "96", "--n-steps", "16", "--n-epochs", "2",
                    "--checkpoint-every", "16", "--eval-every", "1024", "--log-every", "16", "--episode-steps", "48",
                    "--out-dir", "out"],
    "benchmark": ["benchmark", *TINY, "--epochs", "4", "--defenses", "none,re", "--seeds", "0", "--attacks", "pca",
                  "--steps", "20", "--restarts", "1", "--attack-seeds", "1", "--eval-epochs", "2", "--out-dir", "bench"],
}


def run(cmd: list[str], cwd: Path, kill_after: float | None = None) -> tuple[int, float]:
    """Run ``veil cmd`` in ``cwd`` (own store and cache); SIGKILL it after ``kill_after`` seconds."""
    env = dict(os.environ, VEIL_MLRUNS=str(cwd / "mlruns"), VEIL_CACHE_DIR=str(cwd / "cache"), OMP_NUM_THREADS="1")
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "veil.agents.cli", *cmd], cwd=cwd, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        proc.wait(timeout=kill_after)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    return proc.returncode, time.perf_counter() - t0


def resume_cmd(name: str, cwd: Path) -> list[str]:
    cmd = list(COMMANDS[name])
    if name == "train-fr" and (cwd / "ck.pt").is_file():
        return cmd + ["--resume", "ck.pt"]
    games = sorted((cwd / "out").glob("*-game.pt")) if name == "train-agent" else []
    if games:
        return ["train-agent", "--resume", str(games[-1]), "--threads", "1"]
    return cmd


def saved(name: str, cwd: Path) -> str:
    """What the killed run had left to resume from: a checkpoint's epoch or step, or finished cells."""
    if name == "train-fr":
        return f"epoch {torch.load(cwd / 'ck.pt', weights_only=True)['epoch']}" if (cwd / "ck.pt").is_file() else "-"
    if name == "train-agent":
        games = sorted((cwd / "out").glob("*-game.pt"))
        return f"step {torch.load(games[-1], weights_only=True)['num_timesteps']}" if games else "-"
    cells = sorted((cwd / "bench" / "cells").glob("*.json"))
    return f"{len(cells)} cell(s), {sum(len(json.loads(c.read_text())['attacks']) for c in cells)} attack(s)"


def outcome(name: str, cwd: Path) -> object:
    """What must survive: the final weights (train-fr), or every cell's accuracy and attack top-1."""
    if name == "train-fr":
        return {k: v.clone() for k, v in torch.load(cwd / "ck.pt", weights_only=True)["model"].items()}
    if name == "train-agent":
        (policy,) = (cwd / "out").glob("*-policy.safetensors")
        return load_file(str(policy))
    cells = sorted((cwd / "bench" / "cells").glob("*.json"))
    return {p.name: (r["natural_top1"], {a: v["top1"] for a, v in r["attacks"].items()})
            for p in cells for r in [json.loads(p.read_text())]}


def same(a: object, b: object) -> bool:
    if isinstance(a, dict) and a and isinstance(next(iter(a.values())), torch.Tensor):
        return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    return a == b


def still_running(cwd: Path) -> int:
    mlflow.set_tracking_uri(f"sqlite:///{cwd / 'mlruns' / 'mlflow.db'}")
    exp = mlflow.get_experiment_by_name("veil")
    return len(MlflowClient().search_runs([exp.experiment_id], "attributes.status = 'RUNNING'")) if exp else 0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--points", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--commands", default="train-fr,train-agent,benchmark")
    a = ap.parse_args()
    rng = random.Random(a.seed)
    rows = ["| command | kill at (s) | of (s) | left to resume from | restarts | result equals the uninterrupted run "
            "| runs left RUNNING |", "|---|---|---|---|---|---|---|"]
    for name in a.commands.split(","):
        ref_dir = Path(tempfile.mkdtemp(prefix=f"veil-{name}-ref-"))
        code, total = run(COMMANDS[name], ref_dir)
        assert code == 0, f"the reference {name} run failed ({code})"
        reference = outcome(name, ref_dir)
        for _ in range(a.points):
            cwd = Path(tempfile.mkdtemp(prefix=f"veil-{name}-"))
            at = rng.uniform(0.1, 0.95) * total
            run(COMMANDS[name], cwd, kill_after=at)
            left = saved(name, cwd)
            restarts = 0
            while True:
                restarts += 1
                code, _ = run(resume_cmd(name, cwd), cwd)
                if code == 0 or restarts >= 3:
                    break
            ok = code == 0 and same(outcome(name, cwd), reference)
            rows.append(f"| {name} | {at:.1f} | {total:.1f} | {left} | {restarts} | {'yes' if ok else 'NO'} | "
                        f"{still_running(cwd)} |")
            shutil.rmtree(cwd, ignore_errors=True)
        shutil.rmtree(ref_dir, ignore_errors=True)
    print("\n".join(rows))
    print(f"\nload average at the end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
