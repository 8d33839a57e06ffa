"""Before and after a refactoring: the new implementation of a block must compute the same.

``featcheck.assert_same_activations(old, new, x)`` runs both on the same input and compares every
record (modules and the operations their ``forward`` calls) element-wise. When they part, one
table says where it starts, whether that record's inputs already differed, and which channels;
with ``--featcheck`` the report shows reference | candidate | |difference| of the first diverging
records.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn


class OldBlock(nn.Module):
    """The block as it was: conv, batch norm and ReLU as modules, a residual add."""

    def __init__(self, channels: int = 16) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + x)


class NewBlock(nn.Module):
    """The rewrite: the same layers in a Sequential, the activations as functions."""

    def __init__(self, channels: int = 16, scale_residual: float = 1.0) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(channels, channels, 3, padding=1, bias=False), nn.BatchNorm2d(channels),
            nn.Conv2d(channels, channels, 3, padding=1, bias=False), nn.BatchNorm2d(channels),
        )
        self.scale_residual = scale_residual

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.body[1](self.body[0](x)).relu()
        out = self.body[3](self.body[2](out))
        return (out + self.scale_residual * x).relu()


# old record name -> new record name ("relu:2" is the old block's second call of self.relu)
MAPPING = {"conv1": "body.0", "bn1": "body.1", "relu": "relu", "conv2": "body.2", "bn2": "body.3", "add": "add", "relu:2": "relu:2"}


def _pair(scale_residual: float = 1.0) -> tuple[OldBlock, NewBlock]:
    torch.manual_seed(0)
    old = OldBlock().eval()
    new = NewBlock(scale_residual=scale_residual).eval()
    names = {"conv1": "body.0", "bn1": "body.1", "conv2": "body.2", "bn2": "body.3"}
    new.load_state_dict({f"{names[k.split('.')[0]]}.{k.split('.', 1)[1]}": v for k, v in old.state_dict().items()})
    return old, new


def test_rewritten_block_computes_the_same(featcheck):
    old, new = _pair()
    diff = featcheck.assert_same_activations(old, new, torch.randn(4, 16, 12, 12), mapping=MAPPING)
    assert len(diff.rows) == len(MAPPING)


@pytest.mark.xfail(strict=True, raises=AssertionError, reason="demonstrates a caught defect")
def test_caught_a_changed_residual(featcheck):
    """The rewrite scales the residual by 0.9: bn2 still agrees, the add is the first record that
    does not, and its inputs already differed (the glue `0.9 * x` before it)."""
    old, new = _pair(scale_residual=0.9)
    featcheck.assert_same_activations(old, new, torch.randn(4, 16, 12, 12), mapping=MAPPING)
