"""The ``veil`` command line: ``veil train-fr`` trains a face-recognition model and logs it to
MLflow; ``veil ui`` serves MLflow's UI on veil's store."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path

EPILOG_DATA = """data sources:
  synthetic   the embedded default: deterministic synthetic identities (no download)
  att, cfp    AT&T faces / CFP under $VEIL_DATA_ROOT (default ../shared/datasets)
  PATH        a folder with one sub-folder of images per identity (LFW, FaceScrub,
              VGGFace2, CASIA-WebFace layout) or a CelebA root with identity_CelebA.txt
"""


def _add_data_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("data")
    g.add_argument("--data", default="synthetic", metavar="{synthetic,att,cfp,PATH}",
                   help="face data to train on (default: synthetic; see 'data sources' below)")
    g.add_argument("--data-root", default=None, metavar="DIR",
                   help="folder holding att_faces/ and cfp/ (default: $VEIL_DATA_ROOT or ../shared/datasets)")
    g.add_argument("--image-size", type=int, default=64, help="side of the square images in pixels (default: 64)")
    g.add_argument("--channels", type=int, choices=(1, 3), default=3,
                   help="3: grey sets become RGB (default); 1: everything becomes grey")
    g.add_argument("--align", action="store_true",
                   help="align faces with facenet-pytorch's MTCNN (cached; center crop when no face is found)")
    g.add_argument("--pose", choices=("frontal", "profile", "all"), default="frontal",
                   help="CFP-style sets: which poses to load (default: frontal)")
    g.add_argument("--strict", action="store_true", help="fail on an unreadable image instead of skipping it")
    g.add_argument("--max-identities", type=int, default=None,
                   help="keep only the N identities with the most images (large sets like CelebA)")
    g.add_argument("--n-private", type=int, default=None,
                   help="number of private (target) identities; the rest are public (default: half)")
    g.add_argument("--test-fraction", type=float, default=0.3,
                   help="share of each private identity's images held out for testing (default: 0.3 = 7/3 of 10)")
    g.add_argument("--split-seed", type=int, default=0, help="seed of the identity and train/test split (default: 0)")
    g.add_argument("--no-cache", action="store_true", help="do not read or write the preprocessed-data cache")
    g.add_argument("--synthetic-identities", type=int, default=100,
                   help="synthetic data: number of identities (default: 100)")
    g.add_argument("--synthetic-images", type=int, default=30,
                   help="synthetic data: images per identity (default: 30)")


def _add_tracking_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("tracking")
    g.add_argument("--tracking-uri", default=None,
                   help="MLflow tracking URI (default: $VEIL_TRACKING_URI or sqlite:///./mlruns/mlflow.db)")
    g.add_argument("--experiment", default="veil", help="MLflow experiment name (default: veil)")
    g.add_argument("--run-name", default=None, help="MLflow run name (default: derived from model and data)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="veil", description="veil: train face-recognition models that resist model-inversion attacks.",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser("train-fr", help="train a face-recognition model and log it to MLflow",
                       description="Train a face-recognition model on the private identities of a face set, "
                                   "evaluate it on their held-out images, and log params, per-epoch metrics, "
                                   "sample grids, the checkpoint and the model to MLflow.",
                       epilog=EPILOG_DATA, formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_data_args(p)
    g = p.add_argument_group("model and training")
    g.add_argument("--model", choices=("cnn", "resnet18", "inception"), default="cnn",
                   help="backbone: cnn (fast small CNN, default), resnet18, inception (InceptionResnetV1, >= 75 px)")
    g.add_argument("--weights", default=None, metavar="FILE",
                   help="local state dict to start from (e.g. InceptionResnetV1 VGGFace2 weights); nothing is downloaded")
    g.add_argument("--epochs", type=int, default=20, help="training epochs (default: 20)")
    g.add_argument("--batch-size", type=int, default=32, help="images per step (default: 32)")
    g.add_argument("--lr", type=float, default=1e-3, help="peak learning rate (default: 1e-3)")
    g.add_argument("--optimizer", choices=("adam", "adamw", "sgd"), default="adam", help="optimizer (default: adam)")
    g.add_argument("--weight-decay", type=float, default=0.0, help="weight decay (default: 0)")
    g.add_argument("--schedule", choices=("cosine", "step", "constant"), default="cosine",
                   help="learning-rate schedule over the run (default: cosine)")
    g.add_argument("--warmup-steps", type=int, default=0, help="linear learning-rate warm-up steps (default: 0)")
    g.add_argument("--no-hflip", action="store_true", help="disable random horizontal flips")
    g.add_argument("--seed", type=int, default=0, help="training seed (default: 0)")
    g.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: all cores)")
    g.add_argument("--checkpoint", default=None, metavar="FILE",
                   help="where to write the resumable checkpoint (default: checkpoints/<run id>.pt)")
    g.add_argument("--resume", default=None, metavar="FILE",
                   help="resume training from a checkpoint (continues its MLflow run)")
    _add_tracking_args(p)

    u = sub.add_parser("ui", help="serve the MLflow UI on veil's store (127.0.0.1)",
                       description="Serve MLflow's UI on veil's store (mlruns/mlflow.db), bound to 127.0.0.1, "
                                   "with one worker and MLflow's job runner off (about 0.5 GB instead of 3 GB).")
    u.add_argument("--port", type=int, default=5000, help="port (default: 5000)")
    u.add_argument("--host", default="127.0.0.1", help="interface to bind (default: 127.0.0.1, this machine only)")
    u.add_argument("--tracking-uri", default=None, help="store to serve (default: veil's store in ./mlruns)")
    return parser


def cmd_train_fr(args: argparse.Namespace) -> int:
    import mlflow
    import torch

    from recognition import (DataConfig, ModelConfig, SplitConfig, Trainer, TrainerConfig, build_model,
                             load_faces, split_identities, to_float)

    from . import tracking

    if args.threads:
        torch.set_num_threads(args.threads)
    data_cfg = DataConfig(source=args.data, image_size=args.image_size, channels=args.channels, align=args.align,
                          strict=args.strict, pose=args.pose, max_identities=args.max_identities,
                          data_root=args.data_root, use_cache=not args.no_cache,
                          synthetic_identities=args.synthetic_identities, synthetic_images=args.synthetic_images)
    split_cfg = SplitConfig(n_private=args.n_private, test_fraction=args.test_fraction, seed=args.split_seed)
    t0 = time.perf_counter()
    data = load_faces(data_cfg)
    split = split_identities(data, split_cfg)
    load_s = time.perf_counter() - t0
    print(f"data: {data.source}: {len(data)} images of {data.num_identities} identities "
          f"-> {split.num_private} private ({len(split.train_labels)} train / {len(split.test_labels)} test), "
          f"{len(split.public_names)} public [{load_s:.1f}s]")

    model_cfg = ModelConfig(name=args.model, num_classes=split.num_private, in_channels=args.channels,
                            image_size=args.image_size, weights=args.weights)
    train_cfg = TrainerConfig(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, optimizer=args.optimizer,
                              weight_decay=args.weight_decay, schedule=args.schedule, hflip=not args.no_hflip,
                              warmup_steps=args.warmup_steps,
                              seed=args.seed)
    trainer = Trainer(build_model(model_cfg), train_cfg, num_classes=split.num_private)
    run_id = None
    if args.resume:
        extra = trainer.load_checkpoint(args.resume)
        run_id = extra.get("mlflow_run_id")
        print(f"resumed from {args.resume} at epoch {trainer.epoch}")

    tracking.setup(args.tracking_uri, args.experiment)
    run_name = args.run_name or f"fr-{args.model}-{Path(str(args.data)).name}"
    with mlflow.start_run(run_id=run_id, run_name=None if run_id else run_name) as run:
        run_id = run.info.run_id
        ckpt = Path(args.checkpoint or Path("checkpoints") / f"{run_id}.pt")
        if not args.resume:
            mlflow.set_tags({"veil.kind": "fr", "veil.defense": "none"})
            tracking.log_params({"data": {k: v for k, v in asdict(data_cfg).items() if not k.startswith("synthetic")
                                          or args.data == "synthetic"},
                                 "split": {**asdict(split_cfg), **split.summary()},
                                 "model": asdict(model_cfg), "train": asdict(train_cfg)})
            tracking.log_json(split.manifest(data), "split.json")
            tracking.log_image_grid(tracking.samples_per_identity(split.train_images, split.train_labels),
                                    "samples/private_train.png")
            if len(split.public_labels):
                tracking.log_image_grid(tracking.samples_per_identity(split.public_images, split.public_labels),
                                        "samples/public.png")

        def on_epoch_end(metrics: dict[str, float]) -> None:
            tracking.log_metrics({k: v for k, v in metrics.items() if k != "epoch"}, step=int(metrics["epoch"]))

        t1 = time.perf_counter()
        trainer.fit(split.train_images, split.train_labels, split.test_images, split.test_labels,
                    on_epoch_end=on_epoch_end, checkpoint_path=ckpt, progress=True)
        # the checkpoint written at each epoch end also records the run, so --resume continues it
        trainer.save_checkpoint(ckpt, extra={"mlflow_run_id": run_id, "model_config": asdict(model_cfg)})
        fit_s = time.perf_counter() - t1
        final = trainer.evaluate(split.test_images, split.test_labels)
        tracking.log_metrics({"final_test_top1": final["top1"], "final_test_top5": final["top5"],
                              "fit_seconds": fit_s}, step=trainer.epoch)
        tracking.log_file(ckpt, "checkpoint")
        tracking.log_fr_model(trainer.model, to_float(split.test_images[:2]))
        uri = mlflow.get_tracking_uri()

    print(f"\nprivate test top-1 {final['top1']:.1%}, top-5 {final['top5']:.1%} "
          f"({split.num_private} identities, {len(split.test_labels)} test images), fit {fit_s:.0f}s")
    print(f"checkpoint: {ckpt}")
    print(f"MLflow run {run_id} in {uri}")
    print("look at it with:  veil ui   (then open http://127.0.0.1:5000)")
    return 0


def cmd_ui(args: argparse.Namespace) -> int:
    from . import tracking

    uri = args.tracking_uri or tracking.default_tracking_uri()
    env = dict(os.environ, MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false")
    cmd = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri, "--host", args.host,
           "--port", str(args.port), "--workers", "1"]
    if uri.startswith("sqlite:"):
        cmd += ["--default-artifact-root", tracking.default_artifact_root()]
    print(f"serving {uri} at http://{args.host}:{args.port} (Ctrl-C to stop)")
    try:
        return subprocess.call(cmd, env=env)
    except KeyboardInterrupt:
        return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    handlers = {"train-fr": cmd_train_fr, "ui": cmd_ui}
    try:
        return handlers[args.command](args)
    except (ValueError, FileNotFoundError, FloatingPointError) as err:
        # bad input or a diverged run: a one-line error, the MLflow run (if any) already marked failed
        print(f"veil {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
