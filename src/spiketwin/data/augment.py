"""Image augmentations on tensors (no torchvision): batched, per-sample random, reproducible with a generator.

Every augmentation is called as ``aug(x, generator=None)`` on ``[B, C, H, W]`` (or one ``[C, H, W]`` image,
or event frames ``[B, T, C, H, W]``) and draws its random numbers per sample from ``generator`` (a
``torch.Generator``; the global one when None), so the same seed gives the same batch. Random numbers are
drawn on the generator's device and moved to the input's. The colour ops (brightness, contrast, solarize,
posterize, equalize) expect values in ``[0, 1]``; the geometric ones take any values (event counts too).
:func:`spikformer_cifar_augmentation` and :func:`spikformer_dvs_augmentation` build the official Spikformer
recipes from these parts.

The functional ops below take a per-sample ``amount`` ``[B]``; an amount of 0 is the identity for each.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
Fill = float | Sequence[float]  # value outside the image for geometric ops: one, or one per channel


def _rand(shape, generator: torch.Generator | None, device: torch.device, normal: bool = False) -> torch.Tensor:
    """float32 uniform [0, 1) (or standard normal) numbers drawn on the generator's device, moved to ``device``."""
    source = generator.device if generator is not None else device
    draw = torch.randn if normal else torch.rand
    return draw(shape, generator=generator, device=source).to(device)


def _per_sample(amount: torch.Tensor) -> torch.Tensor:
    return amount.reshape(-1, 1, 1, 1)


# ---- functional ops: x [B, C, H, W] in [0, 1], amount [B] ------------------------------------------------

def brightness(x: torch.Tensor, amount: torch.Tensor) -> torch.Tensor:
    """Scale intensities by ``1 + amount`` (blend with black)."""
    return (x * (1 + _per_sample(amount))).clamp(0, 1)


def contrast(x: torch.Tensor, amount: torch.Tensor) -> torch.Tensor:
    """Blend with each image's mean grey level by factor ``1 + amount``."""
    if x.shape[1] == 3:
        grey = (x * x.new_tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)).sum(1, keepdim=True)
    else:
        grey = x.mean(1, keepdim=True)
    mean = grey.mean((2, 3), keepdim=True)
    return (mean + (x - mean) * (1 + _per_sample(amount))).clamp(0, 1)


def solarize(x: torch.Tensor, amount: torch.Tensor) -> torch.Tensor:
    """Invert the pixels above ``1 - amount``."""
    return torch.where(x > 1 - _per_sample(amount), 1 - x, x)


def posterize(x: torch.Tensor, amount: torch.Tensor) -> torch.Tensor:
    """Drop the ``round(amount)`` lowest of the 8 bits of each value (``amount`` in [0, 8))."""
    drop = _per_sample(amount).round().long()
    q = (x * 255).round().long()
    out = ((q >> drop) << drop).to(x.dtype) / 255
    return torch.where(drop == 0, x, out)


def equalize(x: torch.Tensor, amount: torch.Tensor) -> torch.Tensor:
    """Blend each channel toward its histogram-equalised version (256 bins) by ``amount`` in [0, 1]."""
    b, c, h, w = x.shape
    q = (x * 255).round().long().clamp(0, 255).reshape(b * c, h * w)
    hist = torch.zeros(b * c, 256, device=x.device, dtype=x.dtype)
    hist.scatter_add_(1, q, torch.ones(q.shape, device=x.device, dtype=x.dtype))
    cdf = hist.cumsum(1)
    cdf_min = cdf.gather(1, q.min(1, keepdim=True).values)
    span = h * w - cdf_min
    eq = ((cdf.gather(1, q) - cdf_min) / span.clamp(min=1)).reshape(b, c, h, w)
    eq = torch.where((span > 0).reshape(b, c, 1, 1), eq, x)  # a constant channel stays as it is
    return x + _per_sample(amount) * (eq - x)


def affine(x: torch.Tensor, matrix: torch.Tensor, shift: torch.Tensor, fill: Fill = 0.5,
           mode: str = "bilinear") -> torch.Tensor:
    """Resample ``x`` at ``matrix @ p + shift`` for each output point ``p`` in normalised [-1, 1] coordinates
    (``matrix`` ``[B, 2, 2]``, ``shift`` ``[B, 2]``) with ``mode`` ``"bilinear"`` or ``"nearest"``; outside
    the image ``fill`` (one value, or one per channel)."""
    theta = torch.cat([matrix, shift.unsqueeze(-1)], -1).to(x.dtype)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    fill = torch.as_tensor(fill, dtype=x.dtype, device=x.device).reshape(1, -1, 1, 1)
    return F.grid_sample(x - fill, grid, mode=mode, padding_mode="zeros", align_corners=False) + fill


def _eye(x: torch.Tensor) -> torch.Tensor:
    return torch.eye(2, device=x.device, dtype=x.dtype).expand(x.shape[0], 2, 2).clone()


def rotate(x: torch.Tensor, amount: torch.Tensor, fill: Fill = 0.5, mode: str = "bilinear") -> torch.Tensor:
    """Rotate counter-clockwise by ``amount`` degrees about the centre."""
    h, w = x.shape[-2:]
    rad = amount.to(x.dtype) * (math.pi / 180)
    cos, sin = rad.cos(), rad.sin()
    matrix = torch.stack([torch.stack([cos, -sin * h / w], -1), torch.stack([sin * w / h, cos], -1)], -2)
    return affine(x, matrix, torch.zeros_like(matrix[:, 0]), fill, mode)


def shear_x(x: torch.Tensor, amount: torch.Tensor, fill: Fill = 0.5, mode: str = "bilinear") -> torch.Tensor:
    """Shear along x: the column shifts by ``amount`` pixels per row from the centre."""
    h, w = x.shape[-2:]
    matrix = _eye(x)
    matrix[:, 0, 1] = amount.to(x.dtype) * h / w
    return affine(x, matrix, torch.zeros_like(matrix[:, 0]), fill, mode)


def shear_y(x: torch.Tensor, amount: torch.Tensor, fill: Fill = 0.5, mode: str = "bilinear") -> torch.Tensor:
    """Shear along y: the row shifts by ``amount`` pixels per column from the centre."""
    h, w = x.shape[-2:]
    matrix = _eye(x)
    matrix[:, 1, 0] = amount.to(x.dtype) * w / h
    return affine(x, matrix, torch.zeros_like(matrix[:, 0]), fill, mode)


def translate_x(x: torch.Tensor, amount: torch.Tensor, fill: Fill = 0.5, mode: str = "bilinear") -> torch.Tensor:
    """Move the content right by ``amount`` times the width."""
    shift = torch.stack([-2 * amount.to(x.dtype), torch.zeros_like(amount, dtype=x.dtype)], -1)
    return affine(x, _eye(x), shift, fill, mode)


def translate_y(x: torch.Tensor, amount: torch.Tensor, fill: Fill = 0.5, mode: str = "bilinear") -> torch.Tensor:
    """Move the content down by ``amount`` times the height."""
    shift = torch.stack([torch.zeros_like(amount, dtype=x.dtype), -2 * amount.to(x.dtype)], -1)
    return affine(x, _eye(x), shift, fill, mode)


def _identity(x: torch.Tensor, amount: torch.Tensor) -> torch.Tensor:
    return x


# name -> (op, amount at magnitude 10, random sign, geometric (takes fill and interpolation)). Ranges follow
# timm's RandAugment ("inc" variants) and torchvision's: magnitude m in [0, 10] gives amount m / 10 * max.
RAND_AUGMENT_OPS: dict[str, tuple[Callable, float, bool, bool]] = {
    "identity": (_identity, 0.0, False, False),
    "brightness": (brightness, 0.9, True, False),
    "contrast": (contrast, 0.9, True, False),
    "rotate": (rotate, 30.0, True, True),
    "shear_x": (shear_x, 0.3, True, True),
    "shear_y": (shear_y, 0.3, True, True),
    "translate_x": (translate_x, 0.45, True, True),
    "translate_y": (translate_y, 0.45, True, True),
    "solarize": (solarize, 1.0, False, False),
    "posterize": (posterize, 4.0, False, False),
    "equalize": (equalize, 1.0, False, False),
}


# ---- augmentation objects ----------------------------------------------------------------------------

class Augmentation:
    """Base: accepts ``[B, C, H, W]``, one ``[C, H, W]`` image, or event frames ``[B, T, C, H, W]`` (seen as
    ``[B, T*C, H, W]``, so every frame of a sample gets the same transform) and calls ``apply`` on the batch."""

    def __call__(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        if x.dim() == 3:
            return self.apply(x.unsqueeze(0), generator)[0]
        if x.dim() == 4:
            return self.apply(x, generator)
        if x.dim() == 5:
            return self.apply(x.flatten(1, 2), generator).unflatten(1, x.shape[1:3])
        raise ValueError(f"{type(self).__name__}: expected [B, C, H, W], [C, H, W] or [B, T, C, H, W], "
                         f"got {tuple(x.shape)}")

    def apply(self, x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        raise NotImplementedError


class Compose(Augmentation):
    """Apply augmentations in order, all drawing from the same generator."""

    def __init__(self, augmentations: Sequence[Callable]):
        self.augmentations = list(augmentations)

    def apply(self, x, generator):
        for aug in self.augmentations:
            x = aug(x, generator)
        return x


class RandomHorizontalFlip(Augmentation):
    """Mirror each sample left-right with probability ``p``."""

    def __init__(self, p: float = 0.5):
        self.p = p

    def apply(self, x, generator):
        flip = _rand(x.shape[0], generator, x.device) < self.p
        return torch.where(flip.view(-1, 1, 1, 1), x.flip(-1), x)


class RandomCrop(Augmentation):
    """Pad by ``padding`` pixels of ``fill`` on every side, then cut a random ``size`` window per sample."""

    def __init__(self, size: int | tuple[int, int], padding: int = 4, fill: float = 0.0):
        self.size = (size, size) if isinstance(size, int) else tuple(size)
        self.padding = padding
        self.fill = fill

    def apply(self, x, generator):
        b, _, h, w = x.shape
        th, tw = self.size
        p = self.padding
        if th > h + 2 * p or tw > w + 2 * p:
            raise ValueError(f"RandomCrop: crop {self.size} is larger than the padded image {(h + 2 * p, w + 2 * p)}")
        padded = F.pad(x, (p, p, p, p), value=self.fill)
        top = (_rand(b, generator, x.device) * (h + 2 * p - th + 1)).long()
        left = (_rand(b, generator, x.device) * (w + 2 * p - tw + 1)).long()
        rows = (top[:, None] + torch.arange(th, device=x.device))[:, :, None]
        cols = (left[:, None] + torch.arange(tw, device=x.device))[:, None, :]
        batch = torch.arange(b, device=x.device)[:, None, None]
        return padded[batch, :, rows, cols].permute(0, 3, 1, 2).contiguous()  # [B, th, tw, C] -> [B, C, th, tw]


class RandAugment(Augmentation):
    """``num_ops`` rounds; in each, every sample picks one op of ``ops`` uniformly and applies it with
    probability ``p`` at magnitude ``magnitude`` (0..10, plus Gaussian noise of std ``magnitude_std`` per
    sample, clipped to [0, 10]; ``magnitude_std=inf`` draws it uniformly from [0, magnitude], as timm) with a
    random sign for signed ops. ``max_amounts`` overrides the amount at magnitude 10 of some ops (see
    ``RAND_AUGMENT_OPS``); ``fill`` and ``interpolation`` (``"bilinear"``/``"nearest"``) serve the geometric
    ops."""

    def __init__(self, num_ops: int = 2, magnitude: float = 9.0, magnitude_std: float = 0.0, p: float = 1.0,
                 ops: Sequence[str] = tuple(RAND_AUGMENT_OPS), fill: Fill = 0.5, interpolation: str = "bilinear",
                 max_amounts: dict[str, float] | None = None):
        unknown = [op for op in [*ops, *(max_amounts or {})] if op not in RAND_AUGMENT_OPS]
        if unknown or not ops:
            raise ValueError(f"RandAugment: unknown ops {unknown}; choose from {list(RAND_AUGMENT_OPS)}")
        if not 0 <= magnitude <= 10:
            raise ValueError(f"RandAugment: magnitude must be in [0, 10], got {magnitude}")
        if interpolation not in ("bilinear", "nearest"):
            raise ValueError(f"RandAugment: interpolation must be 'bilinear' or 'nearest', got {interpolation!r}")
        self.num_ops, self.magnitude, self.magnitude_std, self.p = num_ops, magnitude, magnitude_std, p
        self.ops = list(ops)
        self.fill, self.interpolation = fill, interpolation
        self.max_amounts = {name: RAND_AUGMENT_OPS[name][1] for name in self.ops} | (max_amounts or {})

    def apply(self, x, generator):
        b = x.shape[0]
        out = x.clone()
        for _ in range(self.num_ops):
            u = _rand((4, b), generator, x.device)
            choice = (u[0] * len(self.ops)).long().clamp(max=len(self.ops) - 1)
            active = u[1] < self.p
            sign = torch.where(u[2] < 0.5, -1.0, 1.0)
            magnitude = torch.full_like(u[3], float(self.magnitude))
            if math.isinf(self.magnitude_std):
                magnitude = magnitude * u[3]
            elif self.magnitude_std > 0:
                magnitude = (magnitude + self.magnitude_std * _rand(b, generator, x.device, normal=True)).clamp(0, 10)
            for k, name in enumerate(self.ops):
                idx = ((choice == k) & active).nonzero().squeeze(1)
                if idx.numel() == 0:
                    continue
                op, _, signed, geometric = RAND_AUGMENT_OPS[name]
                amount = magnitude[idx] / 10 * self.max_amounts[name] * (sign[idx] if signed else 1)
                args = (self.fill, self.interpolation) if geometric else ()
                out[idx] = op(out[idx], amount.to(x.dtype), *args)
        return out


class RandomErasing(Augmentation):
    """With probability ``p`` per sample, replace a random rectangle (area ``scale`` of the image, aspect
    ``ratio``, up to ``attempts`` draws to fit) by ``value``: a number, or ``"normal"`` for N(0, 1) noise per
    pixel (timm's "pixel" mode, for normalised inputs)."""

    def __init__(self, p: float = 0.25, scale: tuple[float, float] = (0.02, 1 / 3),
                 ratio: tuple[float, float] = (0.3, 3.3), value: float | str = 0.0, attempts: int = 10):
        if isinstance(value, str) and value != "normal":
            raise ValueError(f"RandomErasing: value must be a number or 'normal', got {value!r}")
        self.p, self.scale, self.ratio, self.value, self.attempts = p, scale, ratio, value, attempts

    def apply(self, x, generator):
        b, _, h, w = x.shape
        u = _rand((3, b, self.attempts), generator, x.device)
        area = h * w * (self.scale[0] + (self.scale[1] - self.scale[0]) * u[0])
        log_lo, log_hi = math.log(self.ratio[0]), math.log(self.ratio[1])
        aspect = torch.exp(log_lo + (log_hi - log_lo) * u[1])
        eh = (area * aspect).sqrt().round().long()
        ew = (area / aspect).sqrt().round().long()
        fits = (eh < h) & (ew < w)
        first = fits.int().argmax(1, keepdim=True)  # first attempt that fits
        eh, ew = eh.gather(1, first)[:, 0], ew.gather(1, first)[:, 0]
        erase = (u[2, :, 0] < self.p) & fits.any(1)
        pos = _rand((2, b), generator, x.device)
        top = (pos[0] * (h - eh + 1)).long()
        left = (pos[1] * (w - ew + 1)).long()
        r = torch.arange(h, device=x.device)
        c = torch.arange(w, device=x.device)
        in_rows = (r >= top[:, None]) & (r < (top + eh)[:, None])
        in_cols = (c >= left[:, None]) & (c < (left + ew)[:, None])
        mask = (in_rows[:, :, None] & in_cols[:, None, :] & erase[:, None, None]).unsqueeze(1)
        if self.value == "normal":
            fill = _rand(x.shape, generator, x.device, normal=True).to(x.dtype)
        else:
            fill = torch.full_like(x, float(self.value))
        return torch.where(mask, fill, x)


class Normalize(Augmentation):
    """``(x - mean) / std`` per channel (deterministic; here so that it can sit inside a ``Compose``)."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]):
        self.mean = torch.tensor(mean).view(1, -1, 1, 1)
        self.std = torch.tensor(std).view(1, -1, 1, 1)

    def apply(self, x, generator):
        if x.shape[1] != self.mean.shape[1]:
            raise ValueError(f"Normalize: {self.mean.shape[1]} channel statistics for {x.shape[1]} channels")
        return (x - self.mean.to(x)) / self.std.to(x)


SPIKFORMER_CIFAR_OPS = ("equalize", "rotate", "shear_x", "translate_x", "translate_y")


def spikformer_cifar_augmentation(mean: Sequence[float] = CIFAR10_MEAN, std: Sequence[float] = CIFAR10_STD) -> Compose:
    """The official Spikformer CIFAR training augmentation (``cifar10/cifar10.yml`` and ``aa_snn.py``):
    horizontal flip, RandAugment ``rand-m9-n1-mstd0.4-inc1`` over its reduced op set (equalize, rotate,
    shear x, translate x/y; each applied with probability 0.5; fill = the mean colour), normalise, random
    erasing with probability 0.25 and value 0 (timm's "const" mode, after normalisation). Its random resized
    crop has scale and ratio 1, i.e. none on 32x32 images. Evaluation uses ``Normalize(mean, std)`` alone."""
    return Compose([RandomHorizontalFlip(),
                    RandAugment(num_ops=1, magnitude=9, magnitude_std=0.4, p=0.5, ops=SPIKFORMER_CIFAR_OPS,
                                fill=mean),
                    Normalize(mean, std), RandomErasing(0.25, value=0.0)])


SPIKFORMER_DVS_OPS = ("identity", "shear_x", "translate_x", "translate_y", "rotate")


def spikformer_dvs_augmentation(size: int = 128) -> Compose:
    """The official Spikformer CIFAR10-DVS training augmentation (``cifar10dvs/train.py``: flip, then
    ``SNNAugmentWide`` from ``cifar10dvs/autoaugment.py``) for event frames ``[B, T, 2, size, size]``: one op
    per sample among identity, shear x (0.3), translate x / y (5 pixels), rotate (30 deg) at a uniform random
    magnitude and sign, nearest-neighbour, zero fill; the original's sixth choice, cutout (erasing with scale
    0.001-0.11, square), is applied here with probability 1/6 after the op instead of in place of one."""
    shift = 5 / size
    return Compose([RandomHorizontalFlip(),
                    RandAugment(num_ops=1, magnitude=10, magnitude_std=math.inf, ops=SPIKFORMER_DVS_OPS, fill=0.0,
                                interpolation="nearest", max_amounts={"translate_x": shift, "translate_y": shift}),
                    RandomErasing(1 / 6, scale=(0.001, 0.11), ratio=(1.0, 1.0), value=0.0)])
