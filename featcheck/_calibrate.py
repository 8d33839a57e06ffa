"""Set BatchNorm running statistics from data, for random-weight models checked in CI."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, cast

import torch
from torch import nn
from torch.nn.parameter import is_lazy

from ._capture import unwrap

__all__ = ["calibrate_batchnorm"]

_STATE = ("running_mean", "running_var", "num_batches_tracked")


def _check_batch(batch: Any, where: str) -> None:
    if not isinstance(batch, (torch.Tensor, tuple, list, dict)):
        raise TypeError(
            f"{where} must be a tensor, a tuple/list of positional arguments or a dict of keyword "
            f"arguments for the model, got {type(batch).__name__}; the model was left as it was"
        )


def _call(model: nn.Module, batch: Any) -> None:
    if isinstance(batch, torch.Tensor):
        model(batch)
    elif isinstance(batch, (tuple, list)):
        model(*batch)
    else:
        model(**batch)


def _fresh(bn: nn.modules.batchnorm._BatchNorm) -> dict[str, torch.Tensor]:
    """New buffers holding what ``reset_running_stats`` would write, so that the user's own
    buffers are neither written nor lost while calibrating."""
    return {
        "running_mean": torch.zeros_like(bn.running_mean),
        "running_var": torch.ones_like(bn.running_var),
        "num_batches_tracked": torch.zeros_like(bn.num_batches_tracked),
    }


@torch.no_grad()
def calibrate_batchnorm(model: nn.Module, batches: Any) -> nn.Module:
    """Replace every BatchNorm layer's running statistics with those of ``batches``.

    This changes the model's buffers on purpose: a freshly initialised model keeps BatchNorm's
    default running statistics (mean 0, variance 1), and in eval mode on real-looking input many
    of its ReLU channels really are dead. Teams that check architectures with random weights
    calibrate first, so that the checks see the network as it would be after a little training.

    Each BatchNorm layer's statistics are recomputed as the cumulative average over all batches
    (``momentum=None``, from reset statistics), with every other module in eval mode (no
    dropout). The modules' ``training`` flags and momenta are restored afterwards; the parameters
    are not touched. The statistics are gathered in new tensors and copied into the model's own
    buffers only once every batch has gone through, and only where they differ: when anything
    fails (no batches, a batch of the wrong type or shape) the model is left bitwise as it was,
    and an autograd graph that uses the buffers stays valid.

    Args:
        model: the model (wrappers such as ``torch.compile`` are unwrapped).
        batches: one tensor, or an iterable of batches; a batch is a tensor, a tuple of
            positional arguments, or a dict of keyword arguments.

    Returns:
        The model, for chaining.

    Raises:
        TypeError: ``batches`` or one of its batches has the wrong type.
        ValueError: there were no batches, a BatchNorm layer does not track running statistics,
            or a lazy BatchNorm layer is not initialised yet.

    Example:
        >>> featcheck.calibrate_batchnorm(model, [torch.randn(16, 3, 224, 224) for _ in range(4)])
    """
    eager, _ = unwrap(model)
    if isinstance(batches, (torch.Tensor, dict)):
        batches = [batches]
    elif isinstance(batches, (str, bytes)) or not isinstance(batches, Iterable):
        raise TypeError(
            "batches must be a tensor, a dict of keyword arguments, or an iterable of batches, "
            f"got {type(batches).__name__}"
        )
    if isinstance(batches, Sequence):
        for i, batch in enumerate(batches):
            _check_batch(batch, f"batches[{i}]")
        if not batches:
            raise ValueError("calibrate_batchnorm got no batches; pass a batch or a non-empty iterable")
    bns = [m for m in eager.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not bns:
        return model
    if not all(m.track_running_stats for m in bns):
        raise ValueError("calibrate_batchnorm needs BatchNorm layers that track running statistics")
    if any(is_lazy(m.running_mean) for m in bns):
        raise ValueError(
            "calibrate_batchnorm found an uninitialised lazy BatchNorm layer; run one forward "
            "pass first so that it knows its number of channels"
        )
    own = {bn: {k: cast(torch.Tensor, bn._buffers[k]) for k in _STATE} for bn in bns}
    modes = [(m, m.training) for m in eager.modules()]
    momenta = [(m, m.momentum) for m in bns]
    seen = 0
    try:
        eager.eval()
        for bn in bns:
            bn._buffers.update(_fresh(bn))
            bn.momentum = None
            bn.train()
        for batch in batches:
            _check_batch(batch, f"batch {seen}")
            _call(eager, batch)
            seen += 1
        computed = {bn: {k: cast(torch.Tensor, bn._buffers[k]) for k in _STATE} for bn in bns}
    finally:
        # The user's tensors go back in place (never a copy), whatever happened above.
        for bn, buffers in own.items():
            bn._buffers.update(buffers)
        for module, mode in modes:
            module.training = mode
        for bn, momentum in momenta:
            bn.momentum = momentum
    if seen == 0:
        raise ValueError(
            "calibrate_batchnorm got no batches (an empty iterable or an exhausted generator); "
            "the model was left as it was"
        )
    for bn, buffers in computed.items():
        for k, new in buffers.items():
            old = own[bn][k]
            # Writing equal values would still bump the version counter and break a graph.
            if not torch.equal(old, new):
                with torch.inference_mode(old.is_inference()):
                    old.copy_(new)
    return model
