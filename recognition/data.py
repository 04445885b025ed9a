"""Face data: the embedded synthetic default, "one folder per identity" sets, CelebA, and the
deterministic private/public identity split that the whole privacy protocol rests on.

Every set is preprocessed once into a uint8 array ``(N, C, S, S)`` (resized and center-cropped,
or aligned with MTCNN) and cached on disk as a ``.npy`` file with its labels beside it. A small set
is read into memory; one over ``IN_MEMORY_MAX_BYTES`` (or with ``in_memory=False``) stays on disk,
memory-mapped, and training streams its batches through a ``DataLoader`` (``MappedImages``).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import warnings
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from .io import atomic_path, cache_dir
from .synthetic import GENERATOR_VERSION, SyntheticConfig, generate_faces

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".pgm", ".ppm", ".pbm", ".bmp", ".tif", ".tiff", ".webp"})
SHORTCUTS = {"att": "att_faces", "cfp": "cfp"}
CELEBA_IDENTITY_FILE = "identity_CelebA.txt"
LOADER_VERSION = "2"
MAX_PIXELS = 40_000_000  # far above any face photo; a bigger image is refused before it is decoded
IN_MEMORY_MAX_BYTES = 2 * 1024**3  # a set up to this size is read into memory (in_memory=None); above, memory-mapped
CACHE_FORMAT = 1  # of the .npy + .json cache entry
DECODE_CHUNK = 4096  # images decoded per round of the thread pool
ALIGN_BATCH = 64  # images per batched MTCNN detection on a GPU


class DataError(ValueError):
    """A data source that cannot be used as given (no identities, unreadable file in strict mode)."""


@dataclass(frozen=True)
class DataConfig:
    """Where the faces come from and how they are preprocessed.

    Args:
        source: ``synthetic`` (embedded default), ``att`` or ``cfp`` (folders under the data
            root), or a path: a folder with one sub-folder per identity, or a CelebA root
            holding ``identity_CelebA.txt``.
        image_size: side of the square images after resize + center crop (or alignment).
        channels: 3 (grey sets are repeated to RGB) or 1 (RGB sets are converted to grey).
        align: detect and align faces with facenet-pytorch's MTCNN (per image; falls back to
            a center crop with a warning when no face is found).
        strict: raise on an unreadable image instead of skipping it with a warning.
        pose: for CFP-style file names (``frontal_*``/``profile_*``): ``frontal`` (default),
            ``profile`` or ``all``. Ignored for other layouts.
        min_images: identities with fewer usable images are skipped with a warning.
        max_identities: keep only the identities with the most images (ties by name).
        synthetic_identities, synthetic_images, synthetic_seed, synthetic_difficulty: the
            embedded generator's size and seed.
        data_root: the root for ``att``/``cfp``; default ``$VEIL_DATA_ROOT`` or ``../shared/datasets``.
        use_cache: read and write the preprocessed cache (``$VEIL_CACHE_DIR``).
        in_memory: ``True`` reads the set into memory, ``False`` keeps it memory-mapped on disk (needs
            the cache), ``None`` (default) chooses by size: in memory up to ``IN_MEMORY_MAX_BYTES``.
            Results are the same either way; only where the bytes live differs.
        workers: ``DataLoader`` worker processes that read a memory-mapped set's batches (0: in the
            training process).
    """

    source: str = "synthetic"
    image_size: int = 64
    channels: int = 3
    align: bool = False
    strict: bool = False
    pose: str = "frontal"
    min_images: int = 2
    max_identities: int | None = None
    synthetic_identities: int = 100
    synthetic_images: int = 30
    synthetic_seed: int = 0
    synthetic_difficulty: float = 1.0
    data_root: str | None = None
    use_cache: bool = True
    in_memory: bool | None = None
    workers: int = 2

    def __post_init__(self) -> None:
        if self.workers < 0:
            raise ValueError(f"workers must be >= 0, got {self.workers}")
        if self.image_size < 16:
            raise ValueError(f"image_size must be >= 16, got {self.image_size}")
        if self.channels not in (1, 3):
            raise ValueError(f"channels must be 1 or 3, got {self.channels}")
        if self.pose not in ("frontal", "profile", "all"):
            raise ValueError(f"pose must be frontal, profile or all, got {self.pose!r}")
        if self.min_images < 1:
            raise ValueError(f"min_images must be >= 1, got {self.min_images}")


class MappedImages(Dataset):
    """Rows ``index`` of a memory-mapped uint8 ``.npy`` array ``(N, C, S, S)``: a face set that stays
    on disk. Indexing it (an int, a slice, an index tensor) reads just those rows as a uint8 tensor,
    so splitting identities copies only indices; ``Trainer.fit`` streams batches with ``loader``.

    Anything else a tensor offers (a torch function, a tensor method) reads the rows into memory
    first: attacks that need the whole public set as one tensor still work, at that memory cost.
    """

    dtype = torch.uint8
    ndim = 4
    device = torch.device("cpu")

    def __init__(self, path: str | os.PathLike, index: np.ndarray | torch.Tensor | None = None,
                 workers: int = 2) -> None:
        self.path = Path(path)
        self.workers = workers
        self._array = _open_mapped(self.path)
        self.index = (np.arange(self._array.shape[0], dtype=np.int64) if index is None
                      else np.asarray(index, dtype=np.int64))

    def __getstate__(self) -> dict:  # a worker reopens the file: the mapping itself is never pickled
        return {"path": self.path, "index": self.index, "workers": self.workers}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["path"], state["index"], state["workers"])

    @property
    def shape(self) -> torch.Size:
        return torch.Size((len(self.index), *self._array.shape[1:]))

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, key: int | slice | np.ndarray | torch.Tensor | list) -> torch.Tensor:
        if isinstance(key, torch.Tensor):
            key = key.item() if key.ndim == 0 else key.numpy()
        rows = self.index[key]
        out = self._array[rows]  # an index array copies the rows; one row is a view, copied
        return torch.from_numpy(out if np.ndim(rows) else np.array(out))  # (the mapping itself is read-only)

    def subset(self, index: np.ndarray | torch.Tensor) -> MappedImages:
        """The rows ``index`` of these (no image is read)."""
        out = MappedImages.__new__(MappedImages)
        out.path, out.workers, out._array = self.path, self.workers, self._array
        out.index = self.index[np.asarray(index, dtype=np.int64)]
        return out

    def materialize(self) -> torch.Tensor:
        """All rows, read into one in-memory uint8 tensor."""
        return self[:]

    def fingerprint(self) -> str:
        """A digest of which rows of which cache file (named by its content key): a cache key that
        does not read the images."""
        h = hashlib.sha256(f"{self.path.name}:{tuple(self._array.shape)}".encode())
        h.update(self.index.tobytes())
        return h.hexdigest()

    def loader(self, batches: Sequence[torch.Tensor], labels: torch.Tensor, pin_memory: bool = False) -> DataLoader:
        """A ``DataLoader`` yielding ``(uint8 images, labels)`` for each index batch of ``batches``, in
        order, read by ``workers`` processes: the same batches as indexing, off the training process."""
        return DataLoader(_Batches(self, labels), sampler=list(batches), batch_size=None,
                          num_workers=self.workers, pin_memory=pin_memory)

    def __getattr__(self, name: str):
        if name.startswith("_") or name in ("path", "index", "workers"):
            raise AttributeError(name)
        return getattr(self.materialize(), name)

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        def real(a):
            if isinstance(a, MappedImages):
                return a.materialize()
            if isinstance(a, (list, tuple)):
                return type(a)(real(x) for x in a)
            return a
        return func(*real(tuple(args)), **{k: real(v) for k, v in (kwargs or {}).items()})


class _Batches(Dataset):
    """``(images[idx], labels[idx])`` for an index batch ``idx``: what a ``DataLoader`` worker reads."""

    def __init__(self, images: MappedImages, labels: torch.Tensor) -> None:
        self.images, self.labels = images, labels

    def __getitem__(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.images[idx], self.labels[idx]

    def __len__(self) -> int:
        return len(self.labels)


Images = torch.Tensor | MappedImages
"""A face set's uint8 ``(N, C, S, S)`` images: in memory, or memory-mapped on disk."""


@dataclass
class FaceData:
    """A whole labelled face set, in memory or memory-mapped.

    ``images`` is uint8 ``(N, C, S, S)``, ``labels`` int64 ``(N,)`` indexing ``names``,
    ``paths`` the source file of each image (empty for generated data).
    """

    images: Images
    labels: torch.Tensor
    names: list[str]
    paths: list[str]
    source: str

    def __post_init__(self) -> None:
        if self.images.ndim != 4 or self.images.dtype != torch.uint8:
            raise ValueError(f"images must be uint8 (N, C, H, W), got {self.images.dtype} {tuple(self.images.shape)}")
        if self.labels.shape != (self.images.shape[0],):
            raise ValueError(f"labels shape {tuple(self.labels.shape)} does not match {self.images.shape[0]} images")

    @property
    def num_identities(self) -> int:
        return len(self.names)

    def __len__(self) -> int:
        return int(self.images.shape[0])


def default_data_root() -> Path:
    """``$VEIL_DATA_ROOT``, else ``../shared/datasets`` beside the working directory or the checkout."""
    env = os.environ.get("VEIL_DATA_ROOT")
    if env:
        return Path(env)
    candidates = [Path.cwd() / ".." / "shared" / "datasets",
                  Path(__file__).resolve().parents[1] / ".." / "shared" / "datasets"]
    for c in candidates:
        if c.is_dir():
            return c.resolve()
    return candidates[0]


def resolve_source(config: DataConfig) -> Path | None:
    """The path a source names (``None`` for the synthetic set)."""
    if config.source == "synthetic":
        return None
    if config.source in SHORTCUTS:
        root = Path(config.data_root) if config.data_root else default_data_root()
        path = root / SHORTCUTS[config.source]
        if not path.is_dir():
            raise DataError(
                f"data source {config.source!r} expects {path}, which does not exist; "
                "set VEIL_DATA_ROOT (or --data-root) to the folder holding att_faces/ and cfp/"
            )
        return path
    path = Path(config.source).expanduser()
    if not path.exists():
        raise DataError(f"data path {path} does not exist")
    return path


def load_faces(config: DataConfig) -> FaceData:
    """Load (or generate) the face set ``config`` names, from the on-disk cache when possible."""
    path = resolve_source(config)
    if path is None:
        return _load_synthetic(config)
    if path.is_file() and path.suffix == ".npy":  # a preprocessed set carried without its raw images
        return _given_entry(path, config)
    path, entries = _source_entries(path, config)
    if not config.use_cache:
        if config.in_memory is False:
            warnings.warn("in_memory=False needs the cache (use_cache); reading the set into memory", stacklevel=2)
        return _read_images(entries, config, str(path))
    key = _cache_key(config, path, entries)
    n_bytes = sum(map(len, entries.values())) * config.channels * config.image_size ** 2
    mapped = config.in_memory is False or (config.in_memory is None and n_bytes > IN_MEMORY_MAX_BYTES)
    cached = _read_cache(key, mapped, config.workers)
    if cached is not None and mapped and not isinstance(cached.images, MappedImages):  # an old .pt entry
        cached = _read_cache(key, mapped, config.workers) if _write_cache(key, cached) else cached
    if cached is not None:
        return cached
    if mapped:
        data = _build_mapped(key, entries, config, str(path))
        if data is not None:
            return data
    data = _read_images(entries, config, str(path))
    _write_cache(key, data)
    return data


def _source_entries(path: Path, config: DataConfig) -> tuple[Path, dict[str, list[Path]]]:
    """The set's root and its image files per identity, as ``config`` filters them."""
    if path.is_file() and path.name == CELEBA_IDENTITY_FILE:
        path = path.parent
    entries = _celeba_entries(path) if (path / CELEBA_IDENTITY_FILE).is_file() else _folder_entries(path, config.pose)
    return path, _filter_identities(entries, config, path)


def cache_entry(config: DataConfig) -> Path | None:
    """The preprocessed file (``faces-KEY.npy``, its ``.json`` beside it) that ``load_faces(config)``
    reads and writes; ``None`` for the synthetic set or a set given as such a file. Copy both files
    to a machine without the raw images and pass the ``.npy`` as ``--data`` there."""
    path = resolve_source(config)
    if path is None or (path.is_file() and path.suffix == ".npy"):
        return None
    path, entries = _source_entries(path, config)
    return cache_dir() / f"faces-{_cache_key(config, path, entries)}.npy"


# ----------------------------------------------------------------------------------- layouts

def _natural_key(name: str) -> list:
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", name)]


def _is_image(p: Path) -> bool:
    return p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS


def _folder_entries(root: Path, pose: str) -> dict[str, list[Path]]:
    """One sub-folder per identity; stray files at the top are ignored."""
    if not root.is_dir():
        raise DataError(f"data path {root} is not a folder (expected one sub-folder per identity)")
    entries: dict[str, list[Path]] = {}
    for d in sorted((p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")),
                    key=lambda p: _natural_key(p.name)):
        files = sorted((f for f in d.iterdir() if _is_image(f)), key=lambda f: _natural_key(f.name))
        if not files:
            warnings.warn(f"skipping identity folder {d}: it holds no images", stacklevel=3)
            continue
        if pose != "all" and any(f.name.startswith(("frontal", "profile")) for f in files):
            files = [f for f in files if f.name.startswith(pose)]
        entries[d.name] = files
    if not entries:
        raise DataError(f"no identities found under {root}: expected one sub-folder of images per identity")
    return entries


def _celeba_entries(root: Path) -> dict[str, list[Path]]:
    """CelebA: ``identity_CelebA.txt`` lines ``<file> <identity>``; images in ``img_align_celeba/``."""
    img_dir = root / "img_align_celeba" if (root / "img_align_celeba").is_dir() else root
    entries: dict[str, list[Path]] = {}
    with open(root / CELEBA_IDENTITY_FILE) as f:
        for lineno, line in enumerate(f, 1):
            parts = line.split()
            if not parts:
                continue
            if len(parts) != 2:
                raise DataError(f"{root / CELEBA_IDENTITY_FILE}:{lineno}: expected '<file> <identity>', got {line.strip()!r}")
            entries.setdefault(parts[1], []).append(img_dir / parts[0])
    if not entries:
        raise DataError(f"no identities found in {root / CELEBA_IDENTITY_FILE}")
    return {k: entries[k] for k in sorted(entries, key=_natural_key)}


def _filter_identities(entries: dict[str, list[Path]], config: DataConfig, root: Path) -> dict[str, list[Path]]:
    kept = {}
    for name, files in entries.items():
        if len(files) < config.min_images:
            warnings.warn(f"skipping identity {name!r}: {len(files)} image(s) < min_images={config.min_images}", stacklevel=3)
            continue
        kept[name] = files
    if config.max_identities is not None:
        top = sorted(kept, key=lambda n: (-len(kept[n]), _natural_key(n)))[: config.max_identities]
        kept = {n: kept[n] for n in kept if n in set(top)}
    if len(kept) < 2:
        raise DataError(f"{root}: {len(kept)} usable identities (need >= 2 with >= {config.min_images} images each)")
    return kept


# ----------------------------------------------------------------------------------- reading

class _Aligner:
    """MTCNN face alignment. On the CPU one PIL image at a time (its batch mode raises when one
    image has no face, and its numpy path needs OpenCV); on a GPU, detection runs on batches of
    same-sized images and each face is cut out by itself, a missing one falling back the same way."""

    def __init__(self, size: int, device: str | torch.device | None = None) -> None:
        from facenet_pytorch import MTCNN

        self.device = torch.device(device if device is not None else "cuda" if torch.cuda.is_available() else "cpu")
        self.batch_size = 1 if self.device.type == "cpu" else ALIGN_BATCH
        # face sets hold loose crops where the face fills much of the picture: detecting on a
        # picture of at most 3x the output size with faces of >= 1/6 of it keeps MTCNN's
        # image pyramid short (a 2000 px photo otherwise costs seconds)
        self.max_side = max(3 * size, 160)
        self.mtcnn = MTCNN(image_size=size, margin=max(2, size // 8), post_process=False,
                           select_largest=True, min_face_size=max(20, self.max_side // 6), device=self.device)
        self.size = size

    def _shrink(self, img: Image.Image) -> Image.Image:
        if max(img.size) > self.max_side:
            img = img.copy()
            img.thumbnail((self.max_side, self.max_side), Image.Resampling.BILINEAR)
        return img

    def _face(self, face: torch.Tensor | None, img: Image.Image, path: Path) -> Image.Image:
        if face is None:
            warnings.warn(f"no face found in {path}; using a center crop", stacklevel=3)
            return ImageOps.fit(img, (self.size, self.size), Image.Resampling.BICUBIC)
        arr = face.clamp(0, 255).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()
        return Image.fromarray(arr, "RGB")

    def __call__(self, img: Image.Image, path: Path) -> Image.Image:
        img = self._shrink(img)
        with torch.no_grad():
            face = self.mtcnn(img.convert("RGB"))
        return self._face(face, img, path)

    def align_batch(self, imgs: list[Image.Image], paths: list[Path]) -> list[Image.Image]:
        """Align several images: detection batched over images of one size, extraction per image."""
        imgs = [self._shrink(im).convert("RGB") for im in imgs]
        out: list[Image.Image | None] = [None] * len(imgs)
        by_size: dict[tuple[int, int], list[int]] = {}
        for i, im in enumerate(imgs):
            by_size.setdefault(im.size, []).append(i)
        m = self.mtcnn
        for group in by_size.values():
            with torch.no_grad():
                boxes, probs, points = m.detect([imgs[i] for i in group], landmarks=True)
            for j, i in enumerate(group):
                face = None
                if boxes[j] is not None:
                    box, _, _ = m.select_boxes(boxes[j], probs[j], points[j], imgs[i], method=m.selection_method)
                    face = m.extract(imgs[i], box, None)
                out[i] = self._face(face, imgs[i], paths[i])
        return out  # type: ignore[return-value]

    def read_many(self, paths: list[Path], config: DataConfig) -> list[np.ndarray | None]:
        """``_read_one`` for several files, aligning them as one batch on a GPU."""
        if self.batch_size == 1:
            return [_read_one(p, config, self) for p in paths]
        decoded = [(p, _decode(p, config)) for p in paths]
        ok = [(p, im) for p, im in decoded if im is not None]
        faces = iter(self.align_batch([im for _, im in ok], [p for p, _ in ok]))
        return [None if im is None else _channels(next(faces), config) for _, im in decoded]


def _decode(path: Path, config: DataConfig) -> Image.Image | None:
    """Decode one file as RGB; ``None`` (with a warning) if unreadable, an error in strict mode."""
    try:
        with Image.open(path) as im:
            if im.width * im.height > MAX_PIXELS:  # checked from the header, before anything is decoded
                raise ValueError(f"{im.width}x{im.height} px is over the {MAX_PIXELS:,} px limit (a decompression bomb?)")
            im.load()
            return im.convert("RGB")
    except (UnidentifiedImageError, Image.DecompressionBombError, OSError, ValueError, SyntaxError) as err:
        msg = f"unreadable image {path}: {err}"
        if config.strict:
            raise DataError(msg) from err
        warnings.warn(f"skipping {msg}", stacklevel=3)
        return None


def _channels(img: Image.Image, config: DataConfig) -> np.ndarray:
    """An ``image_size`` PIL image as a ``(C, S, S)`` uint8 array of ``config.channels``."""
    if config.channels == 1:
        return np.asarray(img.convert("L"))[None]
    return np.asarray(img).transpose(2, 0, 1)


def _read_one(path: Path, config: DataConfig, aligner: _Aligner | None) -> np.ndarray | None:
    """Decode, align or fit to ``image_size``, convert mode; ``None`` (with a warning) if unreadable."""
    img = _decode(path, config)
    if img is None:
        return None
    if aligner is not None:
        img = aligner(img, path)
    else:
        img = ImageOps.fit(img, (config.image_size, config.image_size), Image.Resampling.BICUBIC)
    return _channels(img, config)


def _decoded(files: list[tuple[str, Path]], config: DataConfig, source: str) -> Iterator[np.ndarray | None]:
    """Each file's preprocessed pixels (``None`` if unreadable), in order: decoded by a few threads,
    or aligned by MTCNN (one image at a time on the CPU, batched on a GPU)."""
    aligner = _Aligner(config.image_size) if config.align else None
    desc = f"reading {Path(source).name}" + (" (MTCNN)" if aligner else "")
    bar = tqdm(total=len(files), desc=desc, unit="img", leave=False, disable=None)
    try:
        if aligner is None:
            read = lambda item: _read_one(item[1], config, None)  # noqa: E731
            with ThreadPoolExecutor(max_workers=max(1, min(4, os.cpu_count() or 1))) as pool:
                for i in range(0, len(files), DECODE_CHUNK):  # in chunks: never all of a large set at once
                    for arr in pool.map(read, files[i:i + DECODE_CHUNK]):
                        bar.update(1)
                        yield arr
        else:
            for i in range(0, len(files), aligner.batch_size):
                for arr in aligner.read_many([f for _, f in files[i:i + aligner.batch_size]], config):
                    bar.update(1)
                    yield arr
    finally:
        bar.close()


def _assemble(entries: dict[str, list[Path]], files: list[tuple[str, Path]], readable: Sequence[bool],
              config: DataConfig, source: str) -> tuple[list[int], torch.Tensor, list[str], list[str]]:
    """Which files make the set (identities with >= ``min_images`` readable ones), in order, with
    their labels, the identity names and the files' paths."""
    per_id: dict[str, list[int]] = {}
    for i, ((name, _), ok) in enumerate(zip(files, readable)):
        if ok:
            per_id.setdefault(name, []).append(i)
    names = []
    for name in entries:
        n = len(per_id.get(name, []))
        if n < config.min_images:
            if n or entries[name]:
                warnings.warn(f"skipping identity {name!r}: {n} readable image(s) < min_images={config.min_images}", stacklevel=3)
            per_id.pop(name, None)
            continue
        names.append(name)
    if len(names) < 2:
        raise DataError(f"{source}: fewer than 2 identities with readable images")
    order = [i for name in names for i in per_id[name]]
    label_of = {name: k for k, name in enumerate(names)}
    labels = torch.tensor([label_of[files[i][0]] for i in order], dtype=torch.int64)
    return order, labels, names, [str(files[i][1]) for i in order]


def _read_images(entries: dict[str, list[Path]], config: DataConfig, source: str) -> FaceData:
    files = [(name, f) for name, fs in entries.items() for f in fs]
    arrays = list(_decoded(files, config, source))
    order, labels, names, paths = _assemble(entries, files, [a is not None for a in arrays], config, source)
    images = torch.from_numpy(np.stack([arrays[i] for i in order]))
    return FaceData(images, labels, names, paths, source)


def _build_mapped(key: str, entries: dict[str, list[Path]], config: DataConfig, source: str) -> FaceData | None:
    """Decode a set straight into its memory-mapped cache entry, never holding it in memory (an
    unreadable file leaves a zero row that no index names); ``None`` if the cache cannot be written."""
    files = [(name, f) for name, fs in entries.items() for f in fs]
    npy = cache_dir() / f"faces-{key}.npy"
    try:
        with atomic_path(npy) as tmp:
            out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8,
                                            shape=(len(files), config.channels, config.image_size, config.image_size))
            readable = np.zeros(len(files), dtype=bool)
            for i, arr in enumerate(_decoded(files, config, source)):
                if arr is not None:
                    out[i], readable[i] = arr, True
            out.flush()
            del out
            order, labels, names, paths = _assemble(entries, files, readable.tolist(), config, source)
        _write_meta(key, (len(files), config.channels, config.image_size, config.image_size), order, labels, names,
                    paths, source)
    except OSError as err:
        warnings.warn(f"could not write the data cache {npy} ({err}); reading the set into memory", stacklevel=3)
        return None
    return FaceData(MappedImages(npy, order, config.workers), labels, names, paths, source)


def _load_synthetic(config: DataConfig) -> FaceData:
    syn = SyntheticConfig(n_identities=config.synthetic_identities, images_per_identity=config.synthetic_images,
                          image_size=config.image_size, seed=config.synthetic_seed,
                          difficulty=config.synthetic_difficulty)
    key = hashlib.sha1(json.dumps(["synthetic", GENERATOR_VERSION, asdict(syn), config.channels]).encode()).hexdigest()[:16]
    cached = _read_cache(key) if config.use_cache else None
    if cached is not None:
        return cached
    images, labels = generate_faces(syn)
    if config.channels == 1:
        w = torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)
        images = (images.float() * w).sum(1, keepdim=True).round().clamp(0, 255).to(torch.uint8)
    data = FaceData(images, labels, [f"synthetic_{i:04d}" for i in range(syn.n_identities)], [], "synthetic")
    if config.use_cache:
        _write_cache(key, data)
    return data


# ----------------------------------------------------------------------------------- cache

def _cache_key(config: DataConfig, root: Path, entries: dict[str, list[Path]]) -> str:
    h = hashlib.sha1()
    # a strict load keys its own entry: it never takes one a lenient load wrote by skipping files
    # (lenient keys are as before, so their entries stay valid)
    skip = ("use_cache", "data_root", "source", "in_memory", "workers") + (() if config.strict else ("strict",))
    meta = {k: v for k, v in asdict(config).items() if k not in skip}
    h.update(json.dumps([LOADER_VERSION, str(root.resolve()), meta], sort_keys=True).encode())
    for name, files in entries.items():
        for f in files:
            try:
                st = f.stat()
                h.update(f"{name}/{f.name}:{st.st_size}:{st.st_mtime_ns}\n".encode())
            except OSError:
                h.update(f"{name}/{f.name}:missing\n".encode())
    return h.hexdigest()[:16]


def _open_mapped(path: Path) -> np.ndarray:
    """A cache entry's images, memory-mapped read-only; a ``ValueError`` if it is not a uint8
    ``(N, C, S, S)`` array (a truncated file cannot be mapped)."""
    arr = np.load(path, mmap_mode="r", allow_pickle=False)
    if arr.dtype != np.uint8 or arr.ndim != 4:
        raise ValueError(f"holds a {arr.dtype} array of shape {arr.shape}, not uint8 (N, C, S, S) images")
    return arr


def read_entry(npy: Path, mapped: bool = False, workers: int = 0) -> FaceData:
    """A preprocessed set from its cache files (``faces-KEY.npy`` and the ``.json`` beside it),
    memory-mapped or read into memory; a ``DataError`` naming the file if either is missing or
    damaged. The two files are all a machine needs to train on a set whose raw images it lacks."""
    meta_path = npy.with_suffix(".json")
    where = meta_path
    try:
        meta = json.loads(meta_path.read_text())
        if not isinstance(meta, dict) or meta.get("format") != CACHE_FORMAT:
            raise ValueError(f"cache format {meta.get('format') if isinstance(meta, dict) else None!r}, "
                             f"not {CACHE_FORMAT}")
        where = npy
        arr = _open_mapped(npy)
        rows = np.asarray(meta["rows"] if meta["rows"] is not None else range(arr.shape[0]), dtype=np.int64)
        if list(arr.shape) != meta["shape"] or len(meta["labels"]) != len(rows) or (
                len(rows) and not 0 <= rows.min() <= rows.max() < arr.shape[0]):
            raise ValueError(f"holds {tuple(arr.shape)} images; its metadata says {tuple(meta['shape'])}")
        images = (MappedImages(npy, rows, workers) if mapped
                  else torch.from_numpy(np.array(arr) if meta["rows"] is None else arr[rows]))
        return FaceData(images, torch.tensor(meta["labels"], dtype=torch.int64), list(meta["names"]),
                        list(meta["paths"]), meta["source"])
    except Exception as err:
        raise DataError(f"preprocessed set {where}: {str(err).splitlines()[0] if str(err) else err!r}") from None


def _given_entry(npy: Path, config: DataConfig) -> FaceData:
    """A set given as its cache files: read as ``config`` would read it, its image size and channels checked."""
    data = read_entry(npy, mapped=True, workers=config.workers)  # mapped: only the header and labels are read
    shape = tuple(data.images.shape[1:])
    if shape != (config.channels, config.image_size, config.image_size):
        raise DataError(f"preprocessed set {npy} holds {shape[0]}-channel {shape[1]}x{shape[2]} images; this run "
                        f"wants {config.channels}-channel {config.image_size}x{config.image_size} "
                        "(set --image-size/--channels to match, or preprocess the faces again)")
    n_bytes = len(data) * config.channels * config.image_size ** 2
    mapped = config.in_memory is False or (config.in_memory is None and n_bytes > IN_MEMORY_MAX_BYTES)
    return data if mapped else replace(data, images=data.images.materialize())


def _read_cache(key: str, mapped: bool = False, workers: int = 0) -> FaceData | None:
    """The cache entry ``key`` (memory-mapped or read into memory), or an old ``.pt`` entry (in
    memory); ``None`` when there is none. A damaged entry is ignored with a warning, then rebuilt."""
    npy = cache_dir() / f"faces-{key}.npy"
    if npy.with_suffix(".json").is_file():
        try:
            return read_entry(npy, mapped, workers)
        except DataError as err:  # a damaged cache entry is rebuilt, never trusted
            warnings.warn(f"ignoring damaged cache file {str(err).removeprefix('preprocessed set ')}", stacklevel=2)
            return None
    path = cache_dir() / f"faces-{key}.pt"  # written before 0.18: still read, never rewritten
    if not path.is_file():
        return None
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
        return FaceData(blob["images"], blob["labels"], list(blob["names"]), list(blob["paths"]), blob["source"])
    except Exception as err:  # a damaged cache entry is rebuilt, never trusted
        warnings.warn(f"ignoring damaged cache file {path}: {err}", stacklevel=2)
        return None


def _write_meta(key: str, shape: tuple[int, ...], rows: list[int] | None, labels: torch.Tensor, names: list[str],
                paths: list[str], source: str) -> None:
    """The labels and names beside a cache entry's images, written last (an entry without them is absent)."""
    meta = {"format": CACHE_FORMAT, "shape": list(shape), "rows": rows, "labels": labels.tolist(),
            "names": names, "paths": paths, "source": source}
    with atomic_path(cache_dir() / f"faces-{key}.json") as tmp:
        tmp.write_text(json.dumps(meta))


def _write_cache(key: str, data: FaceData) -> bool:
    """Write an in-memory set as a cache entry (``.npy`` images, ``.json`` labels), atomically; a
    cache that cannot be written only warns. Returns whether it was written."""
    npy = cache_dir() / f"faces-{key}.npy"
    images = data.images.materialize() if isinstance(data.images, MappedImages) else data.images
    try:
        with atomic_path(npy) as tmp, open(tmp, "wb") as f:
            np.save(f, images.numpy(), allow_pickle=False)
        _write_meta(key, tuple(images.shape), None, data.labels, data.names, data.paths, data.source)
        return True
    except (OSError, RuntimeError) as err:
        warnings.warn(f"could not write the data cache {npy} ({str(err).splitlines()[0] if str(err) else err!r}); "
                      "going on without it", stacklevel=2)
        return False


# ----------------------------------------------------------------------------------- split

@dataclass(frozen=True)
class SplitConfig:
    """How identities are split into private (target) and public (attacker's prior) ones, and
    each private identity's images into train and test.

    Args:
        n_private: number of private identities (overrides ``private_fraction``).
        private_fraction: share of identities that are private when ``n_private`` is unset.
        test_fraction: share of each private identity's images held out for testing
            (at least one; 10 images -> 7 train / 3 test).
        seed: the split's seed; the same seed always gives the same split.
        validation: calibration mode: the test split is carved from each private identity's
            *training* images (``test_fraction`` of them) and the real test images join no set,
            so settings chosen on it never see the test split a benchmark reports.
    """

    n_private: int | None = None
    private_fraction: float = 0.5
    test_fraction: float = 0.3
    seed: int = 0
    validation: bool = False

    def __post_init__(self) -> None:
        if not 0.0 < self.private_fraction < 1.0:
            raise ValueError(f"private_fraction must be in (0, 1), got {self.private_fraction}")
        if not 0.0 < self.test_fraction < 1.0:
            raise ValueError(f"test_fraction must be in (0, 1), got {self.test_fraction}")
        if self.n_private is not None and self.n_private < 2:
            raise ValueError(f"n_private must be >= 2, got {self.n_private}")


@dataclass
class FaceSplit:
    """The protocol's three sets. Private labels are re-indexed 0..P-1 (the target's classes),
    public labels 0..Q-1; ``*_names`` map them back to identity names."""

    train_images: Images
    train_labels: torch.Tensor
    test_images: Images
    test_labels: torch.Tensor
    public_images: Images
    public_labels: torch.Tensor
    private_names: list[str]
    public_names: list[str]
    train_index: torch.Tensor = field(repr=False)
    test_index: torch.Tensor = field(repr=False)
    public_index: torch.Tensor = field(repr=False)
    source: str = ""
    kind: str = "test"  # "validation": test_* hold validation images carved from the training ones

    @property
    def num_private(self) -> int:
        return len(self.private_names)

    def summary(self) -> dict[str, int | str]:
        """Counts for logging as run parameters."""
        return {"data_source": self.source, "n_private_identities": self.num_private,
                "split_kind": self.kind,
                "n_public_identities": len(self.public_names), "n_private_train": len(self.train_labels),
                "n_private_test": len(self.test_labels), "n_public_images": len(self.public_labels),
                "image_shape": "x".join(map(str, self.train_images.shape[1:]))}

    def manifest(self, data: FaceData | None = None) -> dict:
        """Which identity and which image went where (logged as a JSON artifact)."""
        out: dict = {"private_identities": self.private_names, "public_identities": self.public_names,
                     "train_index": self.train_index.tolist(), "test_index": self.test_index.tolist(),
                     "public_index": self.public_index.tolist()}
        if data is not None and data.paths:
            out["train_files"] = [data.paths[i] for i in self.train_index.tolist()]
            out["test_files"] = [data.paths[i] for i in self.test_index.tolist()]
        return out


def split_identities(data: FaceData, config: SplitConfig = SplitConfig()) -> FaceSplit:
    """Deterministically split ``data`` by identity, then each private identity's images."""
    n_ids = data.num_identities
    n_private = config.n_private if config.n_private is not None else max(2, round(n_ids * config.private_fraction))
    if n_private >= n_ids:
        raise DataError(f"n_private={n_private} leaves no public identities out of {n_ids}")
    g = torch.Generator().manual_seed(config.seed)
    perm = torch.randperm(n_ids, generator=g)

    def held_out(n: int) -> int:  # test_fraction of n images, at least one, leaving at least one
        return min(n - 1, max(1, round(n * config.test_fraction)))

    private_ids = perm[:n_private].sort().values
    public_ids = perm[n_private:].sort().values

    train_idx: list[torch.Tensor] = []
    test_idx: list[torch.Tensor] = []
    for new_label, pid in enumerate(private_ids.tolist()):
        idx = (data.labels == pid).nonzero().flatten()
        if len(idx) < 2:
            raise DataError(f"private identity {data.names[pid]!r} has {len(idx)} image(s); need >= 2 for train/test")
        idx = idx[torch.randperm(len(idx), generator=g)]
        n_test = held_out(len(idx))
        if config.validation:  # the test images are set aside; validation comes from the training ones
            idx = idx[n_test:]
            if len(idx) < 2:
                raise DataError(f"private identity {data.names[pid]!r} has {len(idx)} training image(s); "
                                "a validation split needs >= 2 (one to train on, one to validate)")
            n_test = held_out(len(idx))
        test_idx.append(idx[:n_test].sort().values)
        train_idx.append(idx[n_test:].sort().values)
    train_index = torch.cat(train_idx)
    test_index = torch.cat(test_idx)
    public_index = torch.isin(data.labels, public_ids).nonzero().flatten()

    remap = torch.full((n_ids,), -1, dtype=torch.int64)
    remap[private_ids] = torch.arange(n_private)
    remap_pub = torch.full((n_ids,), -1, dtype=torch.int64)
    remap_pub[public_ids] = torch.arange(len(public_ids))
    images = data.images
    take = images.subset if isinstance(images, MappedImages) else images.__getitem__  # mapped: indices only
    return FaceSplit(
        train_images=take(train_index), train_labels=remap[data.labels[train_index]],
        test_images=take(test_index), test_labels=remap[data.labels[test_index]],
        public_images=take(public_index), public_labels=remap_pub[data.labels[public_index]],
        private_names=[data.names[i] for i in private_ids.tolist()],
        public_names=[data.names[i] for i in public_ids.tolist()],
        train_index=train_index, test_index=test_index, public_index=public_index, source=data.source,
        kind="validation" if config.validation else "test",
    )


def to_float(images: torch.Tensor) -> torch.Tensor:
    """uint8 images -> float32 in [0, 1]."""
    return images.float().div_(255.0)


def random_hflip(images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Flip each image left-right with probability 1/2 (standard for faces; not a privacy defense).
    The coin flips are drawn by ``generator`` on its device (the CPU) and moved to the images'."""
    flip = (torch.rand(images.shape[0], generator=generator) < 0.5).to(images.device)
    return torch.where(flip[:, None, None, None], images.flip(-1), images)


def one_hot(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Hard labels -> soft targets (float32 rows summing to 1)."""
    return torch.nn.functional.one_hot(labels, num_classes).float()


__all__: Sequence[str] = ["DataConfig", "DataError", "FaceData", "FaceSplit", "Images", "MappedImages", "SplitConfig",
                          "default_data_root",
                          "load_faces", "one_hot", "random_hflip", "resolve_source", "split_identities", "to_float"]
