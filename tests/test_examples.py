"""The documented deployment example runs end to end on real faces, with an exported policy."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from stable_baselines3 import PPO

from veil.agents.export import export_policy
from veil.env import EnvConfig, FaceAugmentEnv
from veil.recognition import DataConfig, load_faces, split_identities

REPO = Path(__file__).resolve().parents[1]


def test_deploy_facenet_example_trains_with_a_policy(cfp_root: Path, tmp_path: Path) -> None:
    cfg = EnvConfig(data=DataConfig(synthetic_identities=8, synthetic_images=8, image_size=32), width=8,
                    batch_size=16, warmup_steps=2)
    env = FaceAugmentEnv(cfg, split=split_identities(load_faces(cfg.data), cfg.split))
    policy = export_policy(PPO("MlpPolicy", env, seed=0, device="cpu"), tmp_path / "p.safetensors", env.config, {})
    out = subprocess.run([sys.executable, str(REPO / "examples" / "deploy_facenet.py"), "--root", str(cfp_root),
                          "--identities", "2", "--epochs", "2", "--batch-size", "4", "--image-size", "80",
                          "--threads", "2", "--policy", str(policy)],
                         cwd=REPO, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "aligned faces of 2 identities" in out.stdout
    assert "clean for the first 2 of" in out.stdout
    assert "last policy action: AugmentParams(k=" in out.stdout  # the policy acted after its warm-up
    acc = float(re.search(r"final test top-1 ([0-9.]+)%", out.stdout).group(1))
    assert 0.0 <= acc <= 100.0
