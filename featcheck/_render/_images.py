"""Image files and tensors: loading a photo as a model input, and an input back to a picture."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from . import _args

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _check_mean_std(mean: Any, std: Any) -> None:
    for name, v in (("mean", mean), ("std", std)):
        if v is None:
            continue
        if isinstance(v, (str, bytes)) or not isinstance(v, Sequence) or len(v) != 3 or not all(map(_args._is_number, v)):
            raise TypeError(f"{name} must be three numbers (one per RGB channel) or None, got {v!r}")
    if std is not None and any(float(s) == 0 for s in std):
        raise ValueError(f"std must not hold 0, got {std!r}")


def load_image(
    path: str | Path,
    size: int | None = 224,
    mean: Sequence[float] | None = IMAGENET_MEAN,
    std: Sequence[float] | None = IMAGENET_STD,
) -> torch.Tensor:
    """An image file as a normalised ``[1, 3, size, size]`` batch.

    The shorter side is resized to ``size`` and the centre cropped square (``size=None`` keeps the
    image as it is); values are scaled to 0..1 and normalised with ``mean`` / ``std`` (ImageNet's
    by default; ``None`` for none).

    Raises:
        FileNotFoundError: no file at ``path``.
        ValueError: the file is not an image Pillow can read, or ``size`` is below 1.
    """
    if not isinstance(path, (str, Path)):
        raise TypeError(f"path must be a str or a Path to an image file, got {type(path).__name__}: {path!r}")
    _args._int(size, "size", none="keep the image's size")
    _check_mean_std(mean, std)
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no image file at {path}")
    try:
        with Image.open(path) as opened:
            im = opened.convert("RGB")
    except (UnidentifiedImageError, OSError) as e:
        raise ValueError(f"{path} is not an image file Pillow can read (PNG, JPEG, ...): {e}") from None
    if size is not None:
        w, h = im.size
        s = size / min(w, h)
        im = im.resize((max(size, round(w * s)), max(size, round(h * s))), Image.Resampling.BILINEAR)
        w, h = im.size
        left, top = (w - size) // 2, (h - size) // 2
        im = im.crop((left, top, left + size, top + size))
    t = torch.from_numpy(np.asarray(im, dtype=np.float32) / 255.0).permute(2, 0, 1)
    if mean is not None and std is not None:
        t = (t - torch.tensor(mean)[:, None, None]) / torch.tensor(std)[:, None, None]
    return t.unsqueeze(0).contiguous()


def to_image(
    t: torch.Tensor,
    mean: Sequence[float] | None = IMAGENET_MEAN,
    std: Sequence[float] | None = IMAGENET_STD,
) -> Image.Image:
    """A normalised ``[3, H, W]`` tensor (or one channel, ``[1, H, W]``; of a batch
    ``[N, 3, H, W]``, the first sample) back to a displayable RGB image."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"to_image expects a tensor [3, H, W] or [1, 3, H, W], got {type(t).__name__}")
    _check_mean_std(mean, std)
    if t.layout != torch.strided or t.is_complex():
        raise TypeError(f"to_image expects a dense real tensor, got a {t.layout} {t.dtype} tensor")
    x = t.detach().float().cpu()
    if x.ndim == 4 and x.shape[0] >= 1:
        x = x[0]
    if x.ndim != 3 or x.shape[0] not in (1, 3) or x.numel() == 0:
        raise ValueError(
            f"to_image expects [3, H, W] or [1, 3, H, W] (or one channel, [1, H, W]), got shape {tuple(t.shape)}; "
            "(a batch [N, 3, H, W] gives its first sample)"
        )
    if mean is not None and std is not None and x.shape[0] == 3:
        x = x * torch.tensor(std)[:, None, None] + torch.tensor(mean)[:, None, None]
    a = (x.clamp(0, 1) * 255 + 0.5).to(torch.uint8).permute(1, 2, 0).numpy()
    return Image.fromarray(np.repeat(a, 3, 2) if a.shape[2] == 1 else a)
