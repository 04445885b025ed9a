"""The agent side: exported policies match SB3, the PolicyAugmenter, and veil train-agent in MLflow."""

from __future__ import annotations

import json
import math
from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch
from mlflow.tracking import MlflowClient

from veil.agents import tracking
from veil.agents.cli import main
from veil.agents.export import PolicyAugmenter, export_policy
from veil.agents.registry import version_of
from veil.env import OBS_DIM, EnvConfig, FaceAugmentEnv
from veil.env.actions import ACTION_DIM
from veil.recognition import DataConfig, load_faces, one_hot, split_identities

TINY_DATA = DataConfig(synthetic_identities=8, synthetic_images=10, image_size=32)


@pytest.fixture(scope="module")
def env() -> FaceAugmentEnv:
    cfg = EnvConfig(data=TINY_DATA, width=8, batch_size=16, episode_steps=16, policy_steps=2, fr_steps=2)
    return FaceAugmentEnv(cfg, split=split_identities(load_faces(cfg.data), cfg.split))


@pytest.mark.parametrize("algo", ["ppo", "sac", "td3"])
def test_exported_policy_gives_the_same_deterministic_actions_as_sb3(algo: str, env: FaceAugmentEnv,
                                                                    tmp_path: Path) -> None:
    from veil.agents.rl import ALGOS

    agent = ALGOS[algo]("MlpPolicy", env, seed=0, device="cpu")
    path = export_policy(agent, tmp_path / "p.safetensors", env.config, {"acc_val": 0.5, "grad_norm": 1.0})
    aug = PolicyAugmenter.load(path)
    obs = np.random.default_rng(0).uniform(-2, 2, (32, env.observation_space.shape[0])).astype(np.float32)
    expected, _ = agent.predict(obs, deterministic=True)
    assert np.allclose(aug.act(torch.from_numpy(obs)).numpy(), expected, atol=1e-5)


def test_sampled_policy_draws_from_the_agents_gaussian(env: FaceAugmentEnv, tmp_path: Path) -> None:
    from stable_baselines3 import PPO

    agent = PPO("MlpPolicy", env, seed=0, device="cpu")
    with torch.no_grad():
        agent.policy.log_std.fill_(math.log(0.1))  # narrow, so clipping to [-1, 1] leaves the draws alone
    path = export_policy(agent, tmp_path / "p.safetensors", env.config, {})
    aug = PolicyAugmenter.load(path, seed=0, sample=True)
    obs = torch.from_numpy(np.random.default_rng(0).uniform(-1, 1, (1, env.observation_space.shape[0])).astype(np.float32))
    draws = aug.act(obs.repeat(4000, 1))
    dist = agent.policy.get_distribution(obs).distribution
    assert torch.allclose(draws.mean(0), dist.mean[0], atol=0.01)
    assert torch.allclose(draws.std(0), dist.stddev[0], atol=0.01)
    assert torch.allclose(aug.act(obs, sample=False), dist.mean.clamp(-1, 1), atol=1e-5)  # the mean on request


def test_policies_without_action_noise_refuse_to_be_sampled(env: FaceAugmentEnv, tmp_path: Path) -> None:
    from stable_baselines3 import TD3

    path = export_policy(TD3("MlpPolicy", env, seed=0, device="cpu"), tmp_path / "p.safetensors", env.config, {})
    with pytest.raises(ValueError, match="only PPO and A2C policies can be sampled"):
        PolicyAugmenter.load(path, sample=True)


def test_policy_file_holds_no_pickle(env: FaceAugmentEnv, tmp_path: Path) -> None:
    from safetensors import safe_open
    from stable_baselines3 import PPO

    path = export_policy(PPO("MlpPolicy", env, seed=0, device="cpu"), tmp_path / "p.safetensors", env.config, {})
    with safe_open(str(path), framework="pt") as f:  # safetensors: raw tensors + JSON metadata only
        assert all(k.endswith((".weight", ".bias")) or k == "log_std" for k in f.keys())
    assert path.read_bytes()[:8] != b"PK\x03\x04"  # not a zip (an SB3 .zip unpickles on load)


def test_policy_augmenter_returns_augmented_batches_and_tracks_its_statistics(env: FaceAugmentEnv,
                                                                              tmp_path: Path) -> None:
    from stable_baselines3 import PPO

    path = export_policy(PPO("MlpPolicy", env, seed=0, device="cpu"), tmp_path / "p.safetensors", env.config,
                         {"acc_val": 0.7, "grad_norm": 2.0})
    aug = PolicyAugmenter.load(path, seed=0)
    x = torch.rand(16, 3, 32, 32)
    y = one_hot(torch.arange(16) % 4, 4)
    out, t = aug(x, y, loss=1.2, step=3, total_steps=10)
    assert out.shape == x.shape and t.shape == y.shape
    assert torch.allclose(t.sum(1), torch.ones(16), atol=1e-5)
    obs = aug.observation(4, 3, 10)
    assert obs[0] == pytest.approx(0.3) and obs[5] == pytest.approx(0.7)  # progress, fallback val acc
    assert obs[2] == pytest.approx(1.2 / np.log(4))
    aug(x, y, loss=0.2, step=4, total_steps=10, val_acc=0.9)
    assert aug.observation(4, 4, 10)[5] == pytest.approx(0.9)
    assert aug.observation(4, 4, 10)[2] == aug.observation(4, 4, 10)[3]  # one loss fills both slots
    aug(x, y, loss=0.2, step=5, total_steps=10, clean_loss=0.05)
    obs = aug.observation(4, 5, 10)
    assert obs[2] == pytest.approx(0.05 / np.log(4)) and obs[3] > obs[2]  # the clean loss, as the game saw it


def test_a_policy_exported_before_label_follow_still_loads_and_mixes_targets_as_it_learned(
        tmp_path: Path) -> None:
    """A 0.9 file: 7 actions from 15 observations, no label_follow in its table; its MixUp targets
    follow the mix (label_follow 1), the rule it was trained under."""
    import json

    from safetensors.torch import save_file

    from veil.env.actions import ACTION_TABLE

    torch.manual_seed(0)
    weight = torch.zeros(7, 15)
    bias = torch.tensor([1.0, 0.0, 0.0, -1.0, -1.0, 0.0, 0.0])  # k = 6, low band r < 0.5, no erasing
    meta = {"format": "veil-policy-1", "algo": "PPO", "layers": ["linear"], "squash": "clip",
            "action_table": [list(row) for row in ACTION_TABLE[:7]], "k_max": 6, "mix_mode": "complex",
            "erase_fill": "mean", "ema": 0.95, "fallbacks": {}, "env_config": {"warmup_steps": 0}}
    path = tmp_path / "legacy.safetensors"
    save_file({"0.weight": weight, "0.bias": bias}, str(path), metadata={"veil": json.dumps(meta)})
    aug = PolicyAugmenter.load(path)
    assert (aug.action_dim, aug.obs_width) == (7, 15)
    x, y = torch.rand(16, 3, 32, 32), one_hot(torch.arange(16) % 4, 4)
    _, t = aug(x, y, step=0, total_steps=10)
    assert aug.last_params.k == 6 and aug.last_params.label_follow == 1.0
    assert aug.observation(4, 1, 10).shape == (15,)
    assert (t - y).abs().max() > 0.05  # the targets followed the mix


REPO = Path(__file__).resolve().parents[1]
COMMITTED_POLICY = REPO / "docs/results/syn-price-30ep/policies/agent-price-s0.safetensors"


@pytest.mark.parametrize("sample, expected", [
    (False, [([-0.382647, 0.170247, -0.141516, 0.068798, -0.490057, -0.417373, -0.056415, -0.035487],
              (3, 0.1001174, 0.2549713), 24566.0, 1132.7437),
             ([-0.437035, 0.360552, -0.099723, -0.110971, -0.581869, -0.585378, 0.28709, -0.243033],
              (2, 0.1037743, 0.2090655), 24628.131, 764.3455)]),
    (True, [([0.218369, 0.052434, -0.854524, 0.263114, -0.87964, -0.879637, 0.086032, 0.26225],
             (4, 0.0377291, 0.0601798), 24599.398, 286.6037),
            ([-0.508017, -0.027019, 0.243459, 0.490831, -0.56287, 0.150675, 0.288095, 0.496251],
             (2, 0.1338027, 0.2185649), 24579.148, 1189.3749)]),
])
def test_a_committed_policy_acts_and_augments_as_it_did_when_it_was_published(sample: bool, expected: list) -> None:
    """docs/results/syn-price-30ep's policy (its game fixed label_follow and the band side and bounded
    the radius) on a seeded batch: the same actions, parameters and augmented images as before the
    action codec moved to veil.env (values recorded with veil 0.16.1)."""
    aug = PolicyAugmenter.load(COMMITTED_POLICY, seed=0, sample=sample)
    assert aug.codec.fixed == {"label_follow": 0.0, "high_band": 0.0} and aug.codec.bounds == {"radius": (0.025, 0.2)}
    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(16, 3, 32, 32, generator=g), one_hot(torch.arange(16) % 4, 4)
    for step, (action, (k, radius, erase_p), total, moved) in zip((100, 101), expected):
        out, t = aug(x, y, loss=1.1, step=step, total_steps=1000, val_acc=0.6)
        assert aug.last_action == pytest.approx(action, abs=1e-6)
        p = aug.last_params
        assert (p.k, p.high_band, p.label_follow) == (k, False, 0.0)
        assert (p.radius, p.erase_p) == pytest.approx((radius, erase_p), abs=1e-6)
        assert float(out.sum()) == pytest.approx(total, rel=1e-5)
        assert float((out - x).abs().sum()) == pytest.approx(moved, rel=1e-4) and torch.equal(t, y)


LOAD_WITHOUT_VEIL = """
import json, sys
from pathlib import Path

# no veil but the model's: drop the editable install's finder and the checkout from the import path
sys.meta_path[:] = [f for f in sys.meta_path if not getattr(f, "__module__", "").startswith("__editable__")]
sys.path_hooks[:] = [h for h in sys.path_hooks if not getattr(h, "__module__", "").startswith("__editable__")]
sys.path_importer_cache.clear()
repo = Path(sys.argv[3]).resolve()
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != repo]
try:
    import veil
except ModuleNotFoundError:
    pass
else:
    sys.exit(f"veil is importable before loading the model: {veil.__file__}")

import mlflow.pyfunc
import numpy as np

model = mlflow.pyfunc.load_model(sys.argv[1])
import veil.agents.export
print(json.dumps({"veil": veil.__file__, "export": veil.agents.export.__file__,
                  "actions": model.predict(np.asarray(json.loads(sys.argv[2]), dtype=np.float32)).tolist()}))
"""


def test_the_logged_policy_model_loads_with_its_own_veil_code_where_veil_is_not_installed(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The model ships a ``veil/`` tree (``tracking.veil_code_tree``): a fresh interpreter outside the
    checkout, with the editable install hidden, loads it from the model's code folder and acts as here."""
    import subprocess
    import sys

    from veil.agents.registry import log_policy_model

    monkeypatch.chdir(tmp_path)
    tracking.setup(f"sqlite:///{tmp_path / 'mlflow.db'}")
    with mlflow.start_run():
        uri = log_policy_model(COMMITTED_POLICY).model_uri
    local = Path(mlflow.artifacts.download_artifacts(uri))
    assert not list(local.rglob("__pycache__"))
    obs = np.random.default_rng(0).uniform(-1, 1, (2, OBS_DIM)).astype(np.float32)
    out = subprocess.run([sys.executable, "-c", LOAD_WITHOUT_VEIL, str(local), json.dumps(obs.tolist()), str(REPO)],
                         cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    child = json.loads(out.stdout.strip().splitlines()[-1])
    code = (local / "code" / "veil").resolve()
    assert Path(child["veil"]).resolve() == code / "__init__.py"
    assert Path(child["export"]).resolve() == code / "agents" / "export.py"
    expected = PolicyAugmenter.load(COMMITTED_POLICY).act(torch.from_numpy(obs)).numpy()
    assert np.allclose(child["actions"], expected, atol=1e-6)


def test_policy_augmenter_keeps_the_parameters_its_game_fixed(tmp_path: Path) -> None:
    from stable_baselines3 import PPO

    cfg = EnvConfig(data=TINY_DATA, width=8, batch_size=16, fixed_params={"label_follow": 0.0, "high_band": 0.0})
    env = FaceAugmentEnv(cfg, split=split_identities(load_faces(cfg.data), cfg.split))
    path = export_policy(PPO("MlpPolicy", env, seed=0, device="cpu"), tmp_path / "p.safetensors", env.config, {})
    aug = PolicyAugmenter.load(path)
    x, y = torch.rand(16, 3, 32, 32), one_hot(torch.arange(16) % 4, 4)
    for step in range(5):
        _, t = aug(x, y, step=step, total_steps=10)
        assert aug.last_params.label_follow == 0.0 and torch.equal(t, y)
        assert aug.last_params.high_band is False
    assert aug.last_params.k > 1  # the images were mixed; only the targets stayed


def test_policy_augmenter_keeps_the_box_its_game_bounded(tmp_path: Path) -> None:
    from stable_baselines3 import PPO

    cfg = EnvConfig(data=TINY_DATA, width=8, batch_size=16, param_bounds={"radius": (0.0, 0.05), "k": (4, 6)})
    env = FaceAugmentEnv(cfg, split=split_identities(load_faces(cfg.data), cfg.split))
    agent = PPO("MlpPolicy", env, seed=0, device="cpu")
    path = export_policy(agent, tmp_path / "p.safetensors", env.config, {})
    aug = PolicyAugmenter.load(path, sample=True)  # sampled actions roam the whole [-1, 1] box
    assert aug.codec.bounds == {"radius": (0.0, 0.05), "k": (4.0, 6.0)}
    x, y = torch.rand(16, 3, 32, 32), one_hot(torch.arange(16) % 4, 4)
    radii = []
    for step in range(30):
        aug(x, y, step=step, total_steps=30)
        assert 0.0 <= aug.last_params.radius <= 0.05 + 1e-6 and 4 <= aug.last_params.k <= 6
        radii.append(aug.last_params.radius)
    assert np.std(radii) > 0.003  # the policy still chooses inside the box


def test_a_policy_with_labels_fixed_to_stay_acts_from_the_first_batch_unless_told_otherwise(tmp_path: Path) -> None:
    """label_follow fixed to 0 protects only without clean batches first (RESULTS: policy-low vs
    policy-low-w0), so such a policy skips the game's warm-up by default; an explicit one is kept."""
    from stable_baselines3 import PPO

    cfg = EnvConfig(data=TINY_DATA, width=8, batch_size=16, warmup_steps=5, fixed_params={"label_follow": 0.0})
    env = FaceAugmentEnv(cfg, split=split_identities(load_faces(cfg.data), cfg.split))
    path = export_policy(PPO("MlpPolicy", env, seed=0, device="cpu"), tmp_path / "p.safetensors", env.config, {})
    aug = PolicyAugmenter.load(path)
    assert aug.warmup_steps == 0 and "label_follow=0" in aug.warmup_source
    x, y = torch.rand(16, 3, 32, 32), one_hot(torch.arange(16) % 4, 4)
    out, _ = aug(x, y, step=0, total_steps=10)
    assert aug.last_params is not None and not torch.equal(out, x)
    assert PolicyAugmenter.load(path, warmup_steps=5).warmup_steps == 5


def test_train_agent_fix_flags_parse_to_fixed_params_and_refuse_bad_specs() -> None:
    from veil.agents.train_agent import parse_fixed

    assert parse_fixed(["label_follow=0", "high_band=0"]) == {"label_follow": 0.0, "high_band": 0.0}
    for bad in ("label_follow", "label_follow=low"):
        with pytest.raises(ValueError, match="write NAME=VALUE"):
            parse_fixed([bad])


def test_train_agent_bound_flags_parse_to_ranges_and_refuse_bad_specs() -> None:
    from veil.agents.train_agent import parse_bounds

    assert parse_bounds(["radius=0:0.05", "k=2:4"]) == {"radius": (0.0, 0.05), "k": (2.0, 4.0)}
    for bad in ("radius", "radius=0.05", "radius=a:b"):
        with pytest.raises(ValueError, match="write NAME=LO:HI"):
            parse_bounds([bad])


def test_policy_augmenter_replays_the_games_clean_warmup(tmp_path: Path) -> None:
    from stable_baselines3 import PPO

    cfg = EnvConfig(data=TINY_DATA, width=8, batch_size=16, warmup_steps=5)
    env = FaceAugmentEnv(cfg, split=split_identities(load_faces(cfg.data), cfg.split))
    path = export_policy(PPO("MlpPolicy", env, seed=0, device="cpu"), tmp_path / "p.safetensors", env.config, {})
    x, y = torch.rand(8, 3, 32, 32), one_hot(torch.arange(8) % 4, 4)
    aug = PolicyAugmenter.load(path)
    assert aug.warmup_steps == 5
    out, t = aug(x, y, step=4, total_steps=100)
    assert out is x and t is y and aug.last_params is None  # clean during the warm-up
    aug(x, y, step=5, total_steps=100)
    assert aug.last_params is not None
    assert PolicyAugmenter.load(path, warmup_steps=0).warmup_steps == 0
    # warm-up + the FR share of the horizon (alternating 8/8 by default): what a deployment should match
    assert aug.game_fr_steps() == 5 + cfg.horizon // 2


def test_policy_augmenter_reports_the_mean_parameters_it_chose_and_its_clean_share(tmp_path: Path) -> None:
    from dataclasses import asdict

    from stable_baselines3 import PPO

    cfg = EnvConfig(data=TINY_DATA, width=8, batch_size=16, warmup_steps=2, fixed_params={"label_follow": 0.0})
    env = FaceAugmentEnv(cfg, split=split_identities(load_faces(cfg.data), cfg.split))
    path = export_policy(PPO("MlpPolicy", env, seed=0, device="cpu"), tmp_path / "p.safetensors", env.config, {})
    aug = PolicyAugmenter.load(path, warmup_steps=2, sample=True, seed=3)  # sampled: the parameters vary per batch
    x, y = torch.rand(8, 3, 32, 32), one_hot(torch.arange(8) % 4, 4)
    chosen = []
    for step in range(6):
        aug(x, y, step=step, total_steps=6)
        if aug.last_params is not None:
            chosen.append(asdict(aug.last_params))
    means = aug.take_param_means()
    assert len(chosen) == 4 and means["clean_share"] == pytest.approx(2 / 6)
    for name in ("k", "alpha", "radius", "erase_p"):
        assert means[name] == pytest.approx(np.mean([c[name] for c in chosen]))
    assert len({c["radius"] for c in chosen}) == 4 and means["label_follow"] == 0.0
    assert aug.take_param_means() == {}  # counting starts again


def test_train_fr_warns_when_the_policy_never_acts_or_the_run_is_short(tmp_path: Path,
                                                                       capsys: pytest.CaptureFixture) -> None:
    from stable_baselines3 import PPO

    from veil.agents.train_fr import PolicyUse, policy_augment_for

    cfg = EnvConfig(data=TINY_DATA, width=8, batch_size=16, warmup_steps=50, horizon=400)
    env = FaceAugmentEnv(cfg, split=split_identities(load_faces(cfg.data), cfg.split))
    path = export_policy(PPO("MlpPolicy", env, seed=0, device="cpu"), tmp_path / "p.safetensors", env.config, {})
    policy_augment_for(PolicyUse(str(path)), trainer=None, seed=0, planned_steps=40)
    assert "covers this whole run of 40; the policy never acts" in capsys.readouterr().out
    policy_augment_for(PolicyUse(str(path)), trainer=None, seed=0, planned_steps=80)  # the game: 50 + 200 FR steps
    assert "trained for about 250 steps; this run has 80" in capsys.readouterr().out
    policy_augment_for(PolicyUse(str(path)), trainer=None, seed=0, planned_steps=240)
    assert "warning" not in capsys.readouterr().out


def test_train_fr_chains_a_policy_with_label_smoothing_and_refuses_fixed_augmentation(
        env: FaceAugmentEnv, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    from stable_baselines3 import PPO

    monkeypatch.chdir(tmp_path)
    path = export_policy(PPO("MlpPolicy", env, seed=0, device="cpu"), tmp_path / "p.safetensors", env.config, {})
    tiny = ["train-fr", "--data", "synthetic", *AGENT_TINY[:6], "--batch-size", "16", "--epochs", "1",
            "--policy", str(path)]
    assert main([*tiny, "--defense", "hybrid"]) != 0
    assert "--policy picks the erasing and MixUp parameters itself" in capsys.readouterr().err
    assert main([*tiny, "--defense", "negls", "--negls-factor", "-0.1"]) == 0
    mlflow.set_tracking_uri(tracking.default_tracking_uri())
    (run,) = MlflowClient().search_runs([mlflow.get_experiment_by_name("veil").experiment_id],
                                        "attributes.status = 'FINISHED'")
    assert run.data.tags["veil.defense"] == "negls,policy" and run.data.tags["veil.policy"] == str(path)
    assert run.data.params["defense.negls.factor"] == "-0.1"


def test_loading_a_non_policy_file_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "x.safetensors").write_bytes(b"junk")
    with pytest.raises(ValueError, match="not a veil policy"):
        PolicyAugmenter.load(tmp_path / "x.safetensors")


AGENT_TINY = ["--synthetic-identities", "8", "--synthetic-images", "12", "--image-size", "32", "--batch-size", "16",
              "--episode-steps", "32", "--threads", "2", "--val-every", "16"]


def test_train_agent_logs_sb3_metrics_env_terms_policy_and_plot(tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch,
                                                               capsys: pytest.CaptureFixture) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(["train-agent", *AGENT_TINY, "--timesteps", "128", "--n-steps", "32", "--log-every", "32",
                 "--eval-every", "64", "--fix", "label_follow=0"]) == 0
    # four PPO updates from std 1 leave the policy wide open: said, not hidden
    assert "warning: the agent did not commit" in capsys.readouterr().out
    mlflow.set_tracking_uri(tracking.default_tracking_uri())
    (run,) = MlflowClient().search_runs([mlflow.get_experiment_by_name("veil").experiment_id])
    m = run.data.metrics
    for key in ("train.value_loss", "train.entropy_loss", "env.reward_adv", "env.reward_utility", "env.loss_aug",
                "action.k", "action.erase_p", "fr.top1", "final_fr.top1", "final_policy.std.radius"):
        assert key in m, key
    assert "final_policy.std.label_follow" not in m  # a fixed parameter has no spread to report
    assert m["final_policy.std.radius"] > 0.5
    assert run.data.params["agent.algo"] == "ppo" and run.data.params["env.batch_size"] == "16"
    arts = {a.path for a in MlflowClient().list_artifacts(run.info.run_id)}
    assert {"policy", "plots", "action_history.json", "game_target"} <= arts
    from veil.agents.attack_cli import data_from_params, load_target

    game_fr, run_id, params = load_target(run.info.run_id)  # the game's FR model, as veil attack sees it
    assert run_id == run.info.run_id and game_fr(torch.rand(2, 3, 32, 32))["logits"].shape == (2, 4)
    data, _ = data_from_params(params)
    assert (data.source, data.image_size, data.synthetic_identities) == ("synthetic", 32, 8)
    models = mlflow.search_logged_models(experiment_ids=[run.info.experiment_id], output_format="list")
    served = mlflow.pyfunc.load_model(models[0].model_uri)
    policy = next((tmp_path / "checkpoints").glob("*-policy.safetensors"))
    obs = np.zeros((3, OBS_DIM), dtype=np.float32)
    assert np.allclose(served.predict(obs), PolicyAugmenter.load(policy).act(torch.from_numpy(obs)).numpy())
    assert version_of(policy) == ("veil-policy-synthetic", "1")  # the export is the game's first version
    capsys.readouterr()
    assert main(["train-fr", "--data", "synthetic", *AGENT_TINY[:6], "--batch-size", "16", "--epochs", "2",
                 "--policy", str(policy)]) == 0
    assert "policy chose (mean of the epoch means): k " in capsys.readouterr().out
    fr_run = MlflowClient().search_runs([mlflow.get_experiment_by_name("veil").experiment_id],
                                        filter_string="tags.`veil.kind` = 'fr'")[0]
    history = MlflowClient().get_metric_history(fr_run.info.run_id, "policy.radius")
    assert [m.step for m in history] == [1, 2] and all(0.0 <= m.value <= 1.0 for m in history)
    assert MlflowClient().get_metric_history(fr_run.info.run_id, "policy.label_follow")[0].value == 0.0  # fixed


def test_baseline_policy_runs_through_the_same_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                   capsys: pytest.CaptureFixture) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(["train-agent", *AGENT_TINY, "--timesteps", "40", "--baseline", "random", "--log-every", "8"]) == 0
    assert "baseline random: FR clean top-1" in capsys.readouterr().out


def test_reset_mode_restart_reaches_the_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(["train-agent", *AGENT_TINY, "--timesteps", "40", "--baseline", "random", "--log-every", "8",
                 "--reset-mode", "restart"]) == 0
    mlflow.set_tracking_uri(tracking.default_tracking_uri())
    (run,) = MlflowClient().search_runs([mlflow.get_experiment_by_name("veil").experiment_id])
    assert run.data.params["env.reset_mode"] == "restart"


def test_a_calibration_file_fixes_the_games_parameters(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    cal = tmp_path / "calibration.json"
    cal.write_text(json.dumps({"param": "radius", "chosen": 0.05, "fixed": {"label_follow": 0, "high_band": 0}}))
    assert main(["train-agent", *AGENT_TINY, "--timesteps", "40", "--baseline", "random", "--log-every", "8",
                 "--calibration", str(cal)]) == 0
    mlflow.set_tracking_uri(tracking.default_tracking_uri())
    (run,) = MlflowClient().search_runs([mlflow.get_experiment_by_name("veil").experiment_id])
    p = run.data.params
    assert {k: float(p[f"env.fixed_params.{k}"]) for k in ("radius", "label_follow", "high_band")} == \
        {"radius": 0.05, "label_follow": 0.0, "high_band": 0.0}


def test_a_priced_calibration_lets_the_agent_choose_the_parameter_within_the_measured_range(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    monkeypatch.chdir(tmp_path)
    cal = tmp_path / "calibration.json"
    cal.write_text(json.dumps({"param": "radius", "chosen": 0.1, "fixed": {"label_follow": 0, "high_band": 0},
                               "budget_points": 2.0,
                               "candidates": [{"value": 0.2, "drop": 2.3}, {"value": 0.05, "drop": -3.3},
                                              {"value": 0.1, "drop": 0.1}]}))
    assert main(["train-agent", *AGENT_TINY, "--timesteps", "40", "--baseline", "random", "--log-every", "8",
                 "--calibration", str(cal), "--price-deployment", "--deploy-weight", "50"]) == 0
    assert "budget 2% kept for radius in [0.05, 0.186]" in capsys.readouterr().out
    mlflow.set_tracking_uri(tracking.default_tracking_uri())
    (run,) = MlflowClient().search_runs([mlflow.get_experiment_by_name("veil").experiment_id])
    p = run.data.params
    assert "env.fixed_params.radius" not in p and float(p["env.fixed_params.label_follow"]) == 0.0
    assert p["env.param_bounds.radius"] == "(0.05, 0.2)"
    assert p["env.deploy_price.values"] == "(0.05, 0.1, 0.2)" and float(p["env.deploy_price.weight"]) == 50.0
    history = MlflowClient().get_metric_history(run.info.run_id, "env.reward_deploy")
    assert history and all(m.value <= 0.0 for m in history)


def test_a_deployment_price_needs_a_calibration_and_a_free_parameter(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                      capsys: pytest.CaptureFixture) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(["train-agent", *AGENT_TINY, "--timesteps", "8", "--price-deployment"]) == 2
    assert "--price-deployment needs --calibration FILE" in capsys.readouterr().err
    cal = tmp_path / "calibration.json"
    cal.write_text(json.dumps({"param": "radius", "chosen": None, "fixed": {}, "budget_points": 2.0,
                               "candidates": [{"value": 0.1, "drop": 4.0}]}))
    assert main(["train-agent", *AGENT_TINY, "--timesteps", "8", "--calibration", str(cal), "--price-deployment"]) == 2
    assert "no measured radius kept the budget of 2%" in capsys.readouterr().err
    cal.write_text(json.dumps({"param": "radius", "chosen": 0.1, "fixed": {}, "budget_points": 2.0,
                               "candidates": [{"value": 0.1, "drop": 1.0}]}))
    assert main(["train-agent", *AGENT_TINY, "--timesteps", "8", "--calibration", str(cal), "--price-deployment",
                 "--fix", "radius=0.1"]) == 2
    assert "lets the agent choose radius: drop its --fix/--bound" in capsys.readouterr().err


def _spy_on_export(monkeypatch: pytest.MonkeyPatch, look) -> None:
    """Call ``look(agent)`` on the trained SB3 agent when train-agent exports its policy."""
    import veil.agents.train_agent as ta

    export = ta.export_policy

    def spy(agent, *args, **kwargs):
        look(agent)
        return export(agent, *args, **kwargs)

    monkeypatch.setattr(ta, "export_policy", spy)


def test_log_std_init_sets_the_starting_spread_of_the_agents_actions(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch,
                                                                    capsys: pytest.CaptureFixture) -> None:
    monkeypatch.chdir(tmp_path)
    seen = {}
    _spy_on_export(monkeypatch, lambda agent: seen.update(log_std=agent.policy.log_std.detach().clone()))
    assert main(["train-agent", *AGENT_TINY, "--timesteps", "32", "--n-steps", "32", "--log-every", "32",
                 "--log-std-init", "-1.5"]) == 0
    assert "did not commit" not in capsys.readouterr().out  # std 0.22: committed enough to say nothing
    assert seen["log_std"].shape == (ACTION_DIM,)
    assert torch.allclose(seen["log_std"], torch.full((ACTION_DIM,), -1.5), atol=0.05)  # one small update from -1.5


def test_gamma_zero_scores_each_action_by_its_own_batch_reward(tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    seen = {}
    _spy_on_export(monkeypatch, lambda agent: seen.update(gamma=agent.gamma, buf=agent.rollout_buffer))
    assert main(["train-agent", *AGENT_TINY, "--timesteps", "32", "--n-steps", "32", "--log-every", "32",
                 "--gamma", "0"]) == 0
    buf = seen["buf"]
    assert seen["gamma"] == 0.0
    assert buf.rewards.std() > 0  # real, varying rewards ...
    np.testing.assert_allclose(buf.returns, buf.rewards, rtol=1e-5, atol=1e-5)  # ... and no future in the return
    mlflow.set_tracking_uri(tracking.default_tracking_uri())
    (run,) = MlflowClient().search_runs([mlflow.get_experiment_by_name("veil").experiment_id])
    assert float(run.data.params["agent.gamma"]) == 0.0


def test_gamma_outside_zero_one_is_refused_before_any_work(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                           capsys: pytest.CaptureFixture) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(["train-agent", *AGENT_TINY, "--timesteps", "32", "--gamma", "1"]) == 2
    assert "--gamma must be in [0, 1), got 1.0" in capsys.readouterr().err
    assert not (tmp_path / "mlruns").exists()  # no run was started


def test_normalize_reward_wraps_the_agents_env_in_vecnormalize_for_rewards_only(tmp_path: Path,
                                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    seen = {}

    def look(agent) -> None:
        env = agent.get_env()
        seen.update(kind=type(env).__name__, norm_obs=env.norm_obs, norm_reward=env.norm_reward,
                    returns_seen=env.ret_rms.count)

    _spy_on_export(monkeypatch, look)
    assert main(["train-agent", *AGENT_TINY, "--timesteps", "64", "--n-steps", "32", "--log-every", "32",
                 "--normalize-reward"]) == 0
    assert seen["kind"] == "VecNormalize" and seen["norm_reward"] and not seen["norm_obs"]
    assert seen["returns_seen"] > 60  # its running return statistics saw every step
    mlflow.set_tracking_uri(tracking.default_tracking_uri())
    (run,) = MlflowClient().search_runs([mlflow.get_experiment_by_name("veil").experiment_id])
    assert run.data.params["agent.normalize_reward"] == "True"


def test_probe_scores_the_fr_model_during_training_and_enters_the_reward(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(["train-agent", *AGENT_TINY, "--timesteps", "16", "--baseline", "random", "--log-every", "8",
                 "--probe-every", "4", "--privacy-weight", "0.5", "--probe-identities", "3", "--eval-epochs", "1"]) == 0
    mlflow.set_tracking_uri(tracking.default_tracking_uri())
    (run,) = MlflowClient().search_runs([mlflow.get_experiment_by_name("veil").experiment_id])
    assert run.data.params["probe.identities"] == "3" and run.data.params["probe.eval_model"] == "resnet18"
    probe = [m.value for m in MlflowClient().get_metric_history(run.info.run_id, "env.probe_top1")]
    privacy = [m.value for m in MlflowClient().get_metric_history(run.info.run_id, "env.reward_privacy")]
    assert len(probe) == 2 and all(0.0 <= p <= 1.0 for p in probe)
    assert privacy == pytest.approx([-0.5 * p for p in probe])


def test_train_agent_with_subprocess_envs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                          capsys: pytest.CaptureFixture) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(["train-agent", *AGENT_TINY, "--timesteps", "64", "--n-steps", "16", "--n-envs", "2",
                 "--eval-every", "32"]) == 0
    assert "FR model of env 0" in capsys.readouterr().out
    assert len(list((tmp_path / "checkpoints").glob("*-policy.safetensors"))) == 1


def test_action_spread_reports_the_std_of_each_chosen_parameter_and_none_without_a_gaussian(
        env: FaceAugmentEnv) -> None:
    from stable_baselines3 import PPO, TD3

    from veil.agents.rl import PARAM_NAMES, action_spread

    agent = PPO("MlpPolicy", env, seed=0, device="cpu")
    with torch.no_grad():
        agent.policy.log_std.copy_(torch.log(torch.linspace(0.1, 0.8, ACTION_DIM)))
    spread = action_spread(agent, {"label_follow": 0.0, "high_band": 0.0})
    assert list(spread) == [n for n in PARAM_NAMES if n not in ("label_follow", "high_band")]
    assert spread["k"] == pytest.approx(0.1) and spread["radius"] == pytest.approx(0.3)
    assert action_spread(TD3("MlpPolicy", env, seed=0, device="cpu")) is None


def test_commitment_warning_names_the_widest_parameter_only_above_the_threshold() -> None:
    from veil.agents.rl import commitment_warning

    wide = commitment_warning({"k": 0.9, "radius": 1.1, "erase_p": 0.8})
    assert wide is not None and "0.93" in wide and "radius 1.10" in wide and "--log-std-init" in wide
    assert commitment_warning({"k": 0.3, "radius": 0.45}) is None
    assert commitment_warning(None) is None and commitment_warning({}) is None
