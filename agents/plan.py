"""Experiment plans: what a ``veil benchmark`` (or ``veil calibrate``) runs, as a typed TOML file.

A plan names its data and split (``DataConfig``, ``SplitConfig``), the targets' budget, the
attacks, the seeds and its rows: built-in defenses or named ones (``[defenses.NAME]``: a base
defense and ``veil train-fr`` defense options, named as the flags without dashes; or ``use =
"target"``: given target checkpoints, scored instead of trained). Paths in a plan (``out_dir``,
``policy``, ``schedule``, ``target``) are relative to the plan file. Command-line flags override
the file; an unknown key anywhere is an error naming the key and the file. Example::

    rows = ["none", "c125"]
    seeds = [0, 1, 2]
    [data]
    source = "cfp"
    [budget]
    epochs = 60
    [attacks]
    names = ["pca", "gmi"]
    [defenses.c125]
    use = "hybrid"
    mix_label_follow = 0
    mix_radius = [0.125]
"""

from __future__ import annotations

import argparse
import math
import re
import shlex
import tomllib
import types
import typing
import warnings
from dataclasses import dataclass, field, fields, is_dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from veil.attacks.evaluation import EvalModelConfig
from veil.defenses.params import AugmentParams
from veil.env.actions import ACTION_TABLE, decode, with_fixed
from veil.recognition import DataConfig, SplitConfig

from .fr_defenses import DEFENSES
from .options import FRBudget, data_configs, row_options_from_argv, row_options_typed

DEFENSE_CHOICES = ("none", "re", "mixup", "hybrid", "tldmi", "negls", "mid", "bido", "dp", "trapmid", "loft", "policy",
                   "policy+tldmi", "policy+negls", "policy-sampled", "policy-sampled+tldmi", "policy-sampled+negls",
                   "schedule", "schedule+tldmi", "schedule+negls", "target")
DEFAULT_DEFENSES = ("none", "re", "mixup", "hybrid", "tldmi", "negls", "mid", "bido", "dp")
ROW_NAME = re.compile(r"^[a-z0-9][a-z0-9_.-]*$")
CURVE_NAME = re.compile(r"^none-e(\d+)$")


@dataclass
class AttackPlan:
    """Which attacks run on every target, and with what budget (``veil attack``'s options)."""

    names: list[str] = field(default_factory=lambda: ["pca", "whitebox", "gmi"])
    identities: int = 0
    attack_seeds: int = 2
    restarts: int = 2
    steps: int | None = None
    gan_steps: int | None = None
    gan_seconds: float | None = None
    eval_epochs: int = 40
    eval_arch: str = EvalModelConfig.model  # the evaluation model's backbone
    eval_weights: str | None = None  # a local pretrained file the evaluation model starts from
    # "plan": every cell judged by this machine's evaluation model (others' scores are redone);
    # "seed": a seed whose cells are all finished and judged by one model keeps it, so a plan run
    # over several machines (whose judges differ in their last bits) still compares rows within a seed
    judge_scope: str = "plan"

    def __post_init__(self) -> None:
        if self.judge_scope not in ("plan", "seed"):
            raise ValueError(f"judge_scope must be \"plan\" or \"seed\", got {self.judge_scope!r}")


@dataclass
class Row:
    """A named defense: the built-in row it trains (``use``), its ``veil train-fr`` options and,
    for a policy row, its own exported policies (seed -> file; -1: every seed) over the plan's; for
    a schedule row, its schedule file (``veil train-fr --augment-schedule``); for a target row
    (``use = "target"``), the target checkpoints it scores instead of training (seed -> file; -1:
    every seed), e.g. the FR models ``veil train-agent`` games leave (``<run>-game-fr.pt``)."""

    use: str
    options: dict[str, Any] = field(default_factory=dict)
    policy: dict[int, str] = field(default_factory=dict)
    schedule: str | None = None
    target: dict[int, str] = field(default_factory=dict)

    def target_for_seed(self, seed: int, name: str) -> str:
        """The checkpoint this target row (called ``name``) scores as its target of seed ``seed``."""
        if not self.target:
            raise ValueError(f"the target row {name!r} names no target: target = \"FILE\" or {{ SEED = \"FILE\" }} "
                             "in its [defenses.NAME]")
        if -1 in self.target:
            return self.target[-1]
        if seed not in self.target:
            raise ValueError(f"the target row {name!r} names no target for seed {seed} (it has seeds "
                             f"{sorted(self.target)})")
        return self.target[seed]


@dataclass
class CalibratePlan:
    """``veil calibrate``: the parameter priced, its values, the accuracy budget (points) and the
    fixes of the game it is calibrated for."""

    param: str = "radius"
    values: list[float] = field(default_factory=list)
    budget: float = 2.0
    fix: dict[str, float] = field(default_factory=lambda: {"label_follow": 0.0, "high_band": 0.0})
    k_max: int = 6
    erase_fill: str = "mean"


RACE_BOX: dict[str, list[float]] = {"k": [1, 6], "alpha": [0.2, 5.0], "radius": [0.0125, 0.2], "erase_p": [0.0, 1.0],
                                    "erase_area": [0.02, 0.5], "erase_aspect": [1.0, 3.3]}
"""The race's default box: the agent's, with the radius inside the calibration grid's range."""


@dataclass
class RacePlan:
    """``veil race``: contestants search on validation seeds; each one's pick, chosen by one rule
    fixed before any run (the lowest mean ``select_attack`` top-1 whose mean paired accuracy drop
    against ``none`` is at most ``budget`` points), is scored on fresh ``test_seeds``.

    C1 is a finished ``veil calibrate`` folder (``calibration``, relative to the plan); C2 draws
    ``random_points`` settings from ``box`` (with ``fix``); C3 is the two-phase schedules between
    ``strong_radius`` and ``relaxed_radius`` (either first, switching at each of ``switches``) at the
    box's centre otherwise; C4 draws a setting from the box per batch; ``learners`` names the plan's
    own rows each learner selects among (T0, T1: exported policies or schedules); ``test_extra``
    names rows also scored on the test seeds outside the rule (never a pick: e.g. the strongest
    learner over budget on validation, to price it and to check the proxies against GMI);
    ``baselines``: which of C2-C4 run (C1 always does)."""

    validation_seeds: list[int] = field(default_factory=lambda: [0, 1, 2, 3, 4])
    test_seeds: list[int] = field(default_factory=lambda: [10, 11, 12, 13, 14])
    budget: float = 2.0
    select_attack: str = "pca"
    calibration: str = ""
    fix: dict[str, float] = field(default_factory=lambda: {"label_follow": 0.0, "high_band": 0.0})
    box: dict[str, list[float]] = field(default_factory=lambda: dict(RACE_BOX))
    random_points: int = 5
    random_seed: int = 0
    strong_radius: float = 0.2
    relaxed_radius: float = 0.025
    switches: list[float] = field(default_factory=lambda: [1 / 3, 2 / 3])
    learners: dict[str, list[str]] = field(default_factory=dict)
    test_extra: list[str] = field(default_factory=list)
    baselines: list[str] = field(default_factory=lambda: ["c2", "c3", "c4"])

    def __post_init__(self) -> None:
        if any(b not in ("c2", "c3", "c4") for b in self.baselines):
            raise ValueError(f"race: baselines are among c2, c3, c4, got {self.baselines}")
        if not self.validation_seeds or not self.test_seeds:
            raise ValueError("race: give validation_seeds and test_seeds")
        if set(self.validation_seeds) & set(self.test_seeds):
            raise ValueError(f"race: the test seeds must be fresh; {sorted(set(self.validation_seeds) & set(self.test_seeds))} "
                             "are validation seeds too")
        if not math.isfinite(self.budget) or self.budget < 0:
            raise ValueError(f"race: budget must be a number of points >= 0, got {self.budget}")
        if self.random_points < 0 or any(not 0 < s < 1 for s in self.switches):
            raise ValueError("race: random_points must be >= 0 and switches fractions in (0, 1)")


@dataclass
class LearnPlan:
    """``veil learn-schedule``: a learner over whole-run episodes (``veil.env.FaceScheduleEnv``)
    whose found schedule is written to ``out`` (relative to the plan). It plays inside the race's
    box and fixes: the ``free`` parameters span the box per segment, the others sit at its centre.
    ``episodes``: the FR training runs it may spend (PPO), or the population (PBT, one run each);
    ``seed``: the first episode's seed, away from the race's validation and test seeds;
    ``acc_reference``: an undefended target's validation top-1 (0: the mean of C1's ``none`` cells);
    ``concurrent``: PBT members training at once (one torch thread each)."""

    learner: str = "ppo"
    episodes: int = 25
    segments: int = 3
    seed: int = 100
    free: list[str] = field(default_factory=lambda: ["radius", "erase_p"])
    penalty: float = 5.0
    acc_reference: float = 0.0
    out: str = "learned/t1-ppo.toml"
    ppo_lr: float = 3e-3
    ppo_episodes_per_update: int = 5
    ppo_log_std_init: float = -0.5
    concurrent: int = 1

    def __post_init__(self) -> None:
        if self.learner not in ("ppo", "pbt"):
            raise ValueError(f"learn: learner must be ppo or pbt, got {self.learner!r}")
        if self.episodes < 1 or self.segments < 1 or self.ppo_episodes_per_update < 1:
            raise ValueError("learn: episodes, segments and ppo_episodes_per_update must be >= 1")


@dataclass
class Plan:
    """One experiment: rows x seeds x attacks on one data split at one budget."""

    rows: list[str] = field(default_factory=lambda: list(DEFAULT_DEFENSES))
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    out_dir: str = "benchmarks/results/run"
    undefended_curve: list[int] = field(default_factory=list)
    compare_to: str = ""  # a row every other row is paired with in results.md: is it Pareto-ahead?
    policy: dict[int, str] = field(default_factory=dict)  # seed -> exported policy; key -1: every seed
    data: DataConfig = field(default_factory=DataConfig)
    split: SplitConfig = field(default_factory=SplitConfig)
    budget: FRBudget = field(default_factory=lambda: FRBudget(epochs=30))
    attacks: AttackPlan = field(default_factory=AttackPlan)
    defenses: dict[str, Row] = field(default_factory=dict)
    calibrate: CalibratePlan | None = None
    race: RacePlan | None = None
    learn: dict[str, LearnPlan] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name, row in self.defenses.items():
            check_row(name, row, "the plan")
        for e in self.undefended_curve:
            if not 0 < e < self.budget.epochs:
                raise ValueError(f"undefended_curve: give epoch counts between 1 and the budget's epochs - 1 "
                                 f"({self.budget.epochs - 1}), e.g. [3, 6, 12]; got {e}")

    def all_rows(self) -> dict[str, Row]:
        """Every row this plan can train: named defenses and the undefended curve's ``none-e<E>``."""
        return {**self.defenses, **{f"none-e{e}": Row("none", {"epochs": e}) for e in self.undefended_curve}}

    def row(self, name: str) -> Row:
        """The row ``name`` trains: a named one, or a built-in with no options."""
        return self.all_rows().get(name, Row(name))

    def row_names(self) -> list[str]:
        """The rows in order, the undefended curve's after those listed."""
        curve = [f"none-e{e}" for e in self.undefended_curve]
        return self.rows + [c for c in curve if c not in self.rows]

    def policy_for_seed(self, seed: int, row: str | None = None) -> str:
        """The exported policy a policy row (``row``'s own, else the plan's) of target seed ``seed`` trains with."""
        files = (self.row(row).policy if row else {}) or self.policy
        if not files:
            raise ValueError(f"the policy row {row!r} needs a policy: policy = FILE in the plan or in its "
                             "[defenses.NAME], or --policy FILE")
        if -1 in files:
            return files[-1]
        if seed not in files:
            raise ValueError(f"the plan names no policy for seed {seed} (it has seeds {sorted(files)})")
        return files[seed]

    def with_flags(self, args: argparse.Namespace, given: set[str]) -> Plan:
        """This plan with the options the command line gave (``given``) put over it."""
        plan = self
        data, split = data_configs(args, base=(plan.data, plan.split), given=given)
        plan = replace(plan, data=data, split=split)
        budget = {k: getattr(args, k) for k in ("epochs", "batch_size", "lr", "model", "threads", "weights")
                  if k in given}
        attacks = {k: getattr(args, k) for k in ("identities", "attack_seeds", "restarts", "steps", "gan_steps",
                                                 "gan_seconds", "eval_epochs", "eval_arch", "eval_weights",
                                                 "judge_scope")
                   if k in given}
        if "attacks" in given:
            attacks["names"] = comma_list(args.attacks)
        top: dict[str, Any] = {}
        if "defenses" in given:
            top["rows"] = comma_list(args.defenses)
        if "seeds" in given:
            top["seeds"] = [int(s) for s in comma_list(str(args.seeds))]
        if "out_dir" in given:
            top["out_dir"] = args.out_dir
        if "undefended_curve" in given:
            top["undefended_curve"] = [_curve_epochs(w, args.undefended_curve) for w in comma_list(args.undefended_curve)]
        if "variant" in given:
            warnings.warn("--variant is deprecated and goes in the next release: name the defense in a plan file "
                          "([defenses.NAME], see docs/reference.md) and run it with --config", FutureWarning,
                          stacklevel=2)
            top["defenses"] = {**plan.defenses, **parse_variants(args.variant)}
        plan = replace(plan, budget=replace(plan.budget, **budget), attacks=replace(plan.attacks, **attacks), **top)
        if "policy" in given:
            plan = replace(plan, policy=parse_policy_flag(args.policy, plan.seeds))
        return plan


def comma_list(text: str | None) -> list[str]:
    return [w.strip() for w in str(text or "").split(",") if w.strip()]


def _curve_epochs(word: str, spec: str) -> int:
    if not word.isdigit() or int(word) < 1:
        raise ValueError(f"--undefended-curve {spec!r}: give epoch counts, e.g. 3,6,12; got {word!r}")
    return int(word)


def parse_policy_flag(text: str, seeds: list[int]) -> dict[int, str]:
    """``--policy`` is one file for every seed, a comma list with one file per seed (matched to
    the seeds in order), or ``SEED=FILE`` pairs, which stay valid when a rerun covers only some seeds."""
    files = comma_list(text)
    pairs = [f.partition("=") for f in files]
    if any(sep for _, sep, _ in pairs):
        if not all(sep and k.strip().lstrip("-").isdigit() for k, sep, _ in pairs):
            raise ValueError(f"--policy mixes SEED=FILE pairs with plain files: {text!r}")
        return {int(k): v.strip() for k, _, v in pairs}
    if len(files) == 1:
        return {-1: files[0]}
    if len(files) != len(seeds):
        raise ValueError(f"--policy lists {len(files)} files for {len(seeds)} seeds; give one file, or one per seed")
    return dict(zip(seeds, files))


def is_undefended(defense: str) -> bool:
    """``none`` or a ``none-e<E>`` row of the undefended curve."""
    return defense == "none" or CURVE_NAME.match(defense) is not None


def is_known_base(base: str) -> bool:
    """A built-in row, or train-fr defenses joined with '+' (at most one policy among them), e.g. ``tldmi+mixup``."""
    if base in DEFENSE_CHOICES:
        return True
    parts = base.split("+")
    policies = [p for p in parts if p in ("policy", "policy-sampled", "schedule")]
    return (len(policies) <= 1 and len(set(parts)) == len(parts) and "none" not in parts
            and all(p in DEFENSES or p in policies for p in parts))


def check_row(name: str, row: Row, where: str) -> None:
    """A named defense must have a new, plain name and a known base; its options are checked by type."""
    if not ROW_NAME.match(name) or name in DEFENSE_CHOICES or CURVE_NAME.match(name):
        raise ValueError(f"{where}: the defense name {name!r} must be new (not a built-in defense, not none-e<E>, "
                         "which names undefended-curve rows) and made of lower-case letters, digits, '-', '_' or '.'")
    if not is_known_base(row.use):
        raise ValueError(f"{where}: defense {name!r} uses unknown defense {row.use!r}; choose from "
                         f"{', '.join(DEFENSE_CHOICES)}, or join train-fr defenses with '+' (e.g. tldmi+mixup)")
    row.options = row_options_typed(row.options, f"{where}: defense {name!r}")
    if ("schedule" in row.use.split("+")) != (row.schedule is not None):
        raise ValueError(f"{where}: defense {name!r}: a schedule row (use = \"schedule\") names its file "
                         "(schedule = \"FILE\"), and only a schedule row does")
    if (row.use == "target") != bool(row.target):
        raise ValueError(f"{where}: defense {name!r}: a target row (use = \"target\") names its checkpoints "
                         "(target = \"FILE\" or { SEED = \"FILE\" }), and only a target row does")
    if row.use == "target" and (row.options or row.policy or row.schedule):
        raise ValueError(f"{where}: defense {name!r}: a target row is scored, not trained: it takes no train-fr "
                         f"options, policy or schedule (got {sorted(row.options) or 'a policy or schedule'})")


def parse_variants(specs: list[str] | None) -> dict[str, Row]:
    """``--variant "mixup-high=mixup --mix-band high"`` (deprecated) -> a named row."""
    out: dict[str, Row] = {}
    for spec in specs or []:
        name, sep, rest = spec.partition("=")
        name, words = name.strip(), shlex.split(rest)
        if not sep or not words:
            raise ValueError(f"--variant {spec!r}: write NAME=DEFENSE [train-fr options], e.g. "
                             "'mixup-high=mixup --mix-band high'")
        if any(w in ("--defense", "--policy", "--seed", "--epochs", "--checkpoint") for w in words[1:]):
            raise ValueError(f"--variant {spec!r}: give defense options only; the benchmark sets --defense, --policy, "
                             "--seed, --epochs and --checkpoint itself")
        check_row(name, Row(words[0]), f"--variant {spec!r}")  # the name and base first
        row = Row(words[0], row_options_from_argv(words[1:], f"--variant {spec!r}"))
        check_row(name, row, f"--variant {spec!r}")
        out[name] = row
    return out


# -- reading a plan file -------------------------------------------------------------------------


def load_plan(path: str | Path) -> Plan:
    """The plan in TOML file ``path``; relative paths in it are taken from the file's folder."""
    path = Path(path)
    try:
        raw = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"--config: no plan file {path}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{path}: not a TOML plan: {err}") from None
    where = str(path)
    defenses = raw.pop("defenses", {})
    policy = raw.pop("policy", None)
    if not isinstance(defenses, dict):
        raise ValueError(f"{where}: 'defenses' must be tables [defenses.NAME]")
    rows = {}
    for name, table in defenses.items():
        if not isinstance(table, dict) or "use" not in table or not isinstance(table["use"], str):
            raise ValueError(f"{where}: [defenses.{name}] needs use = \"<defense>\" (e.g. use = \"hybrid\")")
        options = {k: v for k, v in table.items() if k not in ("use", "policy", "schedule", "target")}
        schedule = table.get("schedule")
        if schedule is not None and not isinstance(schedule, str):
            raise ValueError(f"{where}: [defenses.{name}] schedule must be a file name, got {schedule!r}")
        try:
            rows[name] = Row(table["use"], options, _policy_table(table.get("policy"), path.parent),
                             str(path.parent / schedule) if schedule else None,
                             _policy_table(table.get("target"), path.parent, "target"))
        except ValueError as err:
            raise ValueError(f"{where}: [defenses.{name}]: {err}") from None
    plan = build(Plan, raw, where)
    base = path.parent
    out_dir = str(base / plan.out_dir) if not Path(plan.out_dir).is_absolute() else plan.out_dir
    if plan.race is not None and plan.race.calibration and not Path(plan.race.calibration).is_absolute():
        plan.race.calibration = str(base / plan.race.calibration)
    for learn in plan.learn.values():
        if not Path(learn.out).is_absolute():
            learn.out = str(base / learn.out)
    if plan.budget.weights and not Path(plan.budget.weights).expanduser().is_absolute():
        plan.budget.weights = str(base / plan.budget.weights)
    if plan.attacks.eval_weights and not Path(plan.attacks.eval_weights).expanduser().is_absolute():
        plan.attacks.eval_weights = str(base / plan.attacks.eval_weights)
    try:
        plan = replace(plan, defenses=rows, out_dir=out_dir, policy=_policy_table(policy, base))
    except ValueError as err:
        raise ValueError(f"{where}: {err}") from None
    return plan


def _policy_table(value: Any, base: Path, key: str = "policy") -> dict[int, str]:
    """``policy = "FILE"`` (every seed) or a ``[policy]`` table of ``SEED = "FILE"``; ``key`` names
    the table in errors (a target row's ``target`` reads the same way)."""
    if value is None:
        return {}
    def where(v: str) -> str:  # a registered policy (models:/NAME@ALIAS) is not a path
        return v if v.startswith("models:/") else str(base / v)

    if isinstance(value, str):
        return {-1: where(value)}
    if isinstance(value, dict) and all(k.isdigit() and isinstance(v, str) for k, v in value.items()):
        return {int(k): where(v) for k, v in value.items()}
    raise ValueError(f"{key} must be a file name or a table of SEED = \"FILE\", got {value!r}")


def build(cls: type, raw: Any, where: str) -> Any:
    """Dataclass ``cls`` from a TOML table, every value checked against the field's type; an
    unknown key is an error naming it."""
    if not isinstance(raw, dict):
        raise ValueError(f"{where}: expected a table for {cls.__name__}, got {raw!r}")
    hints = typing.get_type_hints(cls)
    known = {f.name: f for f in fields(cls) if f.init}
    for key in raw:
        if key not in known:
            raise ValueError(f"{where}: unknown key {key!r} (known: {', '.join(sorted(known))})")
    values = {k: _coerce(hints[k], v, f"{where}: {k}") for k, v in raw.items()}
    try:
        return cls(**values)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{where}: {err}") from None


def _coerce(tp: Any, value: Any, where: str) -> Any:
    """``value`` as type ``tp`` (a TOML value has no None: an optional field is left out instead)."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        options = [a for a in args if a is not type(None)]
        errors = []
        for option in options:
            try:
                return _coerce(option, value, where)
            except ValueError as err:
                errors.append(str(err))
        raise ValueError(errors[0])
    if is_dataclass(tp):
        return build(tp, value, where)
    if tp is bool:
        if not isinstance(value, bool):
            raise ValueError(f"{where} must be true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"{where} must be an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"{where} must be a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ValueError(f"{where} must be a string, got {value!r}")
        return value
    if origin in (list, tuple):
        if not isinstance(value, list):
            raise ValueError(f"{where} must be a list, got {value!r}")
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(value) != len(args):
                raise ValueError(f"{where} must have {len(args)} values, got {value!r}")
            return tuple(_coerce(a, v, where) for a, v in zip(args, value))
        item = args[0] if args else Any
        out = [_coerce(item, v, where) for v in value]
        return tuple(out) if origin is tuple else out
    if origin is dict:
        if not isinstance(value, dict):
            raise ValueError(f"{where} must be a table, got {value!r}")
        return {k: _coerce(args[1], v, f"{where}.{k}") for k, v in value.items()}
    if tp is Any:
        return value
    raise ValueError(f"{where}: a plan cannot set a value of type {tp}")


# -- the calibration's rows ----------------------------------------------------------------------


def candidate_name(param: str, value: float) -> str:
    return f"cal-{param}-{value:g}"


def fr_options(params: AugmentParams, erase_fill: str = "mean") -> Row:
    """The benchmark row (a ``veil train-fr`` defense and its options) that applies ``params`` to
    every batch, the fixed augmentation a policy with this constant action would be: ``hybrid``
    when it mixes and erases, ``mixup`` or ``re`` alone, ``none`` when it does neither. Values are
    kept to 6 significant digits, as the calibrations before plan files wrote them."""
    mix = params.k > 1
    erase = params.erase_p > 0
    opts: dict[str, Any] = {}
    if mix:
        opts.update(mix_k=params.k, mix_alpha=_g(params.alpha), mix_radius=[_g(params.radius)],
                    mix_band="high" if params.high_band else "low", mix_label_follow=_g(params.label_follow))
    if erase:
        lo, hi = params.erase_scale
        opts.update(re_p=_g(params.erase_p), re_area=[_g(lo), _g(hi)], re_aspect=_g(params.erase_aspect),
                    re_fill=erase_fill)
    defense = "hybrid" if mix and erase else "mixup" if mix else "re" if erase else "none"
    return Row(defense, opts)


def _g(x: float) -> float:
    return float(f"{x:g}")


def centre_params(fixed: dict[str, float] | None, k_max: int = 6) -> AugmentParams:
    """The action an untrained agent takes (the centre of its box, action 0) with ``fixed`` applied."""
    return with_fixed(decode(np.zeros(len(ACTION_TABLE), dtype=np.float32), k_max), fixed)


def calibration_plan(plan: Plan) -> Plan:
    """The benchmark plan of a calibration: ``none`` and one fixed augmentation per value (the
    agent's untrained action with the fixes and that value), scored on the validation split."""
    c = plan.calibrate
    if c is None:
        return plan
    rows = {candidate_name(c.param, v): fr_options(with_fixed(centre_params(c.fix, c.k_max), {c.param: v}),
                                                   c.erase_fill) for v in c.values}
    return replace(plan, rows=["none", *rows], defenses={**plan.defenses, **rows}, policy={}, undefended_curve=[],
                   split=replace(plan.split, validation=True))
