"""FaceAugmentEnv: Gymnasium/SB3 API, reward bookkeeping and phases; the action table and its codec."""

from __future__ import annotations

import copy

import gymnasium as gym
import numpy as np
import pytest
import torch

from veil.env import ENV_ID, OBS_DIM, OBS_NAMES, DeployPrice, EnvConfig, FaceAugmentEnv
from veil.env.actions import ACTION_DIM, ActionCodec, check_bounds, decode, encode, with_fixed
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


def test_the_env_is_registered_as_v1_and_v0_is_gone() -> None:
    assert ENV_ID == "veil/FaceAugment-v1"
    assert "veil/FaceAugment-v0" not in gym.registry  # its 7-entry action and 15-entry observation are gone


def test_the_observation_is_the_state_entries_then_the_last_action(split) -> None:
    env = FaceAugmentEnv(_config(), split=split)
    obs, _ = env.reset(seed=0)
    action = np.linspace(-1, 1, ACTION_DIM).astype(np.float32)
    obs, *_ = env.step(action)
    assert obs.shape == (OBS_DIM,) and len(OBS_NAMES) + ACTION_DIM == OBS_DIM
    assert np.array_equal(obs[len(OBS_NAMES):], action)
    assert obs[OBS_NAMES.index("progress")] == pytest.approx(1 / env.config.horizon)
    assert obs[OBS_NAMES.index("acc_val")] == pytest.approx(env.acc_val)


def test_bounds_and_fixes_are_checked_once_when_the_game_is_configured(split, monkeypatch) -> None:
    from veil.env import actions

    env = FaceAugmentEnv(_config(fixed_params={"label_follow": 0.0}, param_bounds={"radius": (0.0, 0.05)}),
                         split=split)
    env.reset(seed=0)

    def again(*args: object, **kwargs: object) -> None:
        raise AssertionError("checked again mid-game")

    monkeypatch.setattr(actions, "check_bounds", again)
    monkeypatch.setattr(actions, "fixed_values", again)
    info = env.step(np.ones(ACTION_DIM, dtype=np.float32))[4]
    assert info["params"]["radius"] == pytest.approx(0.05) and info["params"]["label_follow"] == 0.0


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


# ----------------------------------------------------------------------------- the action table (veil.env.actions)

def test_action_extremes_decode_to_the_documented_bounds() -> None:
    lo, hi = decode(-np.ones(ACTION_DIM)), decode(np.ones(ACTION_DIM))
    assert (lo.k, hi.k) == (1, 6)
    assert lo.alpha == pytest.approx(0.2) and hi.alpha == pytest.approx(5.0)
    assert (lo.radius, hi.radius) == (0.0, 1.0)
    assert (lo.high_band, hi.high_band) == (False, True)
    assert (lo.erase_p, hi.erase_p) == (0.0, 1.0)
    assert lo.erase_area == pytest.approx(0.02) and hi.erase_area == pytest.approx(0.5)
    assert lo.erase_aspect == pytest.approx(1.0) and hi.erase_aspect == pytest.approx(3.3)
    assert hi.erase_scale == pytest.approx((0.125, 0.5))
    assert (lo.label_follow, hi.label_follow) == (0.0, 1.0)


def test_a_legacy_seven_entry_action_decodes_with_targets_following_the_mix() -> None:
    """Policies exported before label_follow act in 7 dimensions; their rule was label_follow 1."""
    a = np.random.default_rng(1).uniform(-1, 1, ACTION_DIM)
    legacy, full = decode(a[:7]), decode(np.append(a[:7], 1.0))
    assert legacy.label_follow == 1.0 and legacy == full


def test_encode_inverts_decode() -> None:
    rng = np.random.default_rng(0)
    for _ in range(20):
        p = decode(rng.uniform(-1, 1, ACTION_DIM))
        q = decode(encode(p))
        assert q.k == p.k and q.high_band == p.high_band
        for name in ("alpha", "radius", "erase_p", "erase_area", "erase_aspect", "label_follow"):
            assert getattr(q, name) == pytest.approx(getattr(p, name), rel=1e-5, abs=1e-6)


def test_out_of_range_actions_are_clipped_and_nan_rejected() -> None:
    assert decode(np.full(ACTION_DIM, 7.0)) == decode(np.ones(ACTION_DIM))
    with pytest.raises(ValueError, match="NaN"):
        decode(np.full(ACTION_DIM, np.nan))
    with pytest.raises(ValueError, match="8 entries"):
        decode(np.zeros(3))


def test_bounds_squeeze_a_dimension_onto_the_given_range_on_its_own_scale() -> None:
    b = {"radius": (0.0, 0.05), "alpha": (0.5, 2.0), "k": (1, 3)}
    lo, mid, hi = (decode(np.full(ACTION_DIM, a), 6, b) for a in (-1.0, 0.0, 1.0))
    assert (lo.radius, hi.radius) == pytest.approx((0.0, 0.05), abs=1e-6) and mid.radius == pytest.approx(0.025, abs=1e-6)
    assert (lo.alpha, mid.alpha, hi.alpha) == pytest.approx((0.5, 1.0, 2.0), rel=1e-6)  # geometric centre: log scale
    assert (lo.k, hi.k) == (1, 3)
    rng = np.random.default_rng(0)
    for a in rng.uniform(-1, 1, (50, ACTION_DIM)):
        p, q = decode(a, 6, b), decode(a)
        assert 0.0 <= p.radius <= 0.05 + 1e-6 and 1 <= p.k <= 3
        assert (p.erase_p, p.erase_area, p.high_band) == (q.erase_p, q.erase_area, q.high_band)  # the rest unbounded


@pytest.mark.parametrize("bounds, message", [({"radius": (0.1, 0.05)}, "lo <= hi"),
                                             ({"radius": (0.0, 1.5)}, "leaves its range"),
                                             ({"high_band": (0, 1)}, "fix it instead"),
                                             ({"blur": (0, 1)}, "cannot bound 'blur'"),
                                             ({"k": (1, 9)}, "k_max=6")])
def test_bad_bounds_are_refused_with_the_parameter_named(bounds: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        check_bounds(bounds, 6)


def test_fixed_parameters_override_the_decoded_ones_and_keep_the_rest() -> None:
    p = decode(np.zeros(ACTION_DIM))
    q = with_fixed(p, {"k": 2.4, "high_band": 1, "label_follow": 0})
    assert (q.k, q.high_band, q.label_follow) == (2, True, 0.0)
    assert (q.alpha, q.radius, q.erase_p) == (p.alpha, p.radius, p.erase_p)
    assert with_fixed(p, {}) is p
    with pytest.raises(ValueError, match="erase_p must be in"):
        with_fixed(p, {"erase_p": 2.0})


def test_the_centre_of_the_action_box_with_labels_and_band_fixed_is_the_documented_fixed_hybrid() -> None:
    """RESULTS' `center` row is the action an untrained policy takes under --fix label_follow=0
    --fix high_band=0 (docs/deploy.md's fixed example is the same with the radius at 0.125, `c125`):
    the benchmark flags must decode from it."""
    p = with_fixed(decode(np.zeros(ACTION_DIM)), {"label_follow": 0.0, "high_band": 0.0})
    assert (p.k, p.alpha, p.radius, p.erase_p, p.high_band, p.label_follow) == (4, 1.0, 0.5, 0.5, False, 0.0)
    assert p.erase_scale == pytest.approx((0.065, 0.26)) and p.erase_aspect == pytest.approx(1.817, abs=1e-3)


def test_the_codec_decodes_by_the_table_then_squeezes_the_box_then_applies_the_fixes() -> None:
    bounds, fixed = {"radius": (0.0, 0.05), "alpha": (0.5, 2.0)}, {"label_follow": 0.0, "k": 2.4}
    codec = ActionCodec(bounds=bounds, fixed=fixed)
    assert codec.bounds == {"radius": (0.0, 0.05), "alpha": (0.5, 2.0)} and codec.fixed == fixed
    for a in np.random.default_rng(0).uniform(-1.5, 1.5, (20, ACTION_DIM)):
        assert codec.decode(a) == with_fixed(decode(a, 6, bounds), fixed)


def test_the_codec_applies_what_it_decodes_with_the_games_transform_and_fill() -> None:
    codec = ActionCodec(mix_mode="dct", erase_fill=0.0)
    x = torch.rand(8, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    y = torch.nn.functional.one_hot(torch.arange(8) % 4, 4).float()
    params, out, t = codec.augment(np.ones(ACTION_DIM), x, y, torch.Generator().manual_seed(1))
    assert params == decode(np.ones(ACTION_DIM))
    cfg = codec.augmentation(params)
    assert cfg.mix.mode == "dct" and cfg.erase.value == 0.0
    again = codec.apply(params, x, y, torch.Generator().manual_seed(1))
    assert torch.equal(out, again[0]) and torch.equal(t, again[1])


@pytest.mark.parametrize("kw, message", [(dict(mix_mode="wavelet"), "mode must be one of"),
                                         (dict(erase_fill="noise"), "erase value must be"),
                                         (dict(k_max=0), "k_max must be >= 1"),
                                         (dict(fixed={"blur": 1.0}), "cannot fix 'blur'")])
def test_a_bad_codec_setting_is_refused_when_it_is_built(kw: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ActionCodec(**kw)
