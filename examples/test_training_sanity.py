"""Training sanity: the backward pass, checked layer by layer.

``capture(model, x, backward=loss)`` records, for every layer, the statistics of d(loss)/d(output)
(``grad_stats``) and, for every parameter, its gradient (``param_grads``), and leaves the model's
``.grad`` alone. The report row of each test shows the gradient flow: RMS and max |grad| per
layer in forward order, vanishing and exploding zones shaded.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

import featcheck
from fixtures import demo_cnn


def test_gradients_reach_every_layer_at_a_healthy_scale(featcheck):
    model = demo_cnn.load()
    x, y = demo_cnn.shapes(16)
    cap = featcheck.capture(model, x, backward=lambda out: F.cross_entropy(out, torch.as_tensor(y)))
    featcheck.assert_gradients_finite(cap)
    featcheck.assert_gradients_flow(cap, min_ratio=1e-4, max_ratio=1e4)
    featcheck.assert_params_receive_grad(cap)
    featcheck.show(cap, layers="features.8", grads=True)  # the gradient map of the last conv


def test_training_steps_update_weights_at_a_sane_rate(featcheck):
    """watch a real training loop: gradients as they come, and |w_after - w_before| / |w_before|
    per optimizer step (practitioners expect around 1e-3)."""
    model = demo_cnn.DemoCNN()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    with featcheck.watch(model) as cap:
        for seed in range(3):
            x, y = demo_cnn.shapes(16, seed=seed)
            opt.zero_grad()
            F.cross_entropy(model(x), torch.as_tensor(y)).backward()
            opt.step()
    weights = [name for name, p in model.named_parameters() if p.ndim > 1]  # biases start at 0: no ratio
    ratios = {name: cap.param_grads[name]["update_ratio"] for name in weights}
    assert all(1e-4 < r < 1e-1 for r in ratios.values()), ratios
    featcheck.assert_params_receive_grad(cap)


def test_samples_do_not_mix_in_eval_mode():
    featcheck.assert_batch_independent(torchvision.models.resnet18(weights=None), torch.randn(4, 3, 64, 64))


# Each of these fails on purpose (strict xfail): the failure table, and the gradient-flow
# picture attached to the report row.
caught = pytest.mark.xfail(strict=True, raises=AssertionError, reason="demonstrates a caught defect")


class DetachedStem(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU())
        self.head = nn.Sequential(nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.stem(x).detach())  # the bug: the stem never learns


@caught
def test_caught_detached_stem(featcheck):
    cap = featcheck.capture(DetachedStem(), torch.randn(8, 3, 32, 32), backward=lambda out: out.logsumexp(-1).mean())
    featcheck.assert_params_receive_grad(cap)  # names stem.0.weight, stem.0.bias, stem.1.weight, stem.1.bias


@caught
def test_caught_vanishing_gradients_in_a_deep_sigmoid_stack(featcheck):
    torch.manual_seed(0)
    deep = nn.Sequential(*[m for _ in range(20) for m in (nn.Linear(64, 64), nn.Sigmoid())])
    cap = featcheck.capture(deep, torch.randn(16, 64), backward=lambda out: out.pow(2).mean())
    featcheck.assert_gradients_flow(cap)  # the first layers get 1e-17 of the gradient at the loss


@caught
def test_caught_batchnorm_in_train_mode_mixes_samples(featcheck):
    """In train mode BatchNorm normalises with the batch's statistics: every sample's output
    depends on every other sample (a per-sample loss or metric is then not per sample)."""
    featcheck.assert_batch_independent(torchvision.models.resnet18(weights=None), torch.randn(4, 3, 64, 64), train=True)
