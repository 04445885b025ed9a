"""The option groups the ``veil`` commands share, and the one mapping from them to config dataclasses.

Every flag's default is read from the dataclass field it sets, so a default is written once. Each
command module adds its own parser with these groups; ``veil benchmark`` also reads them as
overrides of an experiment plan (``plan.py``), through the same tables. The device options
(``add_device_args``) map to ``DeviceConfig`` through ``DEVICE_FLAGS``; ``--device`` is resolved
while the command line is read, so an absent device fails before any data loads.
"""

from __future__ import annotations

import argparse
import copy
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from typing import Any

from veil.defenses.baselines import BiDOConfig, MIDConfig, NegLSConfig
from veil.defenses.dp import DPConfig
from veil.defenses.erasing import EraseConfig
from veil.defenses.loft import ACTIVATIONS, LoFtConfig
from veil.defenses.mixup import MixConfig, band_for
from veil.defenses.tldmi import TLDMIConfig
from veil.defenses.trapmid import TrapMIDConfig
from veil.recognition import DataConfig, DeviceConfig, SplitConfig, TrainerConfig
from veil.recognition.data import IN_MEMORY_MAX_BYTES
from veil.recognition.device import AMP_DTYPES, DEVICE_CHOICES, device_problem

from .cluster import ClusterConfig
from .fr_defenses import DefenseOptions, parse_defenses

EPILOG_DATA = """data sources:
  synthetic   the embedded default: deterministic synthetic identities (no download)
  att, cfp    AT&T faces / CFP under $VEIL_DATA_ROOT (default ../shared/datasets)
  PATH        a folder with one sub-folder of images per identity (LFW, FaceScrub,
              VGGFace2, CASIA-WebFace layout) or a CelebA root with identity_CelebA.txt
"""

# flag dest -> (config, field): the one mapping from the data options to DataConfig and SplitConfig
DATA_FLAGS: dict[str, tuple[str, str]] = {
    "data": ("data", "source"), "data_root": ("data", "data_root"), "image_size": ("data", "image_size"),
    "channels": ("data", "channels"), "align": ("data", "align"), "pose": ("data", "pose"),
    "strict": ("data", "strict"), "max_identities": ("data", "max_identities"),
    "synthetic_identities": ("data", "synthetic_identities"), "synthetic_images": ("data", "synthetic_images"),
    "n_private": ("split", "n_private"), "test_fraction": ("split", "test_fraction"), "split_seed": ("split", "seed"),
    "validation": ("split", "validation"),
    "in_memory": ("data", "in_memory"), "data_workers": ("data", "workers"),
}
NEGATED_DATA_FLAGS = {"no_cache": ("data", "use_cache")}  # a store_true flag that turns a field off
# flag dest -> DeviceConfig field: the one mapping from the device options to DeviceConfig
DEVICE_FLAGS: dict[str, str] = {"device": "device", "amp": "amp", "channels_last": "channels_last",
                                "compile": "compile"}
# flag dest -> ClusterConfig field: the one mapping from the Ray options to ClusterConfig
CLUSTER_FLAGS: dict[str, str] = {"ray": "address", "ray_gpus": "gpus", "ray_retries": "max_retries",
                                 "ray_storage": "storage"}


MAX_MIX_K = 6  # --mix-k's range, as the game's k_max


def count(minimum: int = 1) -> Callable[[str], int]:
    """An argparse ``type``: a whole number >= ``minimum``, so an impossible count (``--epochs -1``)
    is refused while the command line is read, before any data loads, in one line naming it."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be a whole number >= {minimum}, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be >= {minimum}, got {value}")
        return value

    parse.__name__ = f"count>={minimum}"
    return parse


def memory_mode(text: str) -> bool | None:
    """``--in-memory``: ``auto`` (by size) -> None, ``yes`` -> True, ``no`` -> False."""
    modes = {"auto": None, "yes": True, "no": False}
    if text not in modes:
        raise argparse.ArgumentTypeError(f"must be auto, yes or no, got {text!r}")
    return modes[text]


@dataclass
class FRBudget:
    """How a target trains: ``veil train-fr``'s model and budget options (also every benchmark row's).

    The defaults are the command's, written once here and read by its parser.
    """

    epochs: int = 20
    batch_size: int = 32
    lr: float = TrainerConfig.lr
    model: str = "cnn"
    threads: int | None = None
    weights: str | None = None  # a local pretrained backbone file every target starts from (ModelConfig.weights)


def add_data_args(p: argparse.ArgumentParser) -> None:
    """The data and split options (defaults from ``DataConfig`` and ``SplitConfig``)."""
    d, s = DataConfig, SplitConfig
    g = p.add_argument_group("data")
    g.add_argument("--data", default=d.source, metavar="{synthetic,att,cfp,PATH}",
                   help=f"face data to train on (default: {d.source}; see 'data sources' below)")
    g.add_argument("--data-root", default=d.data_root, metavar="DIR",
                   help="folder holding att_faces/ and cfp/ (default: $VEIL_DATA_ROOT or ../shared/datasets)")
    g.add_argument("--image-size", type=count(1), default=d.image_size,
                   help=f"side of the square images in pixels (default: {d.image_size})")
    g.add_argument("--channels", type=int, choices=(1, 3), default=d.channels,
                   help="3: grey sets become RGB (default); 1: everything becomes grey")
    g.add_argument("--align", action="store_true",
                   help="align faces with facenet-pytorch's MTCNN (cached; center crop when no face is found)")
    g.add_argument("--pose", choices=("frontal", "profile", "all"), default=d.pose,
                   help=f"CFP-style sets: which poses to load (default: {d.pose})")
    g.add_argument("--strict", action="store_true", help="fail on an unreadable image instead of skipping it")
    g.add_argument("--max-identities", type=count(1), default=d.max_identities,
                   help="keep only the N identities with the most images (large sets like CelebA)")
    g.add_argument("--n-private", type=count(1), default=s.n_private,
                   help="number of private (target) identities; the rest are public (default: half)")
    g.add_argument("--test-fraction", type=float, default=s.test_fraction,
                   help=f"share of each private identity's images held out for testing (default: {s.test_fraction})")
    g.add_argument("--split-seed", type=int, default=s.seed,
                   help=f"seed of the identity and train/test split (default: {s.seed})")
    g.add_argument("--validation", action="store_true",
                   help="score on a validation split carved from the private training images (--test-fraction of "
                        "them); the test images join no set, so what you tune on it leaves the test split unseen")
    g.add_argument("--no-cache", action="store_true", help="do not read or write the preprocessed-data cache")
    g.add_argument("--in-memory", type=memory_mode, default=d.in_memory, metavar="{auto,yes,no}",
                   help="yes: read the set into memory; no: keep it memory-mapped on disk, streamed by "
                        "--data-workers processes (needs the cache); auto (default): by size, in memory up to "
                        f"{IN_MEMORY_MAX_BYTES / 1024**3:.0f} GiB. The results are the same")
    g.add_argument("--data-workers", type=count(0), default=d.workers, metavar="N",
                   help=f"processes reading a memory-mapped set's batches (default: {d.workers})")
    g.add_argument("--synthetic-identities", type=count(1), default=d.synthetic_identities,
                   help=f"synthetic data: number of identities (default: {d.synthetic_identities})")
    g.add_argument("--synthetic-images", type=count(1), default=d.synthetic_images,
                   help=f"synthetic data: images per identity (default: {d.synthetic_images})")


def device_name(text: str) -> str:
    """An argparse ``type`` for ``--device``: the device resolved (``auto`` becomes what it picks), or
    a one-line error while the command line is read, e.g. ``cuda: CUDA is not available on this machine``."""
    dev, problem = device_problem(text)
    if dev is None:
        raise argparse.ArgumentTypeError(f"{text}: {problem}")
    return str(dev)


def add_device_args(p: argparse.ArgumentParser) -> None:
    """Where the models train and attack, and the GPU speed options (defaults from ``DeviceConfig``:
    all off, so the CPU path is as it was)."""
    d = DeviceConfig
    g = p.add_argument_group("device")
    g.add_argument("--device", type=device_name, default=d.device, metavar=DEVICE_CHOICES,
                   help=f"where models train and attack: auto picks CUDA, then MPS, then CPU (default: {d.device})")
    g.add_argument("--amp", choices=tuple(AMP_DTYPES), default=d.amp,
                   help=f"mixed precision of the FR model's forward passes; fp16 adds a gradient scaler on CUDA "
                        f"(default: {d.amp})")
    g.add_argument("--channels-last", action="store_true",
                   help="channels-last memory format for the convolutional backbones (faster on recent GPUs)")
    g.add_argument("--compile", action="store_true",
                   help="torch.compile the FR model (slow first steps; where the backend supports the model)")


def device_config(args: argparse.Namespace) -> DeviceConfig:
    """The ``DeviceConfig`` the device options describe (its defaults where a parser lacks them)."""
    return DeviceConfig(**{field: getattr(args, dest) for dest, field in DEVICE_FLAGS.items() if hasattr(args, dest)})


def data_configs(args: argparse.Namespace, base: tuple[DataConfig, SplitConfig] | None = None,
                 given: Iterable[str] | None = None) -> tuple[DataConfig, SplitConfig]:
    """The ``DataConfig`` and ``SplitConfig`` the data options describe: every option (``given``
    None), or only the ``given`` ones over ``base`` (a plan's data)."""
    data, split = base or (DataConfig(), SplitConfig())
    changes: dict[str, dict[str, Any]] = {"data": {}, "split": {}}
    chosen = set(vars(args)) if given is None else set(given)
    for dest, (section, name) in DATA_FLAGS.items():
        if dest in chosen and hasattr(args, dest):
            changes[section][name] = getattr(args, dest)
    for dest, (section, name) in NEGATED_DATA_FLAGS.items():
        if dest in chosen and hasattr(args, dest):
            changes[section][name] = not getattr(args, dest)
    return replace(data, **changes["data"]), replace(split, **changes["split"])


def tracking_uri(text: str) -> str:
    """``--tracking-uri``, refused at once if it names a folder: MLflow 3 keeps its file store
    read-only (maintenance mode), which otherwise fails only once the work is done."""
    scheme = text.split(":", 1)[0] if "://" in text else ""
    if scheme in ("", "file"):
        raise argparse.ArgumentTypeError(f"{text!r} is a folder store, which MLflow 3 no longer writes to; give a "
                                         "database, e.g. sqlite:///mlruns/mlflow.db (mlflow migrate-filestore "
                                         "converts an old folder)")
    return text


def add_cluster_args(p: argparse.ArgumentParser) -> None:
    """Where a plan's cells run: in this process (the default) or as Ray tasks on a cluster
    (defaults from ``ClusterConfig``; docs/scale.md)."""
    c = ClusterConfig
    g = p.add_argument_group("cluster (Ray; pip install 'veil[ray]')")
    g.add_argument("--ray", default=c.address, metavar="auto|ADDRESS",
                   help="run each cell as a Ray task on this cluster: auto (this machine's cluster or $RAY_ADDRESS), "
                        "HOST:PORT of the head, ray://HOST:PORT, or local (a new one on this machine's CPUs) "
                        "(default: every cell in this process)")
    g.add_argument("--ray-gpus", type=float, default=c.gpus, metavar="N",
                   help="GPUs each cell's task asks for (default: 1 with --device cuda, else 0)")
    g.add_argument("--ray-retries", type=count(0), default=c.max_retries,
                   help=f"times a cell whose worker died is rerun (default: {c.max_retries})")


def add_population_cluster_args(p: argparse.ArgumentParser) -> None:
    """Where a population search's members run (``veil learn-schedule``'s PBT): a Ray started on
    this machine (the default) or an existing cluster (defaults from ``ClusterConfig``)."""
    c = ClusterConfig
    g = p.add_argument_group("cluster (PBT's members; Ray)")
    g.add_argument("--ray", default=c.address, metavar="auto|ADDRESS",
                   help="run PBT's members as Ray Tune trials on this cluster: auto, HOST:PORT of the head or "
                        "ray://HOST:PORT (default: a Ray started on this machine for the command)")
    g.add_argument("--ray-gpus", type=float, default=c.gpus, metavar="N",
                   help="GPUs each member asks for (default: 1 with --device cuda, else 0)")
    g.add_argument("--ray-retries", type=count(0), default=c.max_retries,
                   help=f"times a member whose worker died restarts from its last segment's checkpoint on a "
                        f"cluster (default: {c.max_retries}; none on this machine's own Ray)")
    g.add_argument("--ray-storage", default=c.storage, metavar="DIR|URI",
                   help="where the members' checkpoints go: a folder every node sees or a cloud URI (s3://...) "
                        "(default: a temporary folder on this machine; right for one machine)")


def cluster_config(args: argparse.Namespace) -> ClusterConfig:
    """The ``ClusterConfig`` the Ray options describe (its defaults where a parser lacks them)."""
    return ClusterConfig(**{field: getattr(args, dest) for dest, field in CLUSTER_FLAGS.items() if hasattr(args, dest)})


def add_tracking_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("tracking")
    g.add_argument("--tracking-uri", default=None, type=tracking_uri,
                   help="MLflow tracking URI (default: $VEIL_TRACKING_URI or sqlite:///./mlruns/mlflow.db)")
    g.add_argument("--experiment", default="veil", help="MLflow experiment name (default: veil)")
    g.add_argument("--run-name", default=None, help="MLflow run name (default: derived from model and data)")


def add_defense_args(p: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    """The defense options of ``veil train-fr``; a benchmark plan's named defenses set the same ones."""
    e, m, t = EraseConfig, MixConfig, TrapMIDConfig
    g = p.add_argument_group("defenses (see docs/reference.md: Defenses)") if isinstance(p, argparse.ArgumentParser) \
        else p
    g.add_argument("--defense", default="none", metavar="{none,re,mixup,hybrid,tldmi,negls,mid,bido,dp,trapmid,loft}",
                   help="defense(s) to train with, comma-separated, e.g. re,tldmi; hybrid = mixup then re "
                        "(default: none)")
    g.add_argument("--re-p", type=float, default=e.p, help=f"re: probability a sample is erased (default: {e.p})")
    g.add_argument("--re-area", type=float, nargs=2, default=e.scale, metavar=("LO", "HI"),
                   help="re: erased area fraction range (default: %(default)s)")
    g.add_argument("--re-aspect", type=float, default=e.ratio[1],
                   help="re: aspect ratios drawn in [1/RHO, RHO] (default: 1, square)")
    g.add_argument("--re-fill", default=e.value, help="re: fill: mean (batch channel mean), random, or a number")
    g.add_argument("--mix-k", type=int, default=m.k, help=f"mixup: images mixed per sample, 1-{MAX_MIX_K} (default: {m.k})")
    g.add_argument("--mix-alpha", type=float, default=m.alpha,
                   help=f"mixup: Dirichlet concentration (default: {m.alpha:g})")
    g.add_argument("--mix-band", choices=("low", "high", "band"), default="low",
                   help="mixup: which band is mixed (default: low)")
    g.add_argument("--mix-radius", type=float, nargs="+", default=[m.band[1]], metavar="R",
                   help="mixup: band radius as a fraction of Nyquist; two values for --mix-band band "
                        f"(default: {m.band[1]:g})")
    g.add_argument("--mix-mode", choices=("complex", "amplitude", "phase", "dct"), default=m.mode,
                   help="mixup: Fourier complex / amplitude-only / phase-only, or 8x8 block DCT (default: complex)")
    g.add_argument("--dct-drop-dc", action="store_true", help="mixup dct: zero every block's DC channel")
    g.add_argument("--mix-label-follow", type=float, default=m.label_follow, metavar="F",
                   help="mixup: how far the targets follow the mix, 0-1: 1 mixes them by the band's energy share, "
                        "0 keeps each sample's own target, so the mixed band is noise to ignore (default: 1)")
    g.add_argument("--mix-p", type=float, default=m.p, metavar="P",
                   help="mixup: probability a sample is mixed; the rest of the batch stays clean (default: 1)")
    g.add_argument("--negls-factor", type=float, default=NegLSConfig.factor,
                   help=f"negls: label-smoothing factor, negative (default: {NegLSConfig.factor})")
    g.add_argument("--mid-beta", type=float, default=MIDConfig.beta,
                   help=f"mid: weight of the KL term (default: {MIDConfig.beta})")
    g.add_argument("--bido-lambda", type=float, nargs=2, default=(BiDOConfig.lambda_x, BiDOConfig.lambda_y),
                   metavar=("LX", "LY"),
                   help="bido: weights of HSIC(h, x) (minimized) and HSIC(h, y) (maximized) (default: %(default)s)")
    g.add_argument("--dp-epsilon", type=float, default=DPConfig.epsilon,
                   help=f"dp: target epsilon for the whole run; sets the noise (default: {DPConfig.epsilon:g}; "
                        "0 = use --dp-noise)")
    g.add_argument("--dp-delta", type=float, default=DPConfig.delta,
                   help=f"dp: target delta (default: {DPConfig.delta:g})")
    g.add_argument("--dp-clip", type=float, default=DPConfig.max_grad_norm,
                   help=f"dp: per-sample gradient norm bound (default: {DPConfig.max_grad_norm})")
    g.add_argument("--dp-noise", type=float, default=DPConfig.noise_multiplier,
                   help=f"dp: noise multiplier, used when --dp-epsilon is 0 (default: {DPConfig.noise_multiplier})")
    g.add_argument("--tl-freeze", default=str(TLDMIConfig.freeze),
                   help="tldmi: freeze this fraction of the parameter tensors, or up to this layer name "
                        f"(e.g. stages.3) (default: {TLDMIConfig.freeze})")
    g.add_argument("--tl-pretrain-epochs", type=int, default=TLDMIConfig.pretrain_epochs,
                   help=f"tldmi: epochs of pre-training on the public identities (default: "
                        f"{TLDMIConfig.pretrain_epochs})")
    g.add_argument("--trapmid-alpha", type=float, default=t.alpha,
                   help=f"trapmid: blend weight of a trigger, (1-a) x + a t (default: {t.alpha})")
    g.add_argument("--trapmid-beta", type=float, default=t.beta,
                   help=f"trapmid: weight of the trapdoor loss, (1-b) CE(clean) + b CE(triggered) (default: {t.beta})")
    g.add_argument("--trapmid-step", type=float, default=t.step_size,
                   help=f"trapmid: signed-gradient step of the triggers per batch; 0 keeps them random "
                        f"(default: {t.step_size})")
    g.add_argument("--trapmid-no-discriminator", action="store_true",
                   help="trapmid: drop the naturalness term (the discriminator between clean and triggered images)")
    g.add_argument("--trapmid-no-augment", action="store_true",
                   help="trapmid: drop the reference's crop/flip/rotation augmentation of both branches")
    g.add_argument("--loft-rank", type=int, default=LoFtConfig.rank,
                   help=f"loft: rank r of the neck the classifier's features are filtered to (default: "
                        f"{LoFtConfig.rank})")
    g.add_argument("--loft-activation", choices=tuple(ACTIVATIONS), default=LoFtConfig.activation,
                   help=f"loft: activation after the rank-r projection (default: {LoFtConfig.activation})")


def add_policy_use_args(g: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    """How ``veil train-fr`` applies an exported policy (a benchmark row may set these too)."""
    g.add_argument("--policy-warmup", type=int, default=None, metavar="N",
                   help="clean batches before the policy acts (default: the game's --warmup-steps, from the file; 0 "
                        "when the game fixed label_follow=0)")
    g.add_argument("--policy-sample", action="store_true",
                   help="draw each batch's action from the agent's Gaussian, as in the game, instead of taking "
                        "its mean (PPO/A2C policies)")


def mix_band(kind: str, radius: list[float]) -> tuple[float, float]:
    """``--mix-band`` and ``--mix-radius`` as MixConfig's (lo, hi) band (``band_for``), the error naming the flags."""
    try:
        return band_for(kind, radius)
    except ValueError as err:
        raise ValueError(f"--mix-band {kind} --mix-radius {' '.join(map(str, radius))}: {err}") from None


def defense_options(args: argparse.Namespace, seed: int) -> DefenseOptions:
    """The ``DefenseOptions`` the defense options describe."""
    fill: str | float = args.re_fill if args.re_fill in ("mean", "random") else float(args.re_fill)
    try:
        freeze: str | float = float(args.tl_freeze)
    except ValueError:
        freeze = args.tl_freeze
    if not 1 <= args.mix_k <= MAX_MIX_K:
        raise ValueError(f"--mix-k must be 1-{MAX_MIX_K} (images mixed per sample), got {args.mix_k}")
    return DefenseOptions(
        names=parse_defenses(args.defense),
        erase=EraseConfig(p=args.re_p, scale=tuple(args.re_area), ratio=(1.0 / args.re_aspect, args.re_aspect),
                          value=fill),
        mix=MixConfig(k=args.mix_k, alpha=args.mix_alpha, band=mix_band(args.mix_band, args.mix_radius),
                      mode=args.mix_mode, drop_dc=args.dct_drop_dc, label_follow=args.mix_label_follow, p=args.mix_p),
        negls=NegLSConfig(args.negls_factor), mid=MIDConfig(beta=args.mid_beta),
        bido=BiDOConfig(*args.bido_lambda), tldmi=TLDMIConfig(freeze=freeze, pretrain_epochs=args.tl_pretrain_epochs),
        dp=DPConfig(epsilon=args.dp_epsilon or None, delta=args.dp_delta, max_grad_norm=args.dp_clip,
                    noise_multiplier=args.dp_noise),
        trapmid=TrapMIDConfig(alpha=args.trapmid_alpha, beta=args.trapmid_beta, step_size=args.trapmid_step,
                              discriminator=not args.trapmid_no_discriminator, augment=not args.trapmid_no_augment),
        loft=LoFtConfig(rank=args.loft_rank, activation=args.loft_activation),
        seed=seed)


def row_option_parser() -> argparse.ArgumentParser:
    """The options a benchmark row (a named defense) may set: the defense options, how a policy is
    applied, and ``--epochs`` (the undefended-curve rows train shorter)."""
    p = argparse.ArgumentParser(prog="row options", add_help=False, exit_on_error=False)
    add_defense_args(p)
    add_policy_use_args(p)
    p.add_argument("--epochs", type=int, default=None)
    return p


ROW_OPTIONS = {a.dest: a for a in row_option_parser()._actions if a.dest not in ("defense",)}


def row_options_from_argv(words: list[str], what: str) -> dict[str, Any]:
    """``["--mix-k", "4", "--re-area", "0.1", "0.3"]`` -> ``{"mix_k": 4, "re_area": [0.1, 0.3]}``
    (the options given, typed as the flags type them)."""
    parser = quiet_parser(row_option_parser())
    try:
        ns, rest = parser.parse_known_args(words)
    except (argparse.ArgumentError, SystemExit) as err:
        raise ValueError(f"{what}: {err}") from None
    if rest:
        raise ValueError(f"{what}: veil train-fr does not take {' '.join(rest)!r} in a defense row")
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in vars(ns).items()}


def row_options_typed(options: dict[str, Any], what: str) -> dict[str, Any]:
    """A plan's row options checked against the flags they stand for: known names, each value of
    the flag's type and arity (``re_area = [0.1, 0.3]``), ``store_true`` ones as booleans."""
    out: dict[str, Any] = {}
    for key, value in options.items():
        action = ROW_OPTIONS.get(key)
        if action is None:
            raise ValueError(f"{what}: unknown option {key!r}; a row takes the veil train-fr defense options "
                             f"named without dashes: {', '.join(sorted(ROW_OPTIONS))}")
        out[key] = _typed(action, value, f"{what}: {key}")
    return out


def _typed(action: argparse.Action, value: Any, what: str) -> Any:
    if action.nargs == 0:  # store_true
        if not isinstance(value, bool):
            raise ValueError(f"{what} must be true or false, got {value!r}")
        return value
    kind = action.type or str
    many = action.nargs in ("+", "*") or isinstance(action.nargs, int)
    values = value if isinstance(value, list) else [value]
    if not many and isinstance(value, list):
        raise ValueError(f"{what} takes one value, got the list {value!r}")
    if isinstance(action.nargs, int) and len(values) != action.nargs:
        raise ValueError(f"{what} takes {action.nargs} values, got {value!r}")
    typed = [_scalar(kind, v, what) for v in values]
    if action.choices is not None and any(v not in action.choices for v in typed):
        raise ValueError(f"{what}: {value!r} is not one of {', '.join(map(str, action.choices))}")
    return typed if many else typed[0]


def _scalar(kind: Callable[[Any], Any], v: Any, what: str) -> Any:
    """One TOML value as a flag of type ``kind`` would take it: no bool for a number, no 4.5 for an int."""
    ok = {int: isinstance(v, int), float: isinstance(v, (int, float)), str: isinstance(v, (str, int, float))}
    if isinstance(v, bool) or not ok.get(kind, False):
        raise ValueError(f"{what}: {v!r} is not a valid {getattr(kind, '__name__', 'value')}")
    return kind(v)


def row_namespace(options: dict[str, Any]) -> argparse.Namespace:
    """The defense options of ``veil train-fr`` at their defaults, with a row's ``options`` set."""
    ns = row_option_parser().parse_args([])
    for key, value in options.items():
        setattr(ns, key, value)
    return ns


def quiet_parser(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """A copy of ``parser`` (and of its sub-commands) whose options have no defaults, so parsing
    yields only what the command line gave."""
    quiet = copy.deepcopy(parser)
    stack = [quiet]
    while stack:
        p = stack.pop()
        for action in p._actions:
            if isinstance(action, argparse._SubParsersAction):
                stack.extend(action.choices.values())
            elif action.dest != "help":
                action.default = argparse.SUPPRESS
                action.required = False
    return quiet


def given_options(parser: argparse.ArgumentParser, argv: list[str]) -> set[str]:
    """The option dests the command line set itself (a plan file keeps the rest)."""
    return set(vars(quiet_parser(parser).parse_args(argv))) - {"command"}


def command_parser(add_parser: Callable[[argparse._SubParsersAction], None]) -> argparse.ArgumentParser:
    """A ``veil`` parser holding one sub-command: how one command reads another's options without
    importing the whole command line."""
    parser = argparse.ArgumentParser(prog="veil")
    add_parser(parser.add_subparsers(dest="command", required=True))
    return parser


def parse_command(add_parser: Callable[[argparse._SubParsersAction], None], argv: list[str]) -> argparse.Namespace:
    """Parse one sub-command's options (``argv`` starts with its name), keeping ``argv`` as the
    command line does, so a plan file keeps what these options do not set."""
    args = command_parser(add_parser).parse_args(argv)
    args.argv = list(argv)
    return args
