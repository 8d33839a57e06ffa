"""Kernel grids: the weights of a convolution as tiles."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from PIL import Image

from . import _args
from ._draw import _arrange, _captioned, _fmt_shape, _lut, _scale_for, _tile


def _check_kernels(
    conv_or_weight: Any, *, max_out: Any, max_in: Any, groups: Any, cmap: Any, min_tile: Any, title: Any,
    module_ok: bool = False, **_flags: Any,
) -> None:
    """Every check ``kernel_grid`` makes before drawing. ``module_ok``: any module will do (the
    fixture finds the convolutions inside it)."""
    _args._int(max_out, "max_out")
    _args._int(max_in, "max_in")
    _args._int(groups, "groups", none="the module's own, 1 for a tensor")
    _args._cmap(cmap)
    _args._int(min_tile, "min_tile")
    _args._title(title)
    if isinstance(conv_or_weight, torch.nn.Module) and module_ok:
        return
    w, g, _ = _weight(conv_or_weight)
    g = groups or g
    if w.layout != torch.strided or w.is_complex():
        raise TypeError(f"kernel_grid draws dense real weights, got a {w.layout} {w.dtype} tensor")
    if not 2 <= w.ndim <= 5:
        raise ValueError(f"kernel_grid expects a weight of rank 2 to 5 ([out, in/groups, *kernel]), got shape {tuple(w.shape)}")
    if w.numel() == 0:
        raise ValueError(f"kernel_grid got an empty weight (shape {tuple(w.shape)}): nothing to draw")
    if w.shape[0] % g:
        raise ValueError(f"groups={g} does not divide the weight's {w.shape[0]} output channels")


def _weight(conv_or_weight: Any) -> tuple[torch.Tensor, int, str]:
    if isinstance(conv_or_weight, torch.nn.Module):
        w = getattr(conv_or_weight, "weight", None)
        if not isinstance(w, torch.Tensor):
            raise TypeError(
                f"{type(conv_or_weight).__name__} has no weight tensor to draw; pass a convolution "
                "(e.g. model.conv1) or its weight"
            )
        return w.detach(), int(getattr(conv_or_weight, "groups", 1)), type(conv_or_weight).__name__
    if isinstance(conv_or_weight, torch.Tensor):
        return conv_or_weight.detach(), 1, "weight"
    raise TypeError(f"kernel_grid expects a convolution module or a weight tensor, got {type(conv_or_weight).__name__}")


@torch.no_grad()
def kernel_grid(
    conv_or_weight: Any,
    *,
    max_out: int = 16,
    max_in: int = 16,
    groups: int | None = None,
    cmap: str = "RdBu_r",
    min_tile: int = 24,
    caption: bool = True,
    title: str | None = None,
) -> Image.Image:
    """The kernels of a convolution.

    First-layer kernels with 3 input channels are drawn as RGB tiles, one per filter, each scaled
    symmetrically so that zero is mid-grey. Other convolutions are an out x in grid of tiles in a
    diverging colormap centred at zero with one scale for the layer (capped at ``max_out`` x
    ``max_in``, saying so). Depthwise convolutions (one input per filter) are one tile per filter.

    Args:
        conv_or_weight: a ``Conv1d/2d/3d`` (or any module with a ``weight``) or a weight tensor
            ``[out, in/groups, *kernel]``.
        max_out: at most this many filters (rows).
        max_in: at most this many inputs per filter (columns).
        groups: the convolution's groups for a bare weight tensor (a module states its own).
        cmap: a matplotlib colormap name, diverging for signed weights.
        min_tile: kernels smaller than this many pixels are upscaled (nearest neighbour).
        caption: a caption with the layer, the weight's shape and what is shown.
        title: the name to state (default: the module's class name).

    Raises:
        TypeError, ValueError: for arguments it cannot draw, before any work.
    """
    _check_kernels(conv_or_weight, max_out=max_out, max_in=max_in, groups=groups, cmap=cmap, min_tile=min_tile, title=title)
    w, mod_groups, kind = _weight(conv_or_weight)
    g = groups or mod_groups
    w = w.float()
    if w.ndim == 2:
        w = w[:, :, None, None]
    elif w.ndim == 3:
        w = w[:, :, None, :]
    elif w.ndim == 5:
        w = w[:, :, w.shape[2] // 2]
    out_c, in_c = w.shape[:2]
    notes = [f"groups={g}"] if g > 1 else []
    if in_c == 3 and g == 1:
        k = min(out_c, max_out)
        sel = w[:k]
        scale = sel.abs().amax((1, 2, 3), keepdim=True).clamp_min(1e-12)
        grey_at_zero = ((sel / scale) * 127.5 + 127.5).round().clamp(0, 255).to(torch.uint8)
        rgb = grey_at_zero.permute(0, 2, 3, 1).cpu().numpy()  # [k, kh, kw, 3]
        up_y, up_x, _, _ = _scale_for(rgb.shape[1], rgb.shape[2], min_tile, 1 << 30)
        body = _arrange(rgb.repeat(up_y, 1).repeat(up_x, 2), ncols=None, frames={}, labels=None)
        desc = f"RGB per filter, scaled so 0 is grey; {k} of {out_c} filters" if k < out_c else f"RGB per filter, scaled so 0 is grey; {out_c} filters"
    else:
        m = float(w.abs().amax().clamp_min(1e-12))
        if in_c == 1:
            k = min(out_c, max_out * max_in)
            tiles = w[:k, 0]
            ncols = None
            desc = f"{k} of {out_c} filters" if k < out_c else f"{out_c} filters"
        else:
            ko, ki = min(out_c, max_out), min(in_c, max_in)
            tiles = w[:ko, :ki].reshape(ko * ki, *w.shape[2:])
            ncols = ki
            desc = f"rows: {ko} of {out_c} filters, columns: {ki} of {in_c} inputs per group"
        q = ((tiles / m) * 127.5 + 127.5).round().clamp(0, 255).to(torch.uint8).cpu().numpy()
        body = _tile(q, np.zeros(q.shape, bool), _lut(cmap), scale=_scale_for(q.shape[1], q.shape[2], min_tile, 1 << 30),
                     ncols=ncols, frames={}, labels=None)
        desc += f"; {cmap} centred at 0, |w| <= {m:.3g}"
    if not caption:
        return Image.fromarray(body)
    lines = [f"{title or kind}  weight {_fmt_shape(tuple(w.shape))}", desc + "".join(f"; {n}" for n in notes)]
    return _captioned(body, lines)
