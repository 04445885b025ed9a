"""One code path on every device: ``--device`` resolves once and fails early, the trainer, the env
and every attack put their tensors on the chosen device, AMP trains, and ``--device cpu`` is the CPU
path bit for bit. Each placement test runs on the CPU everywhere and on CUDA where there is one."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from veil.agents.cli import main
from veil.attacks.gan import GANConfig, train_gan
from veil.attacks.gmi import GMIConfig, gmi_attack
from veil.attacks.kedmi import KEDMIConfig, kedmi_attack, train_kedmi_gan
from veil.attacks.pca import FacePrior, PCAAttackConfig, pca_attack
from veil.attacks.plgmi import PLGMIConfig, plgmi_attack, train_plgmi_gan
from veil.attacks.whitebox import WhiteBoxConfig, whitebox_attack
from veil.env import FaceScheduleEnv, ScheduleGameConfig
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
    one_hot,
    resolve_device,
    split_identities,
    to_float,
)
from veil.recognition.device import module_device

CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")
DEVICES = [pytest.param("cpu", id="cpu"), pytest.param("cuda", id="cuda", marks=CUDA)]
COMMANDS = ("train-fr", "train-agent", "attack", "benchmark", "calibrate", "demo", "race", "learn-schedule")
TINY = ["--data", "synthetic", "--synthetic-identities", "8", "--synthetic-images", "6", "--image-size", "32",
        "--batch-size", "16", "--threads", "1"]
TINY_GAN = GANConfig(latent_dim=16, width=8, steps=2, batch_size=8, n_critic=1, max_seconds=None)


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


@pytest.fixture(scope="module")
def split():
    data = load_faces(DataConfig(synthetic_identities=8, synthetic_images=6, image_size=32, use_cache=False))
    return split_identities(data, SplitConfig(n_private=4))


def _tiny_model(split, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_model(ModelConfig(num_classes=split.num_private, width=8, embedding_dim=16, image_size=32))


def _on(module: torch.nn.Module, device: str) -> bool:
    return all(t.device.type == device for t in [*module.parameters(), *module.buffers()])


# ----------------------------------------------------------------------------------- resolving --device

def test_auto_picks_cuda_then_mps_then_cpu() -> None:
    mps = torch.backends.mps.is_available()
    expected = "cuda" if torch.cuda.is_available() else "mps" if mps else "cpu"
    assert resolve_device("auto").type == expected
    assert resolve_device("cpu") == torch.device("cpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_an_absent_cuda_is_a_one_line_error_naming_it() -> None:
    with pytest.raises(ValueError, match="device 'cuda': CUDA is not available on this machine"):
        resolve_device("cuda")
    with pytest.raises(ValueError, match="device 'cuda:1': CUDA is not available"):
        resolve_device("cuda:1")


def test_an_unknown_device_is_a_one_line_error_naming_it() -> None:
    with pytest.raises(ValueError, match="device 'tpu': unknown device; give one of auto|cpu|cuda|cuda:N|mps"):
        resolve_device("tpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_device_cuda_fails_while_the_command_line_is_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                         capsys: pytest.CaptureFixture) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(["train-fr", *TINY, "--device", "cuda"]) == 2
    err = capsys.readouterr().err
    assert "veil train-fr: error: argument --device: cuda: CUDA is not available on this machine" in err
    assert "Traceback" not in err and not (tmp_path / "mlruns").exists()  # nothing loaded, nothing logged


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_takes_device_and_the_speed_options(command: str, capsys: pytest.CaptureFixture) -> None:
    assert main([command, "--help"]) == 0
    out = capsys.readouterr().out
    assert all(flag in out for flag in ("--device", "--amp", "--channels-last", "--compile"))


# ----------------------------------------------------------------------------------- placement

@pytest.mark.parametrize("device", DEVICES)
def test_a_train_step_keeps_every_parameter_buffer_and_batch_tensor_on_the_device(split, device: str) -> None:
    trainer = Trainer(_tiny_model(split), TrainerConfig(batch_size=8), split.num_private, device=device)
    seen: list[torch.device] = []
    trainer.before_step.append(lambda x, y: seen.extend([x.device, y.device]))
    x, y = to_float(split.train_images[:8]), one_hot(split.train_labels[:8], split.num_private)  # given on the CPU
    stats = trainer.step(x, y)
    assert _on(trainer.model, device) and {d.type for d in seen} == {device}
    assert all(s["exp_avg"].device.type == device for s in trainer.optimizer.state.values())
    assert np.isfinite(stats.loss) and trainer.global_step == 1


@pytest.mark.parametrize("device", DEVICES)
def test_fit_and_evaluate_run_on_the_device(split, device: str) -> None:
    trainer = Trainer(_tiny_model(split), TrainerConfig(epochs=1, batch_size=8), split.num_private, device=device)
    places: set[str] = set()

    def augment(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        places.update({x.device.type, y.device.type})  # flips and augmentation run where the model does
        return x, y

    history = trainer.fit(split.train_images, split.train_labels, split.test_images, split.test_labels,
                          augment=augment, progress=False)
    assert places == {device} and 0.0 <= history[-1]["test_top1"] <= 1.0


@pytest.mark.parametrize("device", DEVICES)
def test_an_env_step_trains_the_fr_model_on_the_device(device: str) -> None:
    env = FaceAugmentEnv(EnvConfig(data=DataConfig(synthetic_identities=8, synthetic_images=10, image_size=32,
                                                   use_cache=False),
                                   split=SplitConfig(n_private=4), batch_size=8, width=8, policy_steps=0, fr_steps=1,
                                   device=device))
    env.reset(seed=0)
    _, reward, _, _, info = env.step(np.zeros(8, dtype=np.float32))
    images, targets = env.last_batch
    assert _on(env.trainer.model, device) and images.device.type == device and targets.device.type == device
    assert info["phase"] == "fr" and np.isfinite(reward)


def test_the_envs_take_the_speed_options_for_their_fr_model() -> None:
    """``train-agent`` and ``learn-schedule`` pass ``--amp``/``--channels-last`` through to the FR model
    of both games: the per-batch env steps with bf16 autocast, the whole-run game trains under it."""
    speed = DeviceConfig(device="cpu", amp="bf16", channels_last=True)
    env = FaceAugmentEnv(EnvConfig(data=DataConfig(synthetic_identities=8, synthetic_images=10, image_size=32,
                                                   use_cache=False),
                                   split=SplitConfig(n_private=4), batch_size=8, width=8, policy_steps=0, fr_steps=1,
                                   device=speed))
    env.reset(seed=0)
    _, reward, _, _, info = env.step(np.zeros(8, dtype=np.float32))
    assert env.trainer.device_config == speed and info["phase"] == "fr" and np.isfinite(reward)
    game = FaceScheduleEnv(ScheduleGameConfig(data=DataConfig(synthetic_identities=6, synthetic_images=8, image_size=32,
                                                              use_cache=False),
                                              epochs=1, batch_size=16, segments=1, device=speed))
    game.reset(seed=0)
    _, reward, done, _, _ = game.step(np.zeros(8, dtype=np.float32))
    assert game.trainer.device_config == speed and done and np.isfinite(reward)


@pytest.fixture(scope="module")
def target(split):
    trainer = Trainer(_tiny_model(split), TrainerConfig(epochs=2, batch_size=8, lr=3e-3), split.num_private)
    trainer.fit(split.train_images, split.train_labels, progress=False)
    return trainer.model


def _attack(name: str, target: torch.nn.Module, split, g: torch.Generator):
    """One tiny run of attack ``name`` (its GAN trained for two steps): (images, labels, networks)."""
    classes = torch.arange(split.num_private)
    device = module_device(target)
    if name == "pca":
        prior = FacePrior.fit(split.public_images, 8)
        return (*pca_attack(target, prior, classes, PCAAttackConfig(components=8, steps=1, seeds=1), g), [])
    if name == "whitebox":
        return (*whitebox_attack(target, split.public_images, classes, WhiteBoxConfig(steps=1, seeds=1), g), [])
    if name == "gmi":
        gan = train_gan(split.public_images, TINY_GAN, cache=False, progress=False, device=device)
        return (*gmi_attack(target, gan, classes, GMIConfig(steps=1, seeds=1), g), [gan.generator, gan.discriminator])
    if name == "kedmi":
        gan = train_kedmi_gan(target, split.public_images, TINY_GAN, cache=False, progress=False)
        out = kedmi_attack(target, gan, classes, KEDMIConfig(steps=1, seeds=1, samples_per_step=1), g)
        return (*out, [gan.generator, gan.discriminator])
    gan = train_plgmi_gan(target, split.public_images, TINY_GAN, cache=False, top_n=2, progress=False)
    return (*plgmi_attack(target, gan, classes, PLGMIConfig(steps=1, seeds=1, views=1), g), [gan.generator])


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", ["pca", "whitebox", "gmi", "kedmi", "plgmi"])
def test_each_attack_runs_where_the_target_is(split, target, name: str, device: str) -> None:
    target = target.to(device)
    try:
        images, labels, networks = _attack(name, target, split, torch.Generator().manual_seed(0))
        assert images.device.type == device and labels.device.type == device
        assert images.shape == (split.num_private, 3, 32, 32) and torch.isfinite(images).all()
        assert all(_on(net, device) for net in networks)
    finally:
        target.to("cpu")


# ----------------------------------------------------------------------------------- speed options

def test_bf16_autocast_on_the_cpu_trains_with_finite_losses(split) -> None:
    trainer = Trainer(_tiny_model(split), TrainerConfig(batch_size=8, lr=3e-3), split.num_private,
                      device=DeviceConfig(device="cpu", amp="bf16"))
    before = [p.detach().clone() for p in trainer.model.parameters()]
    x, y = to_float(split.train_images[:8]), one_hot(split.train_labels[:8], split.num_private)
    losses = [trainer.step(x, y).loss for _ in range(3)]
    assert all(np.isfinite(losses)) and trainer.scaler is None  # bf16 keeps float32's range: no scaler
    assert any(not torch.equal(b, p) for b, p in zip(before, trainer.model.parameters()))
    assert np.isfinite(trainer.evaluate(split.test_images, split.test_labels)["loss"])


def test_channels_last_gives_the_same_step_as_the_default_layout(split) -> None:
    x, y = to_float(split.train_images[:8]), one_hot(split.train_labels[:8], split.num_private)
    plain = Trainer(_tiny_model(split), TrainerConfig(batch_size=8), split.num_private).step(x, y)
    last = Trainer(_tiny_model(split), TrainerConfig(batch_size=8), split.num_private,
                   device=DeviceConfig(device="cpu", channels_last=True)).step(x, y)
    assert last.loss == pytest.approx(plain.loss, rel=1e-5)


def test_an_unknown_amp_mode_is_refused() -> None:
    with pytest.raises(ValueError, match="amp must be one of none, bf16, fp16, got 'fp8'"):
        DeviceConfig(amp="fp8")


# ----------------------------------------------------------------------------------- the CPU path is unchanged

def test_device_cpu_trains_exactly_what_no_device_flag_trains(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    states = []
    for i, extra in enumerate(([], ["--device", "cpu"])):
        ckpt = tmp_path / f"{i}.pt"
        assert main(["train-fr", *TINY, "--epochs", "1", "--seed", "4", "--checkpoint", str(ckpt), *extra]) == 0
        states.append(torch.load(ckpt, weights_only=True))
    assert states[0]["history"][0]["train_loss"] == states[1]["history"][0]["train_loss"]  # to the last bit
    assert states[0]["history"][0]["test_loss"] == states[1]["history"][0]["test_loss"]
    assert all(torch.equal(states[0]["model"][k], states[1]["model"][k]) for k in states[0]["model"])
