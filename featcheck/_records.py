"""The data model: what a capture recorded, layer by layer.

A :class:`Capture` is a read-only mapping from record name to :class:`LayerCapture`. Records hold
per-channel statistics, a small rendering sample and the layer's geometry, never the model: the
module is reached through a weak reference, so a capture kept after a test does not keep the
model alive (``LayerCapture.module`` and ``params`` answer ``None`` once it is gone, unless
``params`` was read before).
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from . import _selection, _stats, _verdicts
from ._ops import Operation

if TYPE_CHECKING:
    from ._recorder import Recorder

__all__ = ["Capture", "LayerCapture"]


def _no_module() -> None:
    return None


class LayerCapture:
    """What featcheck recorded of one layer (one call of one module, one output tensor).

    Attributes:
        name: the record's unique name (see the module docstring for the rules).
        module_name: qualified name of the module in ``named_modules()``; for an operation its
            name without the call counter (``layer1.0.add`` for ``layer1.0.add:2``).
        module_type: the module's class name; for an operation its name and ``()`` (``add()``).
        op: the operation's name (``add``, ``relu``, ``cat``) for a record of an operation
            (see ``featcheck._ops``), ``None`` for a module's record.
        call: which call of the module in a forward pass this is (1 for the first).
        key: the key path inside the module's output ('' when it returned one tensor).
        channel_dim: the axis holding channels in the output, ``None`` for rank < 2.
        shape: output shape of the last call.
        dtype: dtype of the output, as a string (``"torch.float16"``).
        stride: measured reduction per spatial dimension relative to the model input
            (input size / output size), ``None`` when the output has no spatial dimensions
            matching the input's.
        input_size: spatial size of the model input of the last forward (``None`` if unknown).
        samples: how many samples (batch entries) the statistics cover.
        forwards: how many calls the statistics cover.
        bounds: output bounds used for saturation counts, or ``None``.
        sample: first sample of the first call, on the CPU, float32, channels first
            (``[C, *spatial]``); ``None`` if capture was asked not to keep samples.
        sample_step: subsampling step per spatial dimension of ``sample`` (all 1: full size).
        note: why some of this layer's outputs were not reduced ('' when all were): a complex or
            sparse tensor, a layout that changed between forwards. The forward pass is never
            broken for it; statistics cover only the outputs that were reduced.
    """

    def __init__(
        self,
        name: str,
        module: nn.Module | str,
        module_name: str,
        call: int,
        key: str,
        channel_dim: int | None,
        channels: int,
        bounds: tuple[float, float] | None,
    ) -> None:
        """``module`` is the module, or for a record of an operation the operation's name."""
        self.name = name
        self.module_name = module_name
        self._params: int | None = None
        self.op: str | None
        self._module: Callable[[], nn.Module | None]
        if isinstance(module, str):
            self.op = module
            self.module_type = f"{module}()"
            self.module_class: type = Operation
            self._module = _no_module
            self._params = 0
        else:
            self.op = None
            self.module_type = type(module).__name__
            self.module_class = type(module)
            self._module = weakref.ref(module)
        self.call = call
        self.key = key
        self.channel_dim = channel_dim
        self.channels = channels
        self.bounds = bounds
        self.shape: tuple[int, ...] = ()
        self.dtype = ""
        self.stride: tuple[float, ...] | None = None
        self.input_size: tuple[int, ...] | None = None
        self.samples = 0
        self.forwards = 0
        self._sample: torch.Tensor | tuple[Any, tuple[int, ...]] | None = None
        self.sample_step: tuple[int, ...] = ()
        self.note = ""
        self._acc = _stats.Accumulator(channels)
        self._stats: dict[str, np.ndarray] | None = None
        # the record of d(loss)/d(this output), filled by the gradient hooks (featcheck._grads)
        self.grad: LayerCapture | None = None
        self.grad_note = ""

    @property
    def sample(self) -> torch.Tensor | None:
        """First sample of the first call (see the class docstring); the capture may keep it as
        the bytes it copied, made a tensor (sharing their memory) when first read."""
        s = self._sample
        if type(s) is tuple:  # (buffer, shape) as the hook copied it: a tensor sharing its memory
            s = self._sample = torch.frombuffer(s[0], dtype=torch.float32).view(s[1])
        return s

    @sample.setter
    def sample(self, value: torch.Tensor | None) -> None:
        self._sample = value

    @property
    def params(self) -> int | None:
        """Number of parameters of the module, counted when the capture ended (``None`` if the model
        was gone by then); 0 for an operation."""
        if self._params is None:
            module = self._module()
            if module is not None:
                self._params = sum(p.numel() for p in module.parameters())
        return self._params

    @property
    def module(self) -> nn.Module | None:
        """The module, while the model is alive (``None`` for an operation)."""
        return self._module()

    @property
    def spatial(self) -> tuple[int, ...]:
        """Output sizes of the dimensions other than batch and channels."""
        if len(self.shape) < 2:
            return ()
        return tuple(s for i, s in enumerate(self.shape) if i not in (0, self.channel_dim))

    @property
    def stats(self) -> dict[str, np.ndarray]:
        """Per-channel statistics over every sample and position seen (read-only arrays).

        ``min``, ``max``, ``mean``, ``std`` (population, correction 0) over the finite values;
        ``zero_fraction`` over all values, and for layers with saturation ``bounds`` the
        ``lower_fraction`` / ``upper_fraction`` of values at each bound; ``nonfinite`` and
        ``count`` (values per channel) as integer counts.
        A channel with no finite value has NaN for min, max, mean and std.
        """
        if self._stats is None:
            stats = self._acc.stats()
            if self.bounds is None:
                del stats["lower_fraction"], stats["upper_fraction"]
            self._stats = stats
        return self._stats

    @property
    def grad_stats(self) -> dict[str, np.ndarray] | None:
        """Per-channel statistics of the gradient of the loss with respect to this output, over
        every backward pass seen: the keys and semantics of :attr:`stats` (without the bound
        fractions). ``None`` when no gradient was recorded; ``grad_note`` says why (see
        ``featcheck._grads``)."""
        return None if self.grad is None else self.grad.stats

    def dead_channels(self, tolerance: float | None = None) -> list[int]:
        """Indices of channels that never varied; see :func:`featcheck.assert_no_dead_channels`."""
        return _verdicts.dead_channels(self, tolerance)

    def saturated_channels(self, fraction: float | None = None) -> list[int]:
        """Indices of channels with ``fraction`` of values at a bound; see
        :func:`featcheck.assert_not_saturated`."""
        return _verdicts.saturated_channels(self, fraction)

    def _add(self, block: np.ndarray) -> None:
        self._acc.add(block)
        self._stats = None

    def __repr__(self) -> str:
        stride = "-" if self.stride is None else "x".join(f"{s:g}" for s in self.stride)
        return (
            f"LayerCapture({self.name!r}, {self.module_type}, shape={tuple(self.shape)}, "
            f"channels={self.channels}, stride={stride}, samples={self.samples})"
        )



class Capture(Mapping[str, LayerCapture]):
    """Read-only mapping from record name to :class:`LayerCapture`, ordered by first call."""

    def __init__(self, recorder: Recorder, model_name: str, note: str = "") -> None:
        self._rec = recorder
        self.model_name = model_name
        self.note = note

    def _records(self) -> dict[str, LayerCapture]:
        self._rec.commit_outside_forward()
        return self._rec.records

    def __getitem__(self, name: str) -> LayerCapture:
        if not isinstance(name, str):
            raise TypeError(
                f"records are looked up by name (a str such as {next(iter(self._rec.records), 'layer1')!r}), "
                f"got {type(name).__name__}: {name!r}; use cap.names[i] for the i-th record in call order"
            )
        records = self._records()
        try:
            return records[name]
        except KeyError:
            raise _selection.not_found(name, list(records), "this capture") from None

    def __iter__(self) -> Iterator[str]:
        return iter(list(self._records()))

    def __len__(self) -> int:
        return len(self._records())

    @property
    def names(self) -> list[str]:
        """Record names in order of first call."""
        return list(self._records())

    @property
    def output(self) -> Any:
        """What the last forward pass returned."""
        return self._rec.output

    @property
    def forwards(self) -> int:
        """How many forward passes of the model the capture has seen."""
        return self._rec.forwards

    @property
    def default_batchnorm(self) -> list[str]:
        """BatchNorm layers that ran in eval mode with their initial running statistics (mean 0,
        var 1) during the first forward: dead and saturation verdicts on them are suspect."""
        return list(self._rec.default_batchnorm)

    @property
    def param_grads(self) -> Mapping[str, Mapping[str, Any]]:
        """Per-parameter gradient summaries, by qualified parameter name (see
        ``featcheck._grads``); empty when no gradient was recorded."""
        grads = self._rec.grads
        return {} if grads is None else grads.param_grads

    def select(self, layers: Any = None) -> list[LayerCapture]:
        """The records chosen by ``layers`` (same selectors as capture; a module name selects
        every call and output key of that module, an operation's name every call of it, a torch
        function such as ``F.relu`` every record of that operation; predicates see modules
        only)."""
        records = self._records()
        if layers is None:
            return list(records.values())
        names = _selection.select(
            list(records.items()),
            layers,
            "this capture",
            aliases=lambda n: (records[n].module_name,),
            instance_of=lambda rec, cls: issubclass(rec.module_class, cls),
            call=lambda pred, n, rec: rec.op is None and bool(pred(n, rec.module)),
            op_of=lambda rec: rec.op,
        )
        return [records[n] for n in names]

    def __repr__(self) -> str:
        return f"<Capture of {self.model_name}: {len(self)} layers, {self.forwards} forward(s)>"
