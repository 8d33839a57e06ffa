"""Set BatchNorm running statistics from data, for random-weight models checked in CI."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from ._capture import unwrap

__all__ = ["calibrate_batchnorm"]


def _call(model: nn.Module, batch: Any) -> None:
    if isinstance(batch, torch.Tensor):
        model(batch)
    elif isinstance(batch, (tuple, list)):
        model(*batch)
    elif isinstance(batch, dict):
        model(**batch)
    else:
        raise TypeError(
            "each batch must be a tensor, a tuple/list of positional arguments or a dict of "
            f"keyword arguments for the model, got {type(batch).__name__}"
        )


@torch.no_grad()
def calibrate_batchnorm(model: nn.Module, batches: Any) -> nn.Module:
    """Replace every BatchNorm layer's running statistics with those of ``batches``.

    This changes the model's buffers on purpose: a freshly initialised model keeps BatchNorm's
    default running statistics (mean 0, variance 1), and in eval mode on real-looking input many
    of its ReLU channels really are dead. Teams that check architectures with random weights
    calibrate first, so that the checks see the network as it would be after a little training.

    Each BatchNorm layer's statistics are reset and recomputed as the cumulative average over all
    batches (``momentum=None``), with every other module in eval mode (no dropout). The modules'
    ``training`` flags and momenta are restored afterwards; the parameters are not touched.

    Args:
        model: the model (wrappers such as ``torch.compile`` are unwrapped).
        batches: one tensor, or an iterable of batches; a batch is a tensor, a tuple of
            positional arguments, or a dict of keyword arguments.

    Returns:
        The model, for chaining.

    Example:
        >>> featcheck.calibrate_batchnorm(model, [torch.randn(16, 3, 224, 224) for _ in range(4)])
    """
    eager, _ = unwrap(model)
    bns = [m for m in eager.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not bns:
        return model
    if not all(m.track_running_stats for m in bns):
        raise ValueError("calibrate_batchnorm needs BatchNorm layers that track running statistics")
    if isinstance(batches, (torch.Tensor, dict)):
        batches = [batches]
    elif not isinstance(batches, Iterable):
        raise TypeError(
            f"batches must be a tensor or an iterable of batches, got {type(batches).__name__}"
        )
    modes = [(m, m.training) for m in eager.modules()]
    momenta = [(m, m.momentum) for m in bns]
    seen = 0
    try:
        eager.eval()
        for m in bns:
            m.reset_running_stats()
            m.momentum = None
            m.train()
        for batch in batches:
            _call(eager, batch)
            seen += 1
    finally:
        for module, mode in modes:
            module.training = mode
        for bn, momentum in momenta:
            bn.momentum = momentum
    if seen == 0:
        raise ValueError("calibrate_batchnorm got no batches; pass a batch or a non-empty iterable")
    return model
