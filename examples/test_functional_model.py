"""Models written the functional way: ``F.relu``, ``+``, ``torch.cat`` are recorded too.

featcheck records, besides modules, every operation a module's ``forward`` calls, named after
the module and the operation (``relu``, ``relu:2`` in the root forward; ``layer1.0.add`` for a
ResNet block's ``out += identity``). Checks, pictures and baselines treat them like modules.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import featcheck
from fixtures import functional


def test_functional_relus_are_healthy(featcheck):
    """The healthy twin: every ReLU channel fires on some input."""
    cap = featcheck.capture(functional.Net(dead=False), torch.randn(8, 3, 32, 32))
    featcheck.show(cap, layers=F.relu)  # a torch function selects that operation's records
    featcheck.assert_no_dead_channels(cap, layers=F.relu)


@pytest.mark.xfail(strict=True, raises=AssertionError, reason="demonstrates a caught defect")
def test_caught_dead_functional_relu(featcheck):
    """conv2's bias is -100 on channels 1 and 4: the second F.relu (record 'relu:2') never fires
    there. Module hooks alone see conv1, conv2 and fc, and would pass."""
    cap = featcheck.capture(functional.Net(dead=True), torch.randn(8, 3, 32, 32))
    featcheck.assert_no_dead_channels(cap, layers=F.relu)


def test_residual_adds_by_name(featcheck):
    """Operations are selected by name and pattern like modules: every residual add of a block."""
    import torchvision

    model = torchvision.models.resnet18(weights=None)
    featcheck.calibrate_batchnorm(model, [torch.randn(8, 3, 96, 96)])
    cap = featcheck.capture(model, torch.randn(2, 3, 96, 96), layers="layer*.add")
    featcheck.assert_strides(cap, {"layer1.*": 4, "layer2.*": 8, "layer3.*": 16, "layer4.*": 32})
    featcheck.assert_finite(cap)
    featcheck.show(cap, layers="layer1.0.add")
