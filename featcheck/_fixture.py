"""The object behind the ``featcheck`` fixture."""

from __future__ import annotations

import os
import shlex
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from . import _capture, _render, _report

__all__ = ["FIXTURE_KEY", "FeatcheckFixture"]


class FeatcheckFixture:
    """Capture and watch models in a test; show pictures in the report.

    ``capture`` and ``watch`` have the signatures of :func:`featcheck.capture` and
    :func:`featcheck.watch` and remember every capture for the report. Every other public name of
    the ``featcheck`` package (``assert_no_dead_channels``, ``calibrate_batchnorm``, ...) is
    reachable from the fixture too, since a test's ``featcheck`` argument shadows the module.
    """

    def __init__(self, enabled: bool, report_dir: str, node: pytest.Item | None = None, update: bool = False) -> None:
        self.enabled = enabled
        self.report_dir = report_dir
        self.captures: list[_capture.Capture] = []
        self.requests: list[_report._Request] = []
        self._node = node
        self._update = update
        self._baselines: set[Path] = set()
        self.written_baselines: list[tuple[str, Path]] = []

    def capture(self, model: Any, *args: Any, **kwargs: Any) -> _capture.Capture:
        __tracebackhide__ = True
        cap = _capture.capture(model, *args, **kwargs)
        self.captures.append(cap)
        return cap

    @contextmanager
    def watch(self, model: Any, layers: Any = None, **kwargs: Any) -> Iterator[_capture.Capture]:
        with _capture.watch(model, layers, **kwargs) as cap:
            self.captures.append(cap)
            yield cap

    def show(self, x: Any, layers: Any = None, *, grads: bool = False, **options: Any) -> None:
        """Put channel grids of ``x`` in this test's report.

        Args:
            x: a Capture (one picture per selected layer), a LayerCapture, a tensor, or a
                finished picture (a PIL image from ``pca_rgb``, ``heatmap``, ...), shown as is.
            layers: for a Capture, which layers (same selectors as capture; default all).
            grads: for a Capture or LayerCapture, draw the gradient maps (d(loss)/d(output),
                from ``capture(..., backward=...)`` or a watch over a backward pass) instead of
                the outputs; records without a gradient are left out.
            options: passed to :func:`featcheck.channel_grid` (``max_channels``, ``cmap``,
                ``normalize``, ``select``, ...).

        Raises:
            TypeError: ``x`` is none of these, a tensor that holds values but cannot be drawn
                as it is (quantized, nested, float8), ``layers`` is given for something other
                than a Capture, or an option is unknown.
            ValueError: ``x`` is an empty tensor or one on the ``meta`` device (no values), or
                an option value is invalid.
            LayerNotFoundError: a name in ``layers`` matches no layer of the capture.

        The arguments are checked at the call, with or without ``--featcheck``; without it
        nothing is rendered or written.
        """
        __tracebackhide__ = True
        import torch
        from PIL import Image

        if not isinstance(grads, bool):
            raise TypeError(f"grads must be True or False, got {type(grads).__name__}: {grads!r}")
        if grads:
            _check_grads_shown(x, layers)
        if isinstance(x, Image.Image):
            unknown = sorted(set(options) - {"title"})
            if unknown or layers is not None:
                raise TypeError(f"a finished picture takes only title=, got {', '.join(map(repr, unknown or ['layers']))}")
        elif isinstance(x, (_capture.Capture, _capture.LayerCapture, torch.Tensor)):
            if layers is not None and not isinstance(x, _capture.Capture):
                raise TypeError(
                    f"layers= chooses layers of a Capture; got a {type(x).__name__}. Pass the "
                    "Capture with layers=, or the LayerCapture or tensor without it"
                )
            if isinstance(x, torch.Tensor):
                _check_values(x, "show")
                if x.numel() == 0:
                    raise ValueError(f"show got an empty tensor of shape {tuple(x.shape)}: there is nothing to draw")
            if isinstance(x, _capture.Capture) and len(x):
                x.select(layers)  # a watch may still be empty: its layers are chosen at the report
            _render.check_options("channel_grid", x, options)
        else:
            raise TypeError(
                f"show expects a Capture, a LayerCapture, a tensor or a PIL image, got {type(x).__name__}"
            )
        if self.enabled:
            self.requests.append(_report._Show(x, layers, options, grads))

    def show_kernels(self, module: Any, layers: Any = None, **options: Any) -> None:
        """Put kernel grids of ``module`` (a convolution, or every convolution inside a module,
        chosen with ``layers``) in this test's report; options go to
        :func:`featcheck.kernel_grid`.

        Raises:
            TypeError: ``module`` is neither a module nor a weight tensor, or an option is unknown.
            ValueError: no convolution to draw, or an option value is invalid.
            LayerNotFoundError: a name in ``layers`` matches no convolution of ``module``.

        The arguments are checked at the call, with or without ``--featcheck``; without it
        nothing is rendered or written.
        """
        __tracebackhide__ = True
        modules = _kernel_modules(module, layers)
        _render.check_options("kernel_grid", module, options)
        if self.enabled:
            title = options.pop("title", None)
            self.requests.append(_report._Kernels(modules, title, options))

    def _release(self) -> None:
        """Forget the test's captures and requests (the fixture's teardown, after the report)."""
        self.captures.clear()
        self.requests.clear()

    def check_baseline(
        self,
        cap: _capture.Capture,
        name: str | None = None,
        *,
        layers: Any = None,
        rtol: float = 1e-2,
        atol: float = 1e-4,
        stats: bool = True,
        grads: bool = False,
        pictures: bool = False,
    ) -> None:
        """Compare ``cap`` with this test's stored baseline (see ``featcheck._baselines``).

        Per layer, in call order: module type, output shape (batch free), dtype, stride, channels,
        parameter count and, with ``stats``, per-channel mean and std (a channel drifts when
        ``|current - baseline| > atol + rtol * |baseline|``) and the dead and saturated fractions.

        Args:
            cap: a Capture (its layers, or those chosen by ``layers``).
            name: tells several baselines of one test apart (``<test>.<name>.json``).
            stats: ``False`` guards the architecture only.
            grads: also compare the gradient records (``"<layer> (grad)"``, each after its
                layer) of a capture with gradients, under the same rules.
            pictures: also keep one small picture per layer beside the JSON
                (``<test>[.<name>].png``, written with ``--featcheck-update`` like the JSON); when
                the check fails, the report shows baseline | current | difference for the
                changed layers.

        A missing baseline fails and writes nothing; ``pytest --featcheck-update`` writes it.
        """
        __tracebackhide__ = True
        from . import _baselines, _config

        if self._node is None:
            raise RuntimeError("check_baseline needs the featcheck fixture of a running test")
        if not isinstance(cap, _capture.Capture):
            raise TypeError(f"check_baseline expects a Capture, got {type(cap).__name__}")
        if not isinstance(pictures, bool):
            raise TypeError(f"pictures must be True or False, got {type(pictures).__name__}: {pictures!r}")
        node = self._node
        path = _baselines.baseline_path(Path(node.path), node.nodeid, name)
        if path in self._baselines:
            raise ValueError(
                f"check_baseline was already called for {path.name} in this test; give each "
                "call its own name= (check_baseline(cap, name='stem'))"
            )
        self._baselines.add(path)
        root = Path(node.config.rootpath)
        display = os.path.relpath(path, node.config.invocation_params.dir)
        command = f"pytest --featcheck-update {shlex.quote(node.nodeid)}"
        result = _baselines.check(
            cap, path=path, display_path=display, nodeid=node.nodeid, name=name, layers=layers,
            rtol=rtol, atol=atol, stats=stats, update=self._update, grads=grads,
            max_kb=_config.get("baseline_max_kb"), command=command, pictures=pictures,
        )
        if result is not None:
            self.written_baselines.append((result, path if not path.is_relative_to(root) else path.relative_to(root)))

    def __getattr__(self, name: str) -> Any:
        import featcheck

        if name in featcheck.__all__:
            return getattr(featcheck, name)
        raise AttributeError(f"the featcheck fixture has no attribute {name!r}")


def _check_grads_shown(x: Any, layers: Any) -> None:
    """``show(x, grads=True)`` needs a capture whose selected records have gradients."""
    __tracebackhide__ = True
    if not isinstance(x, (_capture.Capture, _capture.LayerCapture)):
        raise TypeError(f"grads=True draws the gradient records of a Capture or LayerCapture, got {type(x).__name__}")
    records = x.select(layers) if isinstance(x, _capture.Capture) else [x]
    if isinstance(x, _capture.Capture) and not len(x):
        return  # a watch may still be empty: its gradients arrive later
    if not any(lc.grad is not None for lc in records):
        why = next((lc.grad_note for lc in records if lc.grad_note), "")
        raise ValueError(
            "show(..., grads=True): no selected record has a gradient; capture with "
            "backward=lambda out: loss (or run a backward pass inside watch)" + (f" ({why})" if why else "")
        )


def _kernel_modules(module: Any, layers: Any) -> list[tuple[str, Any]]:
    """The ``(name, convolution)`` pairs ``show_kernels(module, layers)`` draws."""
    __tracebackhide__ = True
    import torch

    from ._selection import select

    if isinstance(module, torch.Tensor):
        if layers is not None:
            raise TypeError("layers= chooses convolutions inside a module; got a weight tensor. Pass the module")
        _check_values(module, "show_kernels", "weight")
        if module.numel() == 0:
            raise ValueError(f"show_kernels got an empty weight of shape {tuple(module.shape)}: there is nothing to draw")
        return [("weight", module)]
    if not isinstance(module, torch.nn.Module):
        raise TypeError(f"show_kernels expects a module or a weight tensor, got {type(module).__name__}")
    convs = [(n, m) for n, m in module.named_modules() if isinstance(m, torch.nn.modules.conv._ConvNd)]
    if not convs:
        raise ValueError(
            f"show_kernels found no convolution in {type(module).__name__}; pass a convolution, a "
            "module that contains some, or a weight tensor"
        )
    if layers is not None:
        names = set(select(convs, layers, f"{type(module).__name__} convolutions"))
        convs = [(n, m) for n, m in convs if n in names]
    for name, conv in convs:
        if isinstance(conv.weight, torch.Tensor):
            _check_values(conv.weight, "show_kernels", f"weight of {name or type(conv).__name__}")
    return convs


def _check_values(t: Any, call: str, what: str = "tensor") -> None:
    """``t`` holds values a picture can be drawn from, as it is: checked at ``call`` (``show``,
    ``show_kernels``), since the drawing itself happens only at the report."""
    __tracebackhide__ = True
    shape = "x".join(map(str, t.shape)) if not t.is_nested else "nested"
    if t.is_meta:
        raise ValueError(
            f"{call} got a {what} on the meta device (shape {shape}): it has a shape but no values to "
            "draw; pass one that holds values (on the CPU or an accelerator)"
        )
    if t.is_quantized:
        raise TypeError(f"{call} got a quantized {what} ({t.dtype}): pass its values as floats, x.dequantize()")
    if t.is_nested:
        raise TypeError(
            f"{call} got a nested {what}: draw one of its tensors (x.unbind()[0]) or a padded copy "
            "(x.to_padded_tensor(0.0))"
        )
    if call == "show" and t.is_floating_point() and t.dtype.itemsize == 1:  # (kernel grids take them)
        raise TypeError(f"{call} got a {what} of {t.dtype}, which cannot be drawn as it is: pass x.float()")


FIXTURE_KEY = pytest.StashKey[FeatcheckFixture]()
