"""Statistics through ``featcheck.capture`` and ``watch`` on real models: dtypes, magnitudes and
shapes that a plain forward produces."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torchvision
from torch import nn

import featcheck
from fixtures.models import TinyCNN
from fixtures.stats_edges import EmptyOutputs


def exact(t: torch.Tensor, cdim: int = 1) -> dict[str, np.ndarray]:
    """Per-channel statistics in numpy's extended precision (no overflow for data of 1e300)."""
    a = np.moveaxis(t.detach().numpy().astype(np.longdouble), cdim, -1).reshape(-1, t.shape[cdim])
    return {
        "min": a.min(0).astype(np.float64),
        "max": a.max(0).astype(np.float64),
        "mean": a.mean(0).astype(np.float64),
        "std": a.std(0).astype(np.float64),
        "zero_fraction": (a == 0).mean(0).astype(np.float64),
    }


def assert_stats(got: dict[str, np.ndarray], want: dict[str, np.ndarray], rtol: float) -> None:
    scale = np.maximum(np.abs(want["min"]), np.abs(want["max"]))
    for k, v in want.items():
        assert np.isfinite(got[k]).all(), (k, got[k])
        assert (np.abs(got[k] - v) <= rtol * scale).all(), (k, got[k], v)
    np.testing.assert_allclose(got["std"], want["std"], rtol=10 * rtol)


def test_a_float64_resnet_is_captured_in_float64() -> None:
    # vector_norm(..., dtype=float32) refused Double: every float64 model with a conv failed.
    model = torchvision.models.resnet18(weights=None).double().eval()
    x = torch.randn(1, 3, 64, 64, dtype=torch.float64)
    cap = featcheck.capture(model, x)
    assert len(cap) == len(featcheck.capture(model.float(), x.float()))
    model.double()
    assert cap["conv1"].dtype == "torch.float64"
    with torch.no_grad():
        assert_stats(cap["conv1"].stats, exact(model.conv1(x)), 1e-12)
    featcheck.assert_finite(cap)


@pytest.mark.parametrize(
    "dtype,scale",
    [(torch.float64, 1e300), (torch.float64, 1e-300), (torch.float32, 1e19), (torch.float32, 1e-25)],
)
def test_finite_outputs_far_from_one_give_finite_correct_statistics(
    dtype: torch.dtype, scale: float
) -> None:
    # float64 of 1e300 was cast to float32 and counted non-finite; float32 of 1e19 had std inf;
    # 1e-25 had std 0.
    model = TinyCNN().to(dtype).eval()
    with torch.no_grad():  # biases would lift the outputs back to ordinary magnitudes
        model.conv1.bias.zero_()
        model.conv2.bias.zero_()
    x = torch.randn(2, 3, 16, 16, dtype=dtype) * scale
    cap = featcheck.capture(model, x, layers=["conv1", "conv2"])
    featcheck.assert_finite(cap)
    with torch.no_grad():
        y = model.conv1(x)
        z = model.conv2(model.relu1(model.bn1(y)))
    rtol = 1e-12 if dtype == torch.float64 else 1e-6
    assert_stats(cap["conv1"].stats, exact(y), rtol)
    assert_stats(cap["conv2"].stats, exact(z), rtol)


def test_a_batch_of_zero_is_recorded_with_count_zero() -> None:
    cap = featcheck.capture(TinyCNN().eval(), torch.randn(0, 3, 16, 16), keep_samples=False)
    assert cap["conv1"].shape == (0, 8, 8, 8)
    for rec in cap.values():
        assert rec.stats["count"].tolist() == [0] * rec.channels, rec.name
        assert np.isnan(rec.stats["mean"]).all()


@pytest.mark.filterwarnings("ignore:Initializing zero-element tensors:UserWarning")
@pytest.mark.parametrize("batch", [2, 0])
def test_zero_channels_and_zero_spatial_size_are_recorded_with_count_zero(batch: int) -> None:
    cap = featcheck.capture(EmptyOutputs().eval(), torch.randn(batch, 3, 8, 8), keep_samples=False)
    assert cap["head"].channels == 0 and cap["head"].stats["count"].shape == (0,)
    assert cap["crop"].shape == (batch, 4, 0, 8)
    assert cap["crop"].stats["count"].tolist() == [0, 0, 0, 0]
    assert cap["conv"].stats["count"].tolist() == [batch * 64] * 4


def test_watch_survives_inference_mode_then_no_grad_then_autograd() -> None:
    # The reused scratch buffer became an inference tensor in the first forward, and the second
    # (under no_grad) could not write into it.
    model = torchvision.models.resnet18(weights=None).eval()
    xs = [torch.randn(2, 3, 64, 64) for _ in range(3)]  # layer4 is 2 x 2: the torch path
    with featcheck.watch(model, layers=["layer4", "fc"]) as cap:
        with torch.inference_mode():
            model(xs[0])
        with torch.no_grad():
            model(xs[1])
        model(xs[2])
    assert cap.forwards == 3
    outs: dict[str, list[torch.Tensor]] = {"layer4": [], "fc": []}
    handles = [
        getattr(model, name).register_forward_hook(lambda m, i, o, name=name: outs[name].append(o.clone()))
        for name in outs
    ]
    with torch.no_grad():
        for x in xs:
            model(x)
    for h in handles:
        h.remove()
    for name, seen in outs.items():
        assert_stats(cap[name].stats, exact(torch.cat(seen)), 1e-5)


class WideIntegers(nn.Module):
    """A submodule returning int64 values around 2**40: a cast to float32 made them one constant."""

    class Ids(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return (2**40 + (x.abs() * 50).long()).view(x.shape[0], 4, 5, 2)

    def __init__(self) -> None:
        super().__init__()
        self.ids = self.Ids()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.ids(x)


def test_int64_outputs_keep_their_low_digits_through_capture() -> None:
    x = torch.randn(3, 4, 10)
    cap = featcheck.capture(WideIntegers(), x)
    with torch.no_grad():
        values = WideIntegers()(x).numpy().astype(np.int64)
    st = cap["ids"].stats
    assert cap["ids"].note == "" and cap["ids"].channels == 4
    low = values - 2**40  # exact small integers
    assert (st["min"] - 2**40).tolist() == low.min((0, 2, 3)).tolist()
    assert (st["max"] - 2**40).tolist() == low.max((0, 2, 3)).tolist()
    np.testing.assert_allclose(st["std"], low.std((0, 2, 3)), rtol=1e-9)
