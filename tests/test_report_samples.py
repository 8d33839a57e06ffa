"""Why a record has no picture, in process: the note the report gives and the error a drawing
gives name the real reason (``keep_samples=False``, an output without values), never a guess."""

from __future__ import annotations

import pytest
import torch

import featcheck
from featcheck import _report
from featcheck._fixture import FeatcheckFixture


def model() -> torch.nn.Module:
    return torch.nn.Sequential(torch.nn.Conv2d(3, 2, 3), torch.nn.ReLU())


def notes(request: _report._Request) -> list[str]:
    pictures, dropped, found = _report.render_requests([request], 8)
    assert (pictures, dropped) == ([], 0)
    return found


@pytest.mark.parametrize("keep_samples", [True, False])
def test_a_batch_of_zero_is_the_reason_unless_samples_were_not_kept(keep_samples: bool) -> None:
    cap = featcheck.capture(model(), torch.randn(0, 3, 8, 8), keep_samples=keep_samples)
    why = "the output held no values (a batch of 0)" if keep_samples else "captured with keep_samples=False"
    assert notes(_report._Show(cap, None, {})) == [f"no picture of 0, 1: {why}"]
    # a record on its own does not say how it was captured: its shape does
    assert notes(_report._Flagged(cap["1"], [0], "dead")) == ["no picture of 1: the output held no values (a batch of 0)"]


def test_an_empty_record_fails_at_the_call_with_its_reason() -> None:
    cap = featcheck.capture(model(), torch.randn(0, 3, 8, 8))
    fixture = FeatcheckFixture(enabled=True, report_dir="unused")
    fixture.show(cap)  # a whole capture: its records without pictures become a note
    with pytest.raises(ValueError, match=r"layer '0' has no sample to draw: the output held no values \(a batch of 0\); "
                                         "capture it with an input of at least one sample"):
        fixture.show(cap["0"])
    with pytest.raises(ValueError, match="keep_samples=False"):
        fixture.show(featcheck.capture(model(), torch.randn(1, 3, 8, 8), keep_samples=False)["0"])
