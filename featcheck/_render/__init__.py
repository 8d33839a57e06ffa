"""Pictures: channel grids, kernel grids, PCA composites and heatmaps.

One module per concern: ``_draw`` (colormap lookup, fonts, captions, tiling, frames), ``_maps``
(captures and tensors as channel-first 2-D maps: the layout rules), ``_args`` (argument checks),
``_grid`` (channel grids, per-channel files), ``_kernels``, ``_pca``, ``_heatmap`` and ``_images``
(image files and tensors). Every renderer checks its arguments before touching data, and costs
follow the picture, not the input: big maps are subsampled before they are normalised.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import Any

from ._draw import BACKGROUND, MARK_COLOURS, NONFINITE_PIXEL, _lut
from ._gradflow import gradient_flow
from ._grid import _check_grid, channel_grid, save_channels
from ._heatmap import heatmap
from ._images import IMAGENET_MEAN, IMAGENET_STD, load_image, to_image
from ._kernels import _check_kernels, kernel_grid
from ._pca import pca_rgb

__all__ = [
    "channel_grid",
    "check_options",
    "gradient_flow",
    "heatmap",
    "kernel_grid",
    "load_image",
    "pca_rgb",
    "save_channels",
    "to_image",
]

_CHECKS = {"channel_grid": (channel_grid, _check_grid), "kernel_grid": (kernel_grid, _check_kernels)}


def check_options(renderer: str, x: Any, options: Mapping[str, Any]) -> None:
    """Raise the ``TypeError`` / ``ValueError`` that ``renderer`` would raise for ``x`` and
    ``options``, without rendering: the fixture calls it at ``show`` / ``show_kernels`` so that a
    bad argument fails at the test's own line, not in the report hook.

    Args:
        renderer: ``"channel_grid"`` or ``"kernel_grid"``.
        x: what ``show`` was given: a Capture (every record is checked), a LayerCapture or a
            tensor for ``channel_grid``; a module (the convolutions inside it are drawn) or a
            weight tensor for ``kernel_grid``.
        options: the renderer's keyword options (``title`` included).
    """
    if renderer not in _CHECKS:
        raise ValueError(f"renderer must be one of {tuple(_CHECKS)}, got {renderer!r}")
    if not isinstance(options, Mapping):
        raise TypeError(f"options must be a mapping of keyword options, got {type(options).__name__}")
    fn, check = _CHECKS[renderer]
    params = {n: p.default for n, p in list(inspect.signature(fn).parameters.items())[1:] if not n.startswith("_")}
    unknown = sorted(set(options) - set(params))
    if unknown:
        raise TypeError(f"unknown option(s) {', '.join(map(repr, unknown))} for {renderer}; known: {', '.join(params)}")
    check(x, **{**params, **options}, **({"capture_ok": True} if renderer == "channel_grid" else {"module_ok": True}))
