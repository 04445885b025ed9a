"""``veil demo``: the main job end to end on the embedded synthetic faces: train the agent briefly,
then FR models with and without its policy, and probe both with the PCA-prior attack."""

from __future__ import annotations

import argparse

from . import attack_cli, train_agent, train_fr
from .options import add_tracking_args, parse_command


def add_parser(sub: argparse._SubParsersAction) -> None:
    """The ``veil demo`` sub-command."""
    d = sub.add_parser("demo", help="the main job: train the agent briefly, then FR models with and without its policy",
                       description="On the embedded synthetic faces (or --data): train a PPO agent briefly "
                                   "(short rollouts, so it updates many times), then a fresh FR model with the "
                                   "learned policy and one without, all logged to MLflow; about 10 minutes on 2 idle cores.")
    d.add_argument("--data", default="synthetic", metavar="{synthetic,att,cfp,PATH}", help="face data (default: synthetic)")
    d.add_argument("--timesteps", type=int, default=1024, help="agent steps (default: 1024)")
    d.add_argument("--epochs", type=int, default=10, help="epochs of each FR model (default: 10)")
    d.add_argument("--seed", type=int, default=0, help="seed (default: 0)")
    d.add_argument("--eval-epochs", type=int, default=8,
                   help="epochs of the evaluation model that scores the attack (cached after the first demo; default: 8)")
    d.add_argument("--n-private", type=int, default=None, help="private identities (default: half)")
    add_tracking_args(d)
    d.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Agent, FR with its policy, FR without, the probe against both: each step a ``veil`` command."""
    common = ["--data", args.data, "--seed", str(args.seed), "--experiment", args.experiment]
    if args.tracking_uri:
        common += ["--tracking-uri", args.tracking_uri]
    if args.n_private:
        common += ["--n-private", str(args.n_private)]
    print("== 1/4: training the augmentation agent (PPO) on the adversarial game")
    policy = train_agent.train(parse_command(train_agent.add_parser, [
        "train-agent", *common, "--timesteps", str(args.timesteps), "--n-steps", "128", "--warmup-steps", "300",
        "--acc-budget", "0.5", "--utility-weight", "5", "--run-name", "demo-agent"]))
    print("\n== 2/4: a fresh FR model trained with the learned policy")
    run_policy = train_fr.train_fr(train_fr.job_from_args(parse_command(train_fr.add_parser, [
        "train-fr", *common, "--epochs", str(args.epochs), "--policy", str(policy), "--run-name", "demo-fr-policy"])))
    print("\n== 3/4: the same FR model without augmentation, for comparison")
    run_none = train_fr.train_fr(train_fr.job_from_args(parse_command(train_fr.add_parser, [
        "train-fr", *common, "--epochs", str(args.epochs), "--run-name", "demo-fr-none"])))
    print("\n== 4/4: the privacy probe (PCA-prior attack on 20 private identities) against both")
    for run_id in (run_policy, run_none):
        attack = ["attack", "--model", run_id, "--attack", "pca", "--attack-seeds", "1", "--restarts", "1",
                  "--identities", "20", "--eval-epochs", str(args.eval_epochs), "--seed", str(args.seed),
                  "--experiment", args.experiment]
        if args.tracking_uri:
            attack += ["--tracking-uri", args.tracking_uri]
        attack_cli.cmd_attack(parse_command(attack_cli.add_parser, attack))
    print("\nCompare the runs demo-agent, demo-fr-policy and demo-fr-none (attack reports nested under the FR runs):"
          "  veil ui   (http://127.0.0.1:5000)")
    return 0
