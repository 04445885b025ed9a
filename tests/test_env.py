"""FaceAugmentEnv: Gymnasium/SB3 API, reward bookkeeping and phases."""

from __future__ import annotations

import copy

import gymnasium as gym
import numpy as np
import pytest
import torch

from veil.defenses.params import ACTION_DIM
from veil.env import ENV_ID, DeployPrice, EnvConfig, FaceAugmentEnv
from veil.recognition import DataConfig, soft_cross_entropy


def _config(**kw: object) -> EnvConfig:
    base = dict(data=DataConfig(synthetic_identities=8, synthetic_images=10, image_size=32), width=8, batch_size=16,
                episode_steps=8, policy_steps=2, fr_steps=2, val_every=4, acc_budget=0.9)
    base.update(kw)
    return EnvConfig(**base)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def split():
    from veil.recognition import load_faces, split_identities

    cfg = _config()
    return split_identities(load_faces(cfg.data), cfg.split)


def test_gymnasium_env_checker_passes(split) -> None:
    from gymnasium.utils.env_checker import check_env

    check_env(FaceAugmentEnv(_config(), split=split))


def test_sb3_env_checker_passes(split) -> None:
    from stable_baselines3.common.env_checker import check_env

    check_env(FaceAugmentEnv(_config(), split=split), warn=True)


def test_registered_id_makes_the_env(split) -> None:
    env = gym.make(ENV_ID, config=_config(), split=split)
    obs, _ = env.reset(seed=0)
    assert env.observation_space.contains(obs)


def test_loss_aug_is_the_loss_of_the_augmented_batch_and_reward_is_the_sum_of_terms(split) -> None:
    env = FaceAugmentEnv(_config(), split=split)
    env.reset(seed=1)
    rng = np.random.default_rng(0)
    for _ in range(6):
        if env.is_fr_step():
            before = copy.deepcopy(env.trainer.model).eval()
        else:
            before = env.trainer.model
        _, reward, _, _, info = env.step(rng.uniform(-1, 1, ACTION_DIM).astype(np.float32))
        x, y = env.last_batch
        with torch.no_grad():
            recomputed = soft_cross_entropy(before(x)["logits"], y).item()
        assert info["loss_aug"] == pytest.approx(recomputed, rel=1e-4)
        assert reward == pytest.approx(info["reward_adv"] + info["reward_utility"] + info["reward_preserve"]
                                       + info["reward_privacy"] + info["reward_deploy"])
        assert info["reward_deploy"] == 0.0  # no deployment price configured
        assert info["reward_utility"] == pytest.approx(-1.0 * max(0.0, 0.9 - info["acc_val"]))
        assert info["reward_preserve"] == pytest.approx(-1.0 * max(0.0, 0.5 - info["acc_aug"]))
        assert info["acc_preserve"] == info["acc_aug"]  # preserve_on="batch": the step's own batch


def test_heldout_preserve_scores_the_validation_images_under_the_steps_augmentation(split) -> None:
    env = FaceAugmentEnv(_config(preserve_on="heldout", preserve_budget=1.0, preserve_weight=3.0, warmup_steps=4,
                                 val_fraction=0.4), split=split)  # 11 held-out images
    env.reset(seed=0)
    clean_val = env.trainer.evaluate(split.train_images[env.val_idx], split.train_labels[env.val_idx])["top1"]
    assert 0.0 < clean_val < 1.0  # a model part-way through learning, so the term has room to move
    identity = -np.ones(ACTION_DIM, dtype=np.float32)  # k = 1, erase_p = 0: the augmentation does nothing
    assert not env.is_fr_step()  # a policy step: the model that scored the held-out images is unchanged
    _, _, _, _, info = env.step(identity)
    assert info["acc_preserve"] == pytest.approx(clean_val)
    assert info["reward_preserve"] == pytest.approx(-3.0 * (1.0 - clean_val))
    heavy = np.ones(ACTION_DIM, dtype=np.float32)  # six images over the whole spectrum, every image erased
    assert not env.is_fr_step()
    _, _, _, _, info = env.step(heavy)
    assert info["acc_preserve"] < clean_val  # fewer identities survive it, on images never trained on
    assert info["reward_preserve"] == pytest.approx(-3.0 * (1.0 - info["acc_preserve"]))


def test_heldout_drop_preserve_scores_what_the_augmentation_costs_on_the_held_out_images(split) -> None:
    env = FaceAugmentEnv(_config(preserve_on="heldout-drop", preserve_budget=1.0, preserve_weight=3.0,
                                 warmup_steps=4, val_fraction=0.4), split=split)  # the model of the test above
    env.reset(seed=0)
    _, _, _, _, info = env.step(-np.ones(ACTION_DIM, dtype=np.float32))
    assert info["acc_preserve"] == pytest.approx(1.0)  # no augmentation, no drop, however inaccurate the model
    assert info["reward_preserve"] == 0.0
    _, _, _, _, info = env.step(np.ones(ACTION_DIM, dtype=np.float32))
    clean_val = env.trainer.evaluate(split.train_images[env.val_idx], split.train_labels[env.val_idx])["top1"]
    assert info["acc_preserve"] < 1.0 and info["acc_preserve"] >= 1.0 - clean_val  # 1 - (clean - augmented)
    assert info["reward_preserve"] == pytest.approx(-3.0 * (1.0 - info["acc_preserve"]))


def test_heldout_drop_measures_the_clean_held_out_score_once_per_model_update(split, monkeypatch) -> None:
    env = FaceAugmentEnv(_config(preserve_on="heldout-drop", val_every=0), split=split)
    env.reset(seed=4)
    calls = []
    validate = env._validate
    monkeypatch.setattr(env, "_validate", lambda: calls.append(env.total_steps) or validate())
    phases = []
    for _ in range(8):  # policy_steps=2, fr_steps=2: P P F F P P F F
        phases.append(env.step(np.zeros(ACTION_DIM, dtype=np.float32))[4]["phase"])
        fresh = env.trainer.evaluate(split.train_images[env.val_idx], split.train_labels[env.val_idx])["top1"]
        if phases[-1] == "policy":  # the frozen model's score, reused, is the score of the model now
            assert env._clean_heldout == pytest.approx(fresh)
    assert phases == ["policy", "policy", "fr", "fr"] * 2
    # total_steps as counted when scored: the first step, then each FR step (its model is new); the policy
    # steps after an FR step reuse that step's score, as their model is the one it scored
    assert calls == [1, 3, 4, 7, 8]


def test_preserve_on_must_name_batch_or_heldout() -> None:
    with pytest.raises(ValueError, match="preserve_on must be batch, heldout or heldout-drop, got 'test'"):
        _config(preserve_on="test")


def test_adversarial_term_is_the_excess_over_the_soft_targets_entropy(split) -> None:
    env = FaceAugmentEnv(_config(reward_scale="raw"), split=split)
    env.reset(seed=2)
    mix = np.array([1, 1, 1, -1, -1, -1, -1, 1], dtype=np.float32)  # k = k_max, full low band, no erasing
    _, _, _, _, info = env.step(mix)
    _, y = env.last_batch
    entropy = -(y * y.clamp_min(1e-12).log()).sum(1).mean().item()
    assert entropy > 0.1  # mixed labels carry entropy...
    assert info["target_entropy"] == pytest.approx(entropy, rel=1e-5)
    assert info["reward_adv"] == pytest.approx(info["loss_aug"] - entropy, rel=1e-5)  # ...which is not paid for
    assert info["loss_excess"] >= -1e-5  # a KL divergence


def test_with_label_follow_zero_the_images_mix_but_the_targets_stay_one_hot(split) -> None:
    env = FaceAugmentEnv(_config(reward_scale="raw"), split=split)
    env.reset(seed=2)
    _, _, _, _, info = env.step(np.array([1, 1, 1, -1, -1, -1, -1, -1], dtype=np.float32))
    x, y = env.last_batch
    assert torch.equal(y.max(1).values, torch.ones(len(y)))  # one-hot: the mixed band is noise to the label
    assert info["target_entropy"] == pytest.approx(0.0, abs=1e-6)
    assert info["reward_adv"] == pytest.approx(info["loss_aug"], rel=1e-5)


def test_fixed_params_override_the_actions_dimensions(split) -> None:
    env = FaceAugmentEnv(_config(reward_scale="raw", fixed_params={"label_follow": 0.0, "high_band": 0.0}),
                         split=split)
    env.reset(seed=2)
    _, _, _, _, info = env.step(np.ones(ACTION_DIM, dtype=np.float32))  # asks for the high band, labels following
    assert info["params"]["label_follow"] == 0.0 and info["params"]["high_band"] is False
    assert info["params"]["k"] == 6  # what is not fixed follows the action
    assert info["target_entropy"] == pytest.approx(0.0, abs=1e-6)


def test_bounded_params_stay_inside_the_box_whatever_the_action(split) -> None:
    env = FaceAugmentEnv(_config(fixed_params={"label_follow": 0.0}, param_bounds={"radius": (0.0, 0.05)}), split=split)
    env.reset(seed=3)
    radii = [env.step(np.full(ACTION_DIM, a, dtype=np.float32))[4]["params"]["radius"] for a in (-1.0, 0.0, 1.0)]
    assert radii == pytest.approx([0.0, 0.025, 0.05], abs=1e-6)


def test_a_deployment_price_charges_each_step_its_radius_over_budget(split) -> None:
    price = DeployPrice("radius", (0.1, 0.2), (0.0, 0.06), budget=0.02, weight=10.0)
    env = FaceAugmentEnv(_config(fixed_params={"label_follow": 0.0}, param_bounds={"radius": (0.1, 0.2)},
                                 deploy_price=price), split=split)
    env.reset(seed=3)
    _, reward, _, _, info = env.step(np.ones(ACTION_DIM, dtype=np.float32))  # radius 0.2: 6 points lost, 4 over
    assert info["params"]["radius"] == pytest.approx(0.2)
    assert info["reward_deploy"] == pytest.approx(-10.0 * 0.04)
    assert reward == pytest.approx(info["reward_adv"] + info["reward_utility"] + info["reward_preserve"]
                                   + info["reward_privacy"] + info["reward_deploy"])
    info = env.step(np.full(ACTION_DIM, -1.0, dtype=np.float32))[4]  # radius 0.1: measured free
    assert info["params"]["radius"] == pytest.approx(0.1) and info["reward_deploy"] == 0.0


def test_a_priced_parameter_cannot_also_be_fixed() -> None:
    with pytest.raises(ValueError, match="radius is fixed"):
        _config(fixed_params={"radius": 0.1}, deploy_price=DeployPrice("radius", (0.1,), (0.0,)))


def test_a_parameter_both_fixed_and_bounded_is_refused() -> None:
    with pytest.raises(ValueError, match="both fixed and bounded"):
        _config(fixed_params={"radius": 0.1}, param_bounds={"radius": (0.0, 0.05)})


@pytest.mark.parametrize("fixed, message", [({"label_follow": 1.5}, "label_follow must be in"),
                                            ({"blur": 1.0}, "cannot fix 'blur'")])
def test_bad_fixed_params_are_refused_when_the_env_is_configured(fixed: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        _config(fixed_params=fixed)


def test_an_action_of_the_wrong_size_is_a_clear_error(split) -> None:
    env = FaceAugmentEnv(_config(), split=split)
    env.reset(seed=0)
    with pytest.raises(ValueError, match=f"must have {ACTION_DIM} entries"):
        env.step(np.zeros(ACTION_DIM - 1, dtype=np.float32))


def test_zscore_reward_is_centred_on_the_running_excess_loss(split) -> None:
    env = FaceAugmentEnv(_config(policy_steps=40, fr_steps=0), split=split)  # FR frozen: a stationary loss
    env.reset(seed=0)
    rng = np.random.default_rng(1)
    advs = [env.step(rng.uniform(-1, 1, ACTION_DIM).astype(np.float32))[4]["reward_adv"] for _ in range(40)]
    assert advs[:2] == [0.0, 0.0]  # no statistics yet
    assert abs(np.mean(advs[10:])) < 0.6 and 0.3 < np.std(advs[10:]) < 2.0


def test_policy_phase_freezes_and_fr_phase_trains_the_model(split) -> None:
    env = FaceAugmentEnv(_config(), split=split)
    env.reset(seed=0)
    params = [p.detach().clone() for p in env.trainer.model.parameters()]
    for _ in range(2):
        assert not env.is_fr_step()
        assert env.step(env.action_space.sample())[4]["phase"] == "policy"
    assert all(torch.equal(a, b) for a, b in zip(params, env.trainer.model.parameters()))
    assert env.step(env.action_space.sample())[4]["phase"] == "fr"
    assert any(not torch.equal(a, b) for a, b in zip(params, env.trainer.model.parameters()))


def test_episode_is_truncated_after_episode_steps(split) -> None:
    env = FaceAugmentEnv(_config(episode_steps=3), split=split)
    env.reset(seed=0)
    flags = [env.step(env.action_space.sample())[3] for _ in range(3)]
    assert flags == [False, False, True]


def test_restart_mode_restores_the_initial_model(split) -> None:
    env = FaceAugmentEnv(_config(reset_mode="restart", policy_steps=0, fr_steps=1), split=split)
    env.reset()
    initial = [p.detach().clone() for p in env.trainer.model.parameters()]
    for _ in range(3):
        env.step(env.action_space.sample())
    env.reset()
    assert all(torch.equal(a, b) for a, b in zip(initial, env.trainer.model.parameters()))


def test_probe_score_enters_observation_and_reward(split) -> None:
    env = FaceAugmentEnv(_config(probe_every=2, privacy_weight=0.5), split=split, probe=lambda model: 0.4)
    env.reset(seed=0)
    env.step(env.action_space.sample())
    obs, reward, _, _, info = env.step(env.action_space.sample())
    assert info["probe_top1"] == 0.4 and info["reward_privacy"] == pytest.approx(-0.2)
    assert obs[6] == pytest.approx(0.4)


def test_ppo_runs_a_few_hundred_steps(split) -> None:
    from stable_baselines3 import PPO

    env = FaceAugmentEnv(_config(episode_steps=32), split=split)
    model = PPO("MlpPolicy", env, n_steps=64, batch_size=32, n_epochs=2, seed=0, device="cpu")
    model.learn(total_timesteps=192)
    action, _ = model.predict(env.reset(seed=0)[0], deterministic=True)
    assert action.shape == (ACTION_DIM,) and env.total_steps == 0
    assert model.num_timesteps == 192


def test_warmup_trains_the_fr_model_before_the_game(split) -> None:
    cold = FaceAugmentEnv(_config(), split=split)
    warm = FaceAugmentEnv(_config(warmup_steps=30), split=split)
    assert warm.evaluate_fr()["loss"] < cold.evaluate_fr()["loss"]
    assert warm.total_steps == 0


def test_clean_loss_is_refreshed_every_clean_every_steps_on_clean_batch_images(split, monkeypatch) -> None:
    env = FaceAugmentEnv(_config(clean_every=3, clean_batch=5), split=split)
    env.reset(seed=0)
    sizes: list[int] = []
    evaluate = env.trainer.evaluate_batch

    def spy(images: torch.Tensor, targets: torch.Tensor):
        sizes.append(len(images))
        return evaluate(images, targets)

    monkeypatch.setattr(env.trainer, "evaluate_batch", spy)
    for _ in range(7):
        env.step(np.zeros(ACTION_DIM, dtype=np.float32))
    # steps 0, 3 and 6 refresh the clean loss on 5 images; the policy-phase steps score all 16
    assert sizes.count(5) == 3
    assert set(sizes) <= {5, 16}


def test_clean_every_below_one_is_rejected() -> None:
    with pytest.raises(ValueError, match="clean_every"):
        _config(clean_every=0)
