"""Export a trained SB3 policy to a file that loads with torch and safetensors alone (no pickle:
an SB3 ``.zip`` is not safe to share, ``PPO.load`` unpickles parts of it), and the
``PolicyAugmenter`` that drops the learned policy into any face-recognition training loop.

The file is a safetensors archive: the deterministic actor's weights as tensors (and, for PPO/A2C,
the Gaussian's state-independent ``log_std``, so the augmenter can also draw actions as the agent
did in the game) and, in its metadata, a JSON description of the layers, the action table, the
augmentation settings and the fallbacks used when a plain training loop cannot supply an
observation entry. The augmenter observes and acts through the game's own code
(``veil.env.observation``, ``veil.env.actions``), so a policy sees and does what it did there.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from veil.defenses.params import AugmentParams
from veil.env.actions import ACTION_DIM, ACTION_TABLE, LEGACY_ACTION_DIM, PARAM_NAMES, ActionCodec
from veil.env.observation import OBS_NAMES, observation

FORMAT = "veil-policy-1"


def _layers(module: nn.Module) -> list[nn.Module]:
    if isinstance(module, nn.Sequential):
        return [m for sub in module for m in _layers(sub)]
    return [module]


def actor_layers(algo: Any) -> tuple[list[nn.Module], str]:
    """The deterministic actor of an SB3 algorithm as a flat list of layers, and the final
    squashing (``clip`` for PPO/A2C, whose Gaussian mean SB3 clips; ``tanh`` for SAC)."""
    policy = algo.policy
    name = type(algo).__name__.lower()
    if name in ("ppo", "a2c"):
        return _layers(policy.mlp_extractor.policy_net) + [policy.action_net], "clip"
    if name == "sac":
        return _layers(policy.actor.latent_pi) + [policy.actor.mu], "tanh"
    if name == "td3":
        return _layers(policy.actor.mu), "clip"
    raise ValueError(f"cannot export a {type(algo).__name__} policy")


def export_policy(algo: Any, path: str | Path, env_config: Any, fallbacks: dict[str, float]) -> Path:
    """Write the policy of ``algo`` (PPO, A2C, SAC or TD3 on ``FaceAugmentEnv``) to ``path``."""
    layers, squash = actor_layers(algo)
    tensors: dict[str, torch.Tensor] = {}
    spec: list[str] = []
    for i, layer in enumerate(layers):
        if isinstance(layer, nn.Linear):
            tensors[f"{i}.weight"] = layer.weight.detach().cpu().contiguous()
            tensors[f"{i}.bias"] = layer.bias.detach().cpu().contiguous()
            spec.append("linear")
        elif isinstance(layer, (nn.Tanh, nn.ReLU)):
            spec.append(type(layer).__name__.lower())
        elif isinstance(layer, nn.Identity):
            continue
        else:
            raise ValueError(f"cannot export layer {layer!r}")
    log_std = getattr(algo.policy, "log_std", None)
    if squash == "clip" and isinstance(log_std, torch.Tensor):  # PPO/A2C: N(mean, exp(log_std)), then clipped
        tensors["log_std"] = log_std.detach().cpu().reshape(-1).contiguous()
    meta = {"format": FORMAT, "algo": type(algo).__name__, "layers": spec, "squash": squash,
            "action_table": [list(row) for row in ACTION_TABLE], "k_max": env_config.k_max,
            "mix_mode": env_config.mix_mode, "erase_fill": env_config.erase_fill,
            "ema": env_config.ema, "fallbacks": fallbacks, "env_config": _jsonable(asdict(env_config))}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    save_file(tensors, str(tmp), metadata={"veil": json.dumps(meta)})
    tmp.replace(path)
    return path


def _jsonable(obj: Any) -> Any:
    return json.loads(json.dumps(obj, default=str))


MAX_K = 16  # the largest k_max a policy file may carry (the game's default is 6)
LAYER_KINDS = ("linear", "tanh", "relu")


def check_policy(meta: dict[str, Any], tensors: dict[str, torch.Tensor]) -> None:
    """A policy file's header and tensors checked before anything is built from them: each
    problem is a ``ValueError`` naming the field (a file may come from anyone)."""
    def need(ok: bool, field: str, why: str) -> None:
        if not ok:
            raise ValueError(f"{field}: {why}")

    table = meta.get("action_table", [list(row) for row in ACTION_TABLE])
    need(isinstance(table, list) and len(table) in (LEGACY_ACTION_DIM, ACTION_DIM)
         and [r[0] if isinstance(r, list) and r else None for r in table] == list(PARAM_NAMES[:len(table)]),
         "action_table", f"must list the {ACTION_DIM} action parameters ({LEGACY_ACTION_DIM} before label_follow)")
    layers = meta.get("layers")
    need(isinstance(layers, list) and "linear" in layers and all(k in LAYER_KINDS for k in layers),
         "layers", f"must be a list of {', '.join(LAYER_KINDS)} with a linear layer, got {layers!r}")
    need(meta.get("squash") in ("clip", "tanh"), "squash", f"must be clip or tanh, got {meta.get('squash')!r}")
    k_max = meta.get("k_max")
    need(isinstance(k_max, int) and not isinstance(k_max, bool) and 1 <= k_max <= MAX_K, "k_max",
         f"must be an integer in 1..{MAX_K}, got {k_max!r}")
    ema = meta.get("ema", 0.95)
    need(isinstance(ema, (int, float)) and 0 <= ema < 1, "ema", f"must be in [0, 1), got {ema!r}")
    fallbacks = meta.get("fallbacks", {})
    need(isinstance(fallbacks, dict) and all(isinstance(v, (int, float)) and math.isfinite(v)
                                             for v in fallbacks.values()), "fallbacks", "must map names to numbers")
    need(isinstance(meta.get("env_config", {}), dict), "env_config", "must be a table")
    width, expected = len(OBS_NAMES) + len(table), set()
    for i, kind in enumerate(layers):
        if kind != "linear":
            continue
        w, b = tensors.get(f"{i}.weight"), tensors.get(f"{i}.bias")
        need(w is not None and b is not None, f"layer {i}", "its weight or bias tensor is missing")
        need(w.ndim == 2 and b.shape == (w.shape[0],), f"layer {i}",
             f"weight {tuple(w.shape)} and bias {tuple(b.shape)} do not make a linear layer")
        need(w.shape[1] == width, f"layer {i}", f"takes {w.shape[1]} inputs where {width} come in")
        need(bool(torch.isfinite(w).all() and torch.isfinite(b).all()), f"layer {i}", "holds NaN or inf")
        width = w.shape[0]
        expected |= {f"{i}.weight", f"{i}.bias"}
    need(width == len(table), "layers", f"the last layer gives {width} outputs, the action has {len(table)}")
    if "log_std" in tensors:
        log_std = tensors["log_std"]
        need(log_std.shape == (len(table),) and bool(torch.isfinite(log_std).all()), "log_std",
             f"must be {len(table)} finite numbers, got shape {tuple(log_std.shape)}")
        expected.add("log_std")
    need(set(tensors) == expected, "tensors", f"unexpected {sorted(set(tensors) - expected)}")


class PolicyAugmenter(nn.Module):
    """A learned augmentation policy for any FR training loop.

    Called once per batch as ``images, targets = augmenter(images, targets, loss=..., step=...,
    total_steps=..., val_acc=None, train_acc=None)`` with float images in [0, 1] (B, C, H, W)
    and soft targets (B, K). It builds the environment's observation from what it is fed and
    its own moving statistics, picks the augmentation parameters with the policy network
    (the mean action by default; ``sample=True`` draws it from the agent's Gaussian and clips it,
    as SB3 did in the game, so the FR model sees the spread of augmentations the game's model
    saw), and applies frequency MixUp then random erasing through ``codec``, the game's
    ``ActionCodec`` (with the parameters its game fixed and the box it bounded them to).

    Fallbacks for what a plain loop lacks: ``val_acc`` (the last value given, else the mean
    validation accuracy seen while the agent trained), ``train_acc`` (likewise), the privacy
    probe (0: no probe), the gradient norm (the mean seen in training). ``loss`` (on the augmented
    batch) feeds the augmented-loss statistic, and the clean one too unless ``clean_loss`` (the
    loss on clean images, as the game saw it; optional, e.g. every few steps) is given; before the
    first loss, ln(K).

    Example:
        >>> aug = PolicyAugmenter.load("policy.safetensors")
        >>> for step, (x, y) in enumerate(loader):
        ...     x, y = aug(x, y, loss=last_loss, step=step, total_steps=n_steps)
    """

    def __init__(self, actor: nn.Sequential, meta: dict[str, Any], seed: int = 0,
                 warmup_steps: int | None = None, log_std: torch.Tensor | None = None,
                 sample: bool = False) -> None:
        super().__init__()
        if sample and log_std is None:
            raise ValueError(f"this policy ({meta.get('algo', '?')}) was exported without action noise; "
                             "only PPO and A2C policies can be sampled")
        self.sample = sample
        self.log_std = None if log_std is None else log_std.float().reshape(1, -1)
        game = meta.get("env_config", {})
        self.codec = ActionCodec(k_max=int(meta["k_max"]), bounds=game.get("param_bounds") or {},
                                 fixed=game.get("fixed_params") or {}, mix_mode=meta["mix_mode"],
                                 erase_fill=meta["erase_fill"])  # the game's fixes and box, checked once
        self.warmup_steps, self.warmup_source = self._default_warmup(meta, warmup_steps)
        self.actor = actor
        self.meta = meta
        self.squash = meta["squash"]
        self.ema = float(meta.get("ema", 0.95))
        self.fallbacks = dict(meta.get("fallbacks", {}))
        self.generator = torch.Generator().manual_seed(seed)
        self.loss_avg: float | None = None
        self.clean_loss_avg: float | None = None
        self.val_acc: float | None = None
        self.train_acc: float | None = None
        # a policy exported before label_follow acts in 7 dimensions and observes 15 values
        self.action_dim = len(meta.get("action_table", ACTION_TABLE))
        self.obs_width = len(OBS_NAMES) + self.action_dim
        self.last_action = np.zeros(self.action_dim, dtype=np.float32)
        self.last_params: AugmentParams | None = None
        self._param_sums: dict[str, float] = {}
        self._acted = 0
        self._clean = 0

    def _default_warmup(self, meta: dict[str, Any], warmup_steps: int | None) -> tuple[int, str]:
        """Clean batches before the policy acts, and why. The game's own warm-up by default, except
        for a policy whose game fixed ``label_follow`` to 0: label-preserving mixing protects only
        when the model never sees the clean low band first (AT&T, RESULTS: +15.4 points of PCA
        top-1 after the game's 100 clean batches, -17.9 without them), so it acts from batch one."""
        if warmup_steps is not None:
            return int(warmup_steps), "as asked"
        if self.codec.fixed.get("label_follow") == 0:
            return 0, "none: the game fixed label_follow=0, which protects only from the first batch"
        return int(meta.get("env_config", {}).get("warmup_steps", 0)), "as in the game"

    def take_param_means(self) -> dict[str, float]:
        """The mean of each parameter the policy chose over the batches since the last call
        (``high_band`` as the share of batches mixing the high band), with ``clean_share``, the
        share of those batches left clean by the warm-up; then starts counting again. Empty when
        no batch went through. What the policy did in a run, for logs and plots."""
        n = self._acted + self._clean
        out = {name: total / self._acted for name, total in self._param_sums.items()} if self._acted else {}
        if n:
            out["clean_share"] = self._clean / n
        self._param_sums, self._acted, self._clean = {}, 0, 0
        return out

    @classmethod
    def load(cls, path: str | Path, seed: int = 0, warmup_steps: int | None = None,
             sample: bool = False) -> "PolicyAugmenter":
        """Load an exported policy (safetensors; no pickle is involved). ``warmup_steps``: clean
        batches before the policy acts (default: the game's own warm-up, 0 for a policy whose game
        fixed label_follow=0; see ``_default_warmup``); ``sample``: draw
        actions from the agent's Gaussian instead of taking its mean."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"policy file {path} does not exist")
        try:
            with safe_open(str(path), framework="pt") as f:
                meta = json.loads((f.metadata() or {}).get("veil", "{}"))
                tensors = {k: f.get_tensor(k) for k in f.keys()}
        except Exception as err:
            raise ValueError(f"{path} is not a veil policy file: {err}") from None
        if not isinstance(meta, dict) or meta.get("format") != FORMAT:
            raise ValueError(f"{path} is not a veil policy file (format "
                             f"{meta.get('format') if isinstance(meta, dict) else meta!r})")
        try:
            check_policy(meta, tensors)
        except ValueError as err:
            raise ValueError(f"{path}: {err}") from None
        layers: list[nn.Module] = []
        for i, kind in enumerate(meta["layers"]):
            if kind == "linear":
                w, b = tensors[f"{i}.weight"], tensors[f"{i}.bias"]
                lin = nn.Linear(w.shape[1], w.shape[0])
                lin.weight.data.copy_(w)
                lin.bias.data.copy_(b)
                layers.append(lin)
            else:
                layers.append(nn.Tanh() if kind == "tanh" else nn.ReLU())
        try:
            return cls(nn.Sequential(*layers).eval(), meta, seed, warmup_steps, tensors.get("log_std"), sample)
        except ValueError as err:
            raise ValueError(f"{path}: {err}") from err

    def game_fr_steps(self) -> int | None:
        """About how many FR steps the game's model took while the policy learned (warm-up plus
        the FR share of the agent's steps), or ``None`` when the file does not say."""
        env = self.meta.get("env_config", {})
        try:
            horizon, warm = int(env["horizon"]), int(env.get("warmup_steps", 0))
            if env.get("schedule") == "interleaved":
                return warm + horizon
            n1, n2 = int(env["policy_steps"]), int(env["fr_steps"])
            return warm + horizon * n2 // max(1, n1 + n2)
        except (KeyError, TypeError, ValueError):
            return None

    def budget_warning(self, planned_steps: int) -> str | None:
        """Why a run of ``planned_steps`` batches will not use the policy as it was learned, or
        ``None``: the clean warm-up covers the whole run, or the run is under half the game's."""
        game = self.game_fr_steps()
        if self.warmup_steps >= planned_steps:
            return (f"the clean warm-up ({self.warmup_steps} batches) covers this whole run of {planned_steps}; "
                    "the policy never acts. Lower the warm-up or train longer.")
        if game and planned_steps < game / 2:
            return (f"this policy was learned against an FR model trained for about {game} steps; this run has "
                    f"{planned_steps}. On AT&T, 150-step runs with such a policy reached 77-90% top-1 against "
                    f"95-98% without it (docs/RESULTS.md); train for about {game} steps to match the game.")
        return None

    def _ema(self, avg: float | None, value: float) -> float:
        return float(value) if avg is None else self.ema * avg + (1 - self.ema) * float(value)

    @torch.no_grad()
    def act(self, obs: torch.Tensor, sample: bool | None = None) -> torch.Tensor:
        """Actions for observations (N, 16) -> (N, 8) in [-1, 1] ((N, 15) -> (N, 7) for a policy
        exported before label_follow): the mean action, or with
        ``sample`` (default: as loaded) a draw from N(mean, exp(log_std)) clipped to the box."""
        out = self.actor(obs.float())
        if self.sample if sample is None else sample:
            if self.log_std is None:
                raise ValueError("this policy was exported without action noise; it cannot be sampled")
            noise = torch.randn(out.shape, generator=self.generator)
            out = out + noise * self.log_std.exp()
        return torch.tanh(out) if self.squash == "tanh" else out.clamp(-1.0, 1.0)

    def observation(self, num_classes: int, step: int, total_steps: int) -> np.ndarray:
        """The game's observation from what this loop fed the augmenter and the fallbacks: every
        step counts as an FR step, and no probe runs."""
        log_k = math.log(max(2, num_classes))
        loss = self.loss_avg if self.loss_avg is not None else log_k
        clean = self.clean_loss_avg if self.clean_loss_avg is not None else loss
        fb = self.fallbacks
        val = self.val_acc if self.val_acc is not None else fb.get("acc_val", 0.0)
        train = self.train_acc if self.train_acc is not None else fb.get("acc_train", val)
        return observation(step=step, horizon=total_steps, fr_step=True, loss_clean=clean, loss_aug=loss, log_k=log_k,
                           acc_train=train, acc_val=val, probe_top1=0.0, grad_norm=fb.get("grad_norm", 0.0),
                           last_action=self.last_action)

    def forward(self, images: torch.Tensor, targets: torch.Tensor, loss: float | None = None, step: int = 0,
                total_steps: int = 1, val_acc: float | None = None,
                train_acc: float | None = None, clean_loss: float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        if loss is not None and math.isfinite(loss):
            self.loss_avg = self._ema(self.loss_avg, loss)
        if clean_loss is not None and math.isfinite(clean_loss):
            self.clean_loss_avg = self._ema(self.clean_loss_avg, clean_loss)
        if val_acc is not None:
            self.val_acc = float(val_acc)
        if train_acc is not None:
            self.train_acc = self._ema(self.train_acc, train_acc)
        if step < self.warmup_steps:  # the game's clean warm-up: the policy acts on a model past it
            self.last_params = None
            self._clean += 1
            return images, targets
        obs = self.observation(targets.shape[1], step, total_steps)
        action = self.act(torch.from_numpy(obs)[None])[0].numpy()
        self.last_action = action.astype(np.float32)
        params, images, targets = self.codec.augment(action, images, targets, self.generator)
        self.last_params = params
        for name, value in asdict(params).items():
            self._param_sums[name] = self._param_sums.get(name, 0.0) + float(value)
        self._acted += 1
        return images, targets
