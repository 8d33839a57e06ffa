from __future__ import annotations

import pytest
import torch

from fixtures.hooks import no_common_hooks


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.fixture(autouse=True)
def _no_common_hooks_left() -> object:
    yield
    assert no_common_hooks(), "a hook common to all modules was left registered"
