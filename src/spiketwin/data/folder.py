"""ImageNet-style class folders (``root/<class>/<image>``) decoded with Pillow into tensors."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from ..extras import require

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".pgm", ".tif", ".tiff", ".webp")


def _pillow():
    return require("PIL.Image", "vision", "ImageFolder")


class ImageFolder(Dataset):
    """Images under ``root/<class>/`` (any depth below the class folder), classes sorted by name.

    Each item is ``(x, label)``: ``x`` ``[3, size, size]`` float in ``[0, 1]``, the RGB image resized so
    that its shorter side is ``resize`` pixels (default ``round(size / 0.875)``, the usual ImageNet
    evaluation ratio: 256 for 224) and centre-cropped to ``size``; ``transform`` (e.g. augmentations)
    is then applied to ``x``. Attributes: ``classes``, ``class_to_idx``, ``samples`` (path, label),
    ``targets``.
    """

    def __init__(self, root: str | Path, size: int | tuple[int, int] = 224, resize: int | None = None,
                 transform: Callable | None = None, extensions: tuple[str, ...] = IMAGE_EXTENSIONS):
        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(f"ImageFolder: folder {self.root} not found")
        self.size = (size, size) if isinstance(size, int) else tuple(size)
        self.resize = resize if resize is not None else round(min(self.size) / 0.875)
        if self.resize < min(self.size):
            raise ValueError(f"ImageFolder: resize {self.resize} is smaller than the crop {self.size}")
        self.transform = transform
        self.classes = sorted(d.name for d in self.root.iterdir() if d.is_dir() and not d.name.startswith("."))
        if not self.classes:
            raise FileNotFoundError(f"ImageFolder: {self.root} has no class sub-folders "
                                    f"(expected root/<class>/<image>)")
        self.class_to_idx = {c: i for i, c in enumerate(self.classes)}
        extensions = tuple(e.lower() for e in extensions)
        self.samples: list[tuple[Path, int]] = []
        for name in self.classes:
            for folder, dirs, files in os.walk(self.root / name):
                dirs.sort()
                self.samples += [(Path(folder) / f, self.class_to_idx[name]) for f in sorted(files)
                                 if f.lower().endswith(extensions)]
        if not self.samples:
            raise FileNotFoundError(f"ImageFolder: no images with extensions {extensions} under {self.root}")
        self.targets = [label for _, label in self.samples]

    def __len__(self) -> int:
        return len(self.samples)

    def load(self, path: Path) -> torch.Tensor:
        """Decode, resize (shorter side to ``resize``) and centre-crop one image: ``[3, H, W]`` in [0, 1]."""
        image_module = _pillow()
        try:
            with image_module.open(path) as image:
                image = image.convert("RGB")
        except (OSError, ValueError, SyntaxError) as e:
            raise ValueError(f"ImageFolder: cannot decode {path}: {e}") from e
        w, h = image.size
        scale = self.resize / min(w, h)
        image = image.resize((max(round(w * scale), self.size[1]), max(round(h * scale), self.size[0])),
                             image_module.Resampling.BILINEAR)
        w, h = image.size
        left, top = (w - self.size[1]) // 2, (h - self.size[0]) // 2
        image = image.crop((left, top, left + self.size[1], top + self.size[0]))
        return torch.from_numpy(np.asarray(image, dtype=np.uint8).copy()).permute(2, 0, 1).float().div_(255.0)

    def __getitem__(self, index: int):
        path, label = self.samples[index]
        x = self.load(path)
        if self.transform is not None:
            x = self.transform(x)
        return x, label
