"""A veil policy in a plain PyTorch face-recognition loop: facenet-pytorch's InceptionResnetV1 trained
from scratch on MTCNN-aligned faces, each batch augmented by an exported policy (loaded with torch
and safetensors; no pickle, no SB3). See docs/deploy.md.

    python examples/deploy_facenet.py --policy checkpoints/<run>-policy.safetensors \
        --root ../shared/datasets/cfp --identities 20 --epochs 30
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from facenet_pytorch import MTCNN, InceptionResnetV1
from PIL import Image

from veil.agents.export import PolicyAugmenter
from veil.recognition.data import default_data_root


def load_aligned(root: Path, identities: int, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """One sub-folder per identity -> MTCNN-aligned faces in [0, 1] (N, 3, size, size) and labels."""
    mtcnn = MTCNN(image_size=size, margin=size // 8, post_process=False)  # bundled weights, offline
    folders = sorted(p for p in root.iterdir() if p.is_dir())[:identities]
    if len(folders) < 2:
        raise SystemExit(f"{root}: need at least 2 identity folders, found {len(folders)}")
    xs, ys = [], []
    for label, folder in enumerate(folders):
        for f in sorted(folder.iterdir()):
            if "profile" in f.name:  # CFP: frontal faces only
                continue
            try:
                img = Image.open(f).convert("RGB")
            except OSError as err:
                print(f"skipping unreadable {f}: {err}")
                continue
            img.thumbnail((3 * size, 3 * size))  # MTCNN is slow on large photos
            face = mtcnn(img)
            if face is None:
                print(f"no face found in {f}; skipped")
                continue
            xs.append(face / 255.0)
            ys.append(label)
    return torch.stack(xs), torch.tensor(ys)


def split_per_identity(labels: torch.Tensor, test_share: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    train, test = [], []
    for c in labels.unique():
        idx = (labels == c).nonzero().flatten()
        idx = idx[torch.randperm(len(idx), generator=g)]
        n_test = max(1, round(test_share * len(idx)))
        test.append(idx[:n_test])
        train.append(idx[n_test:])
    return torch.cat(train), torch.cat(test)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", type=Path, default=default_data_root() / "cfp", help="one folder per identity "
                    "(default: $VEIL_DATA_ROOT/cfp, else ../shared/datasets/cfp)")
    ap.add_argument("--policy", type=Path, default=None, help="exported veil policy (.safetensors); none: no augmentation")
    ap.add_argument("--warmup", type=int, default=None, help="clean batches before the policy acts "
                    "(default: the warm-up of the game the policy learned in)")
    ap.add_argument("--identities", type=int, default=20)
    ap.add_argument("--image-size", type=int, default=96, help="InceptionResnetV1 needs >= 75 px")
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    args = ap.parse_args()
    torch.manual_seed(args.seed)
    if args.threads:
        torch.set_num_threads(args.threads)

    t0 = time.perf_counter()
    images, labels = load_aligned(args.root, args.identities, args.image_size)
    train_idx, test_idx = split_per_identity(labels, 0.3, args.seed)
    k = int(labels.max()) + 1
    print(f"{len(images)} aligned faces of {k} identities ({len(train_idx)} train / {len(test_idx)} test), "
          f"{time.perf_counter() - t0:.0f}s")

    model = InceptionResnetV1(classify=True, num_classes=k)  # from scratch: no weights are downloaded
    opt = torch.optim.Adam(model.parameters(), lr=args.lr)
    augmenter = PolicyAugmenter.load(args.policy, seed=args.seed, warmup_steps=args.warmup) if args.policy else None

    def normalize(x: torch.Tensor) -> torch.Tensor:  # facenet-pytorch's fixed_image_standardization
        return (x * 255.0 - 127.5) / 128.0

    steps_per_epoch = len(train_idx) // args.batch_size  # drop the last partial batch (BatchNorm)
    total, step, last_loss = steps_per_epoch * args.epochs, 0, None
    if augmenter is not None:
        print(f"policy: clean for the first {augmenter.warmup_steps} of {total} batches, then the policy acts")
        warning = augmenter.budget_warning(total)
        if warning:
            print(f"warning: {warning} (--warmup, --epochs)")
    for epoch in range(args.epochs):
        model.train()
        order = train_idx[torch.randperm(len(train_idx))]
        for i in range(steps_per_epoch):
            idx = order[i * args.batch_size:(i + 1) * args.batch_size]
            x, y = images[idx], F.one_hot(labels[idx], k).float()  # [0, 1] images, soft targets
            if augmenter is not None:  # the only veil line in the loop
                x, y = augmenter(x, y, loss=last_loss, step=step, total_steps=total)
            loss = -(y * model(normalize(x)).log_softmax(1)).sum(1).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            last_loss, step = loss.item(), step + 1
        model.eval()
        with torch.no_grad():
            acc = (model(normalize(images[test_idx])).argmax(1) == labels[test_idx]).float().mean().item()
        params = augmenter.last_params if augmenter is not None else None
        print(f"epoch {epoch + 1}/{args.epochs}: loss {last_loss:.3f}, test top-1 {acc:.1%}"
              + (f", last policy action: {params}" if params is not None else ""))
    counts = torch.bincount(labels[train_idx], minlength=k).float()
    print(f"final test top-1 {acc:.1%} (chance {1 / k:.1%}; majority class {counts.max() / counts.sum():.1%}); "
          f"done in {time.perf_counter() - t0:.0f}s")


if __name__ == "__main__":
    main()
