"""Deterministic model inputs."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

__all__ = ["sample_input"]


def sample_input(
    shape: Sequence[int],
    seed: int = 0,
    *,
    dtype: torch.dtype = torch.float32,
    device: Any = "cpu",
    distribution: str = "normal",
) -> torch.Tensor:
    """A deterministic input: the same values on every machine for the same torch version.

    Drawn on the CPU from a generator of its own (the global RNG is not touched), then moved to
    ``device`` and cast to ``dtype``, so CPU and GPU runs see the same numbers.

    Args:
        shape: e.g. ``(2, 3, 224, 224)``.
        seed: the generator's seed.
        distribution: ``"normal"`` (mean 0, std 1) or ``"uniform"`` (0 to 1).

    Example:
        >>> cap = featcheck.capture(model, featcheck.sample_input((2, 3, 224, 224)))
    """
    shape = tuple(shape)
    if not shape or not all(isinstance(s, int) and s > 0 for s in shape):
        raise ValueError(f"shape must be a non-empty sequence of positive ints, got {shape!r}")
    g = torch.Generator(device="cpu").manual_seed(int(seed))
    if distribution == "normal":
        x = torch.randn(shape, generator=g, dtype=torch.float32)
    elif distribution == "uniform":
        x = torch.rand(shape, generator=g, dtype=torch.float32)
    else:
        raise ValueError(f"distribution must be 'normal' or 'uniform', got {distribution!r}")
    return x.to(device=device, dtype=dtype)
