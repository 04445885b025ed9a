"""Deterministic synthetic face identities: the offline default face set.

No real-face data set can be downloaded everywhere veil runs, so this module draws cartoon
faces: every identity is a fixed vector of face parameters (shape, skin, eyes, brows, nose,
mouth, hair, glasses, beard), every image adds seeded nuisance (pose, scale, translation,
lighting, expression, background, clothes, pixel noise) scaled by ``difficulty``. Rendering is
batched torch on coordinate grids: soft masks composited in layers, no Python loop over images.

Determinism: the parameters of identity ``i`` (and of its images) come from a
``torch.Generator`` seeded by a hash of ``(seed, i)``, so they do not depend on
``n_identities`` or ``images_per_identity``; all per-image scalars are computed once for the
whole set before batching, and pixel work uses only IEEE-exact operations (``+ - * /``,
``sqrt``, ``clamp``: a clamped linear edge rather than a sigmoid), so the bytes do not depend on
``batch_size`` or the number of threads either.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

__all__ = ["GENERATOR_VERSION", "SyntheticConfig", "generate_faces", "identity_parameters"]

GENERATOR_VERSION: str = "4"
"""Cache key of the generator's output: bump whenever the images for a config change."""

# Uniform draws per identity / per image. Appending names keeps earlier draws unchanged, but
# any change to the list or the mapping below changes the output: bump GENERATOR_VERSION.
_IDENTITY_KEYS: tuple[str, ...] = (
    "face_w", "face_h", "jaw", "chin",
    "skin_tone", "skin_r", "skin_g", "skin_b",
    "eye_dx", "eye_size", "eye_aspect", "eye_y", "iris_pal", "iris_r", "iris_g", "iris_b",
    "brow_thick", "brow_slant", "brow_gap", "brow_len", "brow_arch", "brow_dark",
    "nose_len", "nose_w",
    "mouth_w", "mouth_thick", "mouth_y", "lip_red", "smile",
    "hair_pal", "hair_r", "hair_g", "hair_b", "hairline", "hair_curve", "hair_part", "hair_side", "hair_vol",
    "glasses", "glasses_pal", "glasses_size", "glasses_thick",
    "beard", "beard_density", "beard_top",
)
_IMAGE_KEYS: tuple[str, ...] = (
    "yaw", "roll", "scale", "tx", "ty",
    "light_angle", "light_strength", "brightness", "tint_r", "tint_g", "tint_b",
    "smile", "mouth_open", "eye_open", "gaze_x", "gaze_y", "brow_raise",
    "bg_r", "bg_g", "bg_b", "bg_angle", "bg_strength",
    "shirt_r", "shirt_g", "shirt_b",
    "noise_sigma", "noise_k", "noise_dx", "noise_dy",
)

# Colour palettes (RGB in [0, 1]); a draw picks an entry and jitters it.
_IRIS_PALETTE = ((0.35, 0.20, 0.08), (0.18, 0.10, 0.05), (0.25, 0.45, 0.75),
                 (0.30, 0.55, 0.35), (0.50, 0.55, 0.58), (0.50, 0.40, 0.15))
_HAIR_PALETTE = ((0.08, 0.07, 0.07), (0.25, 0.15, 0.08), (0.45, 0.30, 0.15),
                 (0.55, 0.22, 0.10), (0.85, 0.72, 0.45), (0.70, 0.70, 0.70))
_FRAME_PALETTE = ((0.05, 0.05, 0.05), (0.45, 0.25, 0.10), (0.60, 0.60, 0.65), (0.55, 0.10, 0.10))
_SKIN_LIGHT = (0.96, 0.80, 0.68)
_SKIN_DARK = (0.42, 0.27, 0.18)

# Calibration: difficulty=1.0 applies this fraction of the nuisance ranges written below, chosen
# for veil's default CNN (veil.recognition.models.SmallCNN, whose embedding reads a 4x4 spatial map):
# 100 ids x 30 images at 64 px, 50 private ids with 21 train / 9 test images, Adam 1e-3, batch 32,
# flips, 10 epochs -> about 80% test top-1 at scale 1.0 (93% at 20 epochs). A weaker CNN with
# global average pooling reached 25-36% at scale 1.0, 61% at 0.5 and 68% at 0.3.
_NUISANCE_SCALE = 1.0
_NOISE_BANK = 8          # pre-drawn noise fields; each image picks one and a cyclic shift
_EDGE_PX = 1.2           # soft-mask edge width in pixels (anti-aliasing)
_CHUNK_PIXELS = 1 << 17  # pixels per plane rendered at once at most: keeps the working set in cache


@dataclass(frozen=True)
class SyntheticConfig:
    """Size, seed and difficulty of a synthetic face set.

    Args:
        n_identities: number of identities (labels ``0 .. n_identities-1``).
        images_per_identity: images drawn per identity.
        image_size: side of the square RGB images (any size >= 16; tuned for 32-160).
        seed: base seed; identity ``i`` depends only on ``(seed, i)``.
        difficulty: scales all per-image nuisance (pose, lighting, expression, background,
            noise); 0 renders every image of an identity (nearly) identically.
    """

    n_identities: int = 100
    images_per_identity: int = 30
    image_size: int = 64
    seed: int = 0
    difficulty: float = 1.0

    def __post_init__(self) -> None:
        if self.n_identities < 1:
            raise ValueError(f"n_identities must be >= 1, got {self.n_identities}")
        if self.images_per_identity < 1:
            raise ValueError(f"images_per_identity must be >= 1, got {self.images_per_identity}")
        if self.image_size < 16:
            raise ValueError(f"image_size must be >= 16, got {self.image_size}")
        if not (self.difficulty >= 0.0 and math.isfinite(self.difficulty)):
            raise ValueError(f"difficulty must be finite and >= 0, got {self.difficulty}")


def generate_faces(config: SyntheticConfig, batch_size: int = 1024) -> tuple[torch.Tensor, torch.Tensor]:
    """Render the whole set.

    Returns ``(images, labels)``: uint8 ``(N, 3, S, S)`` and int64 ``(N,)`` with
    ``N = n_identities * images_per_identity``, identity-major (all images of identity 0
    first). The bytes depend only on ``config``, never on ``batch_size`` (the most images
    rendered at once; work is further cut into cache-sized chunks of ``2**17 / S**2`` images).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    n_id, per, size = config.n_identities, config.images_per_identity, config.image_size
    ident, nuis = _draw_uniforms(config.seed, n_id, per)
    params = _derive(ident.repeat_interleave(per, dim=0), nuis, config)
    bank = _noise_bank(config.seed, size)
    grid = _grid(size)
    n = n_id * per
    images = torch.empty((n, 3, size, size), dtype=torch.uint8)
    step = max(1, min(batch_size, _CHUNK_PIXELS // (size * size)))
    with torch.no_grad():
        for start in range(0, n, step):
            sl = slice(start, min(start + step, n))
            chunk = {k: (v[:, sl] if v.shape[0] == 3 and v.ndim == 4 else v[sl]) for k, v in params.items()}
            images[sl] = _render(chunk, grid, bank)
    labels = torch.arange(n_id, dtype=torch.int64).repeat_interleave(per)
    return images, labels


def identity_parameters(seed: int, n_identities: int) -> dict[str, torch.Tensor]:
    """The raw uniform draws in ``[0, 1)`` of each identity, by name (for inspection and tests)."""
    ident, _ = _draw_uniforms(seed, n_identities, 0)
    return {k: ident[:, j] for j, k in enumerate(_IDENTITY_KEYS)}


# ------------------------------------------------------------------------------ randomness

def _mix_seed(seed: int, index: int) -> int:
    """SplitMix64 of ``(seed, index)``: a well-spread 63-bit seed per identity."""
    mask = (1 << 64) - 1
    z = (seed * 0x9E3779B97F4A7C15 + (index + 1) * 0xD1B54A32D192ED03 + 0x632BE59BD9B4E019) & mask
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & mask
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & mask
    return (z ^ (z >> 31)) >> 1


def _draw_uniforms(seed: int, n_identities: int, per: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Identity draws ``(n, K_id)`` and image draws ``(n * per, K_img)``, float64 in [0, 1).

    One generator per identity (a loop over identities only): the identity's draws come
    first, then its images', so identity ``i`` never depends on ``per`` or ``n``.
    """
    g = torch.Generator()
    ident = torch.empty((n_identities, len(_IDENTITY_KEYS)), dtype=torch.float64)
    nuis = torch.empty((n_identities, per, len(_IMAGE_KEYS)), dtype=torch.float64)
    for i in range(n_identities):
        g.manual_seed(_mix_seed(seed, i))
        ident[i] = torch.rand(len(_IDENTITY_KEYS), generator=g, dtype=torch.float64)
        if per:
            nuis[i] = torch.rand((per, len(_IMAGE_KEYS)), generator=g, dtype=torch.float64)
    return ident, nuis.reshape(n_identities * per, len(_IMAGE_KEYS))


def _noise_bank(seed: int, size: int) -> torch.Tensor:
    """``_NOISE_BANK`` standard-normal fields ``(K, 3, S*S)`` shared by all images of a set."""
    g = torch.Generator()
    g.manual_seed(_mix_seed(seed ^ 0x5EED, -1 - size))
    return torch.randn((_NOISE_BANK, 3, size * size), generator=g, dtype=torch.float32)


def _grid(size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Pixel-centre coordinates in ``[-1, 1]``: x to the right, y downwards, shapes ``(1, S, S)``."""
    c = (torch.arange(size, dtype=torch.float32) + 0.5) * (2.0 / size) - 1.0
    return c.view(1, 1, size).expand(1, size, size).contiguous(), c.view(1, size, 1).expand(1, size, size).contiguous()


# ------------------------------------------------------------------------------ parameters

def _palette(pal: tuple[tuple[float, float, float], ...], u: torch.Tensor, jitter: torch.Tensor,
             amount: float) -> torch.Tensor:
    """Pick ``pal[floor(u * len)]`` and add ``amount * (jitter - 0.5)`` per channel: ``(n, 3)``."""
    table = torch.tensor(pal, dtype=torch.float64)
    idx = (u * len(pal)).long().clamp_(0, len(pal) - 1)
    return (table[idx] + amount * (jitter - 0.5)).clamp(0.0, 1.0)


def _derive(ui: torch.Tensor, un: torch.Tensor, config: SyntheticConfig) -> dict[str, torch.Tensor]:
    """Map uniform draws (one row per image) to the render parameters, float32.

    Face units: the face centre is the origin, x right, y down; the face is about 1.3 tall.
    Scalars come back as ``(N, 1, 1)``, colours channel-first as ``(3, N, 1, 1)``.
    """
    I = {k: ui[:, j] for j, k in enumerate(_IDENTITY_KEYS)}
    U = {k: un[:, j] for j, k in enumerate(_IMAGE_KEYS)}
    d = float(config.difficulty) * _NUISANCE_SCALE

    def rng(u: torch.Tensor, lo: float, hi: float) -> torch.Tensor:
        return lo + (hi - lo) * u

    def sym(u: torch.Tensor, amp: float) -> torch.Tensor:  # nuisance around 0, scaled by difficulty
        return d * amp * (2.0 * u - 1.0)

    def rgb(prefix: str, src: dict[str, torch.Tensor]) -> torch.Tensor:
        return torch.stack([src[prefix + "_r"], src[prefix + "_g"], src[prefix + "_b"]], dim=1)

    p: dict[str, torch.Tensor] = {}
    # --- identity: face shape
    a = rng(I["face_w"], 0.50, 0.66)
    b = rng(I["face_h"], 0.66, 0.80)
    p["jaw"] = rng(I["jaw"], 0.05, 0.45)
    p["chin"] = rng(I["chin"], 0.0, 0.18)          # lower half longer than the upper
    # --- identity: skin
    t = I["skin_tone"].unsqueeze(1)
    skin = torch.tensor(_SKIN_LIGHT, dtype=torch.float64) * (1 - t) + torch.tensor(_SKIN_DARK, dtype=torch.float64) * t
    skin = (skin + 0.06 * (rgb("skin", I) - 0.5)).clamp(0, 1)
    # --- identity: eyes, brows, nose, mouth
    eye_dx = a * rng(I["eye_dx"], 0.34, 0.50)
    eye_w = rng(I["eye_size"], 0.075, 0.11)
    eye_h = eye_w * rng(I["eye_aspect"], 0.42, 0.68)
    eye_y = rng(I["eye_y"], -0.14, 0.0)
    iris = _palette(_IRIS_PALETTE, I["iris_pal"], rgb("iris", I), 0.12)
    hair = _palette(_HAIR_PALETTE, I["hair_pal"], rgb("hair", I), 0.12)
    brow_col = hair * rng(I["brow_dark"], 0.45, 0.9).unsqueeze(1)
    nose_len = rng(I["nose_len"], 0.13, 0.26)
    nose_w = rng(I["nose_w"], 0.035, 0.08)
    mouth_y = rng(I["mouth_y"], 0.30, 0.42) * (b / 0.73)
    lip = skin * 0.75 + torch.tensor([0.65, 0.12, 0.15], dtype=torch.float64) * 0.25
    lip = lip * (1 - 0.6 * I["lip_red"].unsqueeze(1)) + torch.tensor([0.62, 0.18, 0.2], dtype=torch.float64) * 0.6 * I["lip_red"].unsqueeze(1)
    # --- identity: hair, glasses, beard
    hair_vol = rng(I["hair_vol"], 0.03, 0.13)
    hairline = rng(I["hairline"], -0.62, -0.30)
    hairline = torch.where(I["hairline"] > 0.93, torch.full_like(hairline, -1.5), hairline)  # a few bald
    frame = _palette(_FRAME_PALETTE, I["glasses_pal"], I["glasses_pal"].new_full((ui.shape[0], 3), 0.5), 0.0)
    # --- nuisance: pose
    yaw = sym(U["yaw"], 0.32)
    roll = sym(U["roll"], 0.22)
    scale = 0.92 * (1.0 + sym(U["scale"], 0.10))
    cos_yaw = torch.sqrt(1.0 - yaw * yaw).clamp(min=0.5)
    p["tx"], p["ty"] = sym(U["tx"], 0.08), sym(U["ty"], 0.07)
    p["cos_r"], p["sin_r"] = torch.cos(roll), torch.sin(roll)
    p["inv_scale"] = 1.0 / scale
    p["aa"] = (2.0 / (config.image_size * scale)) * _EDGE_PX   # edge width in face units
    p["face_a"] = a * (0.92 + 0.08 * cos_yaw)
    p["face_b"] = b
    p["face_cx"] = 0.06 * yaw                                  # silhouette moves a little
    p["feat_cx"] = 0.42 * yaw                                  # features (depth ~0.4) move more
    p["nose_cx"] = 0.60 * yaw                                  # the nose tip most
    p["eye_dx"] = eye_dx * cos_yaw
    p["eye_w"], p["eye_y"] = eye_w * cos_yaw, eye_y
    # --- nuisance: expression
    eye_open = (1.0 - d * 0.55 * U["eye_open"] ** 2).clamp(0.15, 1.0)
    p["eye_h"] = eye_h * eye_open
    p["iris_r"] = eye_h * 0.9
    p["gaze_x"] = sym(U["gaze_x"], 0.35) * eye_w
    p["gaze_y"] = sym(U["gaze_y"], 0.2) * eye_h
    p["brow_y"] = eye_y - eye_h - rng(I["brow_gap"], 0.035, 0.10) - d * 0.03 * U["brow_raise"]
    p["brow_thick"] = rng(I["brow_thick"], 0.012, 0.032)
    p["brow_len"] = eye_w * rng(I["brow_len"], 1.0, 1.45)
    p["brow_slant"] = rng(I["brow_slant"], -0.35, 0.35)
    p["brow_arch"] = rng(I["brow_arch"], 0.0, 0.04)
    p["nose_y0"] = eye_y + 0.02
    p["nose_len"], p["nose_w"] = nose_len, nose_w * cos_yaw
    p["mouth_y"] = mouth_y
    p["mouth_w"] = rng(I["mouth_w"], 0.13, 0.24) * cos_yaw
    p["mouth_thick"] = rng(I["mouth_thick"], 0.014, 0.035)
    p["smile"] = rng(I["smile"], -0.01, 0.04) + sym(U["smile"], 0.045)
    p["mouth_open"] = (d * 0.045 * (2.0 * U["mouth_open"] - 1.0)).clamp(min=0.0)
    p["hair_vol"] = hair_vol
    p["hairline"] = hairline
    p["hair_curve"] = rng(I["hair_curve"], 0.05, 0.35)
    p["hair_part"] = rng(I["hair_part"], -0.25, 0.25)
    p["hair_side"] = rng(I["hair_side"], -0.25, 1.1)
    p["glasses"] = (I["glasses"] < 0.3).to(torch.float64)
    p["glasses_s"] = rng(I["glasses_size"], 1.25, 1.6)
    p["glasses_thick"] = rng(I["glasses_thick"], 0.012, 0.028)
    p["beard"] = (I["beard"] < 0.22).to(torch.float64) * rng(I["beard_density"], 0.55, 0.95)
    p["beard_top"] = mouth_y - rng(I["beard_top"], 0.03, 0.10)
    # --- nuisance: lighting, background, clothes, noise
    la = U["light_angle"] * (2 * math.pi)
    ls = d * 0.35 * U["light_strength"]
    p["light_x"], p["light_y"] = ls * torch.cos(la), ls * torch.sin(la)
    p["brightness"] = 1.0 + sym(U["brightness"], 0.22)
    tint = 1.0 + sym(torch.stack([U["tint_r"], U["tint_g"], U["tint_b"]], dim=1), 0.07)
    ba = U["bg_angle"] * (2 * math.pi)
    bs = d * 0.25 * U["bg_strength"]
    p["bg_gx"], p["bg_gy"] = bs * torch.cos(ba), bs * torch.sin(ba)
    bg = 0.55 + sym(torch.stack([U["bg_r"], U["bg_g"], U["bg_b"]], dim=1), 0.4)
    shirt = 0.4 + sym(torch.stack([U["shirt_r"], U["shirt_g"], U["shirt_b"]], dim=1), 0.35)
    p["noise_sigma"] = d * (0.01 + 0.035 * U["noise_sigma"])
    p["noise_k"] = (U["noise_k"] * _NOISE_BANK).floor().clamp(max=_NOISE_BANK - 1)
    p["noise_dx"] = (U["noise_dx"] * config.image_size).floor()
    p["noise_dy"] = (U["noise_dy"] * config.image_size).floor()

    out = {k: v.to(torch.float32).view(-1, 1, 1) for k, v in p.items()}
    colours = {"skin": skin, "iris": iris, "hair": hair, "brow": brow_col, "lip": lip, "frame": frame,
               "tint": tint, "bg": bg.clamp(0, 1), "shirt": shirt.clamp(0, 1)}
    out.update({k: v.to(torch.float32).t().contiguous().view(3, -1, 1, 1) for k, v in colours.items()})
    return out


# ------------------------------------------------------------------------------ rendering

def _soft(dist: torch.Tensor, aa: torch.Tensor) -> torch.Tensor:
    """Coverage of a shape from its signed distance (negative inside): a linear edge ``-1 / aa`` wide.

    ``aa`` is the negated inverse edge width (see ``_render``); only IEEE-exact ops are used.
    """
    return (dist * aa).add_(0.5).clamp_(0.0, 1.0)


def _ellipse(u: torch.Tensor, v: torch.Tensor, a: torch.Tensor | float, b: torch.Tensor | float,
             rmin: torch.Tensor | float) -> torch.Tensor:
    """Approximate signed distance to the ellipse ``(u/a)^2 + (v/b)^2 = 1`` (``rmin = min(a, b)``)."""
    q = u / a
    r = v / b
    return q.mul_(q).add_(r.mul_(r)).sqrt_().sub_(1.0).mul_(rmin)


def _over(img: torch.Tensor, alpha: torch.Tensor, colour: torch.Tensor) -> None:
    """Composite ``colour`` ``(3, B, 1, 1)`` over ``img`` ``(3, B, S, S)`` in place with coverage ``alpha`` ``(B, S, S)``."""
    img.add_(alpha * (colour - img))


def _render(p: dict[str, torch.Tensor], grid: tuple[torch.Tensor, torch.Tensor], bank: torch.Tensor) -> torch.Tensor:
    """Render one chunk of images from its parameters: uint8 ``(B, 3, S, S)``."""
    X, Y = grid
    B, S = p["tx"].shape[0], X.shape[-1]
    aa = -1.0 / p["aa"]                       # negated inverse edge width, for _soft
    # image -> face coordinates: undo translation, roll and scale
    xs, ys = X - p["tx"], Y - p["ty"]
    u = (xs * p["cos_r"] + ys * p["sin_r"]) * p["inv_scale"]
    v = (ys * p["cos_r"] - xs * p["sin_r"]) * p["inv_scale"]

    # background: colour with a linear gradient
    img = p["bg"] * (1.0 + (X * p["bg_gx"] + Y * p["bg_gy"]))      # (3, B, S, S): channel planes

    fa, fb = p["face_a"], p["face_b"]
    uf = u - p["face_cx"]
    # shirt / shoulders
    sh = _ellipse(uf, v - (fb + 0.75), fa * 1.9, 0.62, 0.62)
    _over(img, _soft(sh, aa), p["shirt"])
    # hair behind the head: a cap around the face plus side hair down to hair_side
    hv = p["hair_vol"]
    cap = _ellipse(uf, v + 0.5 * hv, fa + hv, fb + hv, fa + hv)
    side = torch.maximum(uf.abs() - (fa + hv * 0.8), v - p["hair_side"])
    side = torch.maximum(side, -v)
    back = _soft(torch.minimum(cap, side), aa)
    _over(img, back, p["hair"])
    # neck
    neck = torch.maximum(uf.abs() - 0.42 * fa, -v)
    _over(img, _soft(neck, aa), p["skin"] * 0.82)
    # face: ellipse, the lower half longer and narrowing towards the chin
    low = (v / fb).clamp(0.0, 1.0)
    width = fa * (1.0 - p["jaw"] * low * low)
    height = fb * (1.0 + p["chin"] * (v > 0).to(v.dtype))
    face_d = _ellipse(uf, v, width, height, torch.minimum(fa, fb))
    face = _soft(face_d, aa)
    _over(img, face, p["skin"])
    # beard: lower face below beard_top, dipping under the nose towards the middle
    mw = p["mouth_w"]
    um = u - p["feat_cx"]
    bump = (1.0 - (um / (mw * 1.3)) ** 2).clamp(min=0.0)
    beard_d = torch.maximum(face_d, p["beard_top"] - 0.05 * bump - v)
    _over(img, _soft(beard_d, aa) * p["beard"], p["hair"] * 0.8)
    # fringe: hair on the face above the hairline
    hl = p["hairline"] + p["hair_curve"] * (uf / fa) ** 2 + p["hair_part"] * 0.3 * uf
    fringe = torch.maximum(face_d - hv * 0.3, v - hl)
    _over(img, _soft(fringe, aa), p["hair"])

    # eyes (both at once by folding u around the feature centre line)
    side_sign = torch.sign(um)
    ue = um.abs() - p["eye_dx"]
    ve = v - p["eye_y"]
    ew, eh = p["eye_w"], p["eye_h"]
    sclera_d = _ellipse(ue, ve, ew, eh, eh)
    sclera = _soft(sclera_d, aa)
    _over(img, sclera, 0.96)
    ir = p["iris_r"]
    iris_d = torch.sqrt((ue - p["gaze_x"] * side_sign) ** 2 + (ve - p["gaze_y"]) ** 2)
    iris = torch.minimum(_soft(iris_d - ir, aa), sclera)
    _over(img, iris, p["iris"])
    _over(img, torch.minimum(_soft(iris_d - ir * 0.45, aa), sclera), 0.03)
    # upper eyelid line
    lid = torch.maximum((sclera_d).abs() - 0.25 * p["aa"] - 0.004, ve)
    _over(img, _soft(lid, aa) * 0.8, p["brow"] * 0.5)

    # eyebrows: sheared, arched bars
    vb = v - p["brow_y"] + p["brow_slant"] * ue * 0.5 + p["brow_arch"] * (1.0 - (ue / p["brow_len"]) ** 2)
    brow_d = torch.maximum(vb.abs() - p["brow_thick"], ue.abs() - p["brow_len"])
    _over(img, _soft(brow_d, aa), p["brow"])

    # nose: a shaded wedge widening downwards, and nostrils
    un = u - p["nose_cx"]
    vn = v - p["nose_y0"]
    frac = (vn / p["nose_len"]).clamp(0.0, 1.0)
    wedge = torch.maximum(un.abs() - p["nose_w"] * (0.25 + 0.75 * frac), (vn - 0.5 * p["nose_len"]).abs() - 0.5 * p["nose_len"])
    _over(img, _soft(wedge, aa) * 0.35, p["skin"] * 0.55)
    nos = _ellipse(un.abs() - p["nose_w"] * 0.55, vn - p["nose_len"], p["nose_w"] * 0.35, p["nose_w"] * 0.22,
                   p["nose_w"] * 0.22)
    _over(img, _soft(nos, aa) * 0.8, p["skin"] * 0.35)

    # mouth: a curved lens of lips, dark inside when open
    uu = um / mw
    lens = (1.0 - uu * uu).clamp(min=0.0)
    vm = v - (p["mouth_y"] + p["smile"] * (0.4 - uu * uu))
    lips_d = torch.maximum(vm.abs() - (p["mouth_thick"] + p["mouth_open"]) * torch.sqrt(lens), (uu.abs() - 1.0) * mw)
    _over(img, _soft(lips_d, aa), p["lip"])
    inner = torch.maximum(vm.abs() - p["mouth_open"] * lens - 0.25 * p["mouth_thick"] * lens, (uu.abs() - 0.92) * mw)
    _over(img, _soft(inner, aa), p["lip"] * 0.3)

    # glasses: two rims and a bridge
    gs = p["glasses_s"]
    gw, gh = p["eye_w"] * gs, p["eye_w"] * gs * 0.72
    rim = _ellipse(ue, ve + 0.005, gw, gh, gh).abs() - p["glasses_thick"]
    bridge = torch.maximum((ve + 0.01).abs() - p["glasses_thick"] * 0.8, um.abs() - (p["eye_dx"] - gw * 0.9))
    _over(img, _soft(torch.minimum(rim, bridge), aa) * p["glasses"], p["frame"])

    # lighting: brightness, a directional gradient and a colour tint
    light = p["brightness"] * (1.0 + X * p["light_x"] + Y * p["light_y"])
    img.mul_(light).mul_(p["tint"])
    # pixel noise: one bank field per image, cyclically shifted
    S2 = S * S
    xi = (torch.arange(S, dtype=torch.float32).view(1, 1, S) + p["noise_dx"]).remainder(S)
    yi = (torch.arange(S, dtype=torch.float32).view(1, S, 1) + p["noise_dy"]).remainder(S)
    idx = (yi * S + xi).long().view(B, 1, S2).expand(B, 3, S2)
    noise = bank[p["noise_k"].view(B).long()].gather(2, idx).view(B, 3, S, S).transpose(0, 1)
    img.add_(noise * p["noise_sigma"])
    return img.mul_(255.0).round_().clamp_(0.0, 255.0).to(torch.uint8).transpose(0, 1)
