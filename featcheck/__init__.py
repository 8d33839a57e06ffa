"""featcheck: inspect PyTorch models from inside, in pytest.

Importing ``featcheck`` is cheap: torch and the engine load on first use of a public name,
because the pytest plugin (``featcheck.plugin``) is loaded by every pytest run in an
environment, also by runs that never touch a model.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from ._errors import FeatcheckAssertionError, LayerNotFoundError

__all__ = [
    "Capture",
    "FeatcheckAssertionError",
    "LayerCapture",
    "LayerNotFoundError",
    "assert_batch_independent",
    "assert_finite",
    "assert_gradients_finite",
    "assert_gradients_flow",
    "assert_no_dead_channels",
    "assert_no_dead_gradients",
    "assert_not_saturated",
    "assert_params_receive_grad",
    "assert_same_activations",
    "assert_shapes",
    "assert_strides",
    "calibrate_batchnorm",
    "capture",
    "channel_grid",
    "gradient_flow",
    "compare",
    "diff_grid",
    "heatmap",
    "kernel_grid",
    "load_image",
    "pca_rgb",
    "sample_input",
    "save_channels",
    "to_image",
    "watch",
]

_LAZY = {
    "Capture": "._capture",
    "LayerCapture": "._capture",
    "capture": "._capture",
    "watch": "._capture",
    "assert_finite": "._checks",
    "assert_no_dead_channels": "._checks",
    "assert_not_saturated": "._checks",
    "assert_shapes": "._checks",
    "assert_strides": "._checks",
    "assert_batch_independent": "._gradchecks",
    "assert_gradients_finite": "._gradchecks",
    "assert_gradients_flow": "._gradchecks",
    "assert_no_dead_gradients": "._gradchecks",
    "assert_params_receive_grad": "._gradchecks",
    "gradient_flow": "._render._gradflow",
    "calibrate_batchnorm": "._calibrate",
    "assert_same_activations": "._compare",
    "compare": "._compare",
    "diff_grid": "._render._diff",
    "channel_grid": "._render._grid",
    "heatmap": "._render._heatmap",
    "kernel_grid": "._render._kernels",
    "load_image": "._render._images",
    "pca_rgb": "._render._pca",
    "sample_input": "._inputs",
    "save_channels": "._render._grid",
    "to_image": "._render._images",
}

if TYPE_CHECKING:
    from ._calibrate import calibrate_batchnorm
    from ._capture import Capture, LayerCapture, capture, watch
    from ._gradchecks import (
        assert_batch_independent,
        assert_gradients_finite,
        assert_gradients_flow,
        assert_no_dead_gradients,
        assert_params_receive_grad,
    )
    from ._render._gradflow import gradient_flow
    from ._compare import assert_same_activations, compare
    from ._render._diff import diff_grid
    from ._inputs import sample_input
    from ._render._grid import channel_grid, save_channels
    from ._render._heatmap import heatmap
    from ._render._images import load_image, to_image
    from ._render._kernels import kernel_grid
    from ._render._pca import pca_rgb
    from ._checks import (
        assert_finite,
        assert_no_dead_channels,
        assert_not_saturated,
        assert_shapes,
        assert_strides,
    )


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'featcheck' has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
