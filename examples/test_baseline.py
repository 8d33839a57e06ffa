"""Regression baselines: CI says exactly what changed inside the network.

The baseline lives next to this file, in ``__featcheck__/test_baseline/``, and is committed. Change
the CNN (a stride, a block, a channel count, an init) and this test fails with a diff of the
layers; accept an intended change with ``pytest --featcheck-update examples/test_baseline.py``.
"""

from __future__ import annotations

from fixtures import demo_cnn


def test_demo_cnn_is_unchanged(featcheck):
    model = demo_cnn.load()
    cap = featcheck.capture(model, featcheck.sample_input((2, 3, 64, 64)))
    featcheck.check_baseline(cap)


def test_demo_cnn_architecture_only(featcheck):
    """stats=False guards the architecture alone: retraining does not fail it, a new layer does."""
    cap = featcheck.capture(demo_cnn.DemoCNN(), featcheck.sample_input((1, 3, 64, 64)))
    featcheck.check_baseline(cap, name="architecture", stats=False)
