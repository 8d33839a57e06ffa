"""Operations' channel axes through heads, tuples and indexing, and ops whose results are views of
their own tensors: attention written the usual ways (Hugging Face's GPT-2, its KV cache in
``generate``, ``einsum``), checked against references computed by hand."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from torch import nn

import featcheck
from featcheck import _layout

def per_feature(t: torch.Tensor, cdim: int) -> dict[str, np.ndarray]:
    a = np.moveaxis(t.detach().double().numpy(), cdim, -1).reshape(-1, t.shape[cdim])
    return {"mean": a.mean(0), "std": a.std(0), "min": a.min(0), "max": a.max(0)}


def assert_stats(rec: featcheck.LayerCapture, want: dict[str, np.ndarray]) -> None:
    for k, v in want.items():
        np.testing.assert_allclose(rec.stats[k], v, rtol=1e-5, atol=1e-6, err_msg=f"{rec.name} {k}")


@pytest.fixture(autouse=True)
def _offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # models are built from configs: nothing to download


def gpt2(layers: int = 2) -> nn.Module:
    import transformers  # a test extra (pip install -e '.[test]')

    torch.manual_seed(0)
    config = transformers.GPT2Config(n_layer=layers, n_embd=32, n_head=2, vocab_size=100, n_positions=64)
    return transformers.GPT2LMHeadModel(config).eval()


def test_gpt2_records_take_features_as_channels_not_positions() -> None:
    """GPT-2's Linear layers are Hugging Face's ``Conv1D``: read as "inherit from the input", its
    attention projection took the sequence axis as channels after the heads' reshape (7
    "channels" for 7 tokens), and the residual adds inherited that. Its queries, keys and values
    come from a ``split`` (a tuple of tensors) and a view into heads: their channels are the
    head's features."""
    model = gpt2()
    ids = torch.randint(0, 100, (2, 7))
    hidden: dict[str, torch.Tensor] = {}
    handles = [
        model.transformer.h[0].attn.c_proj.register_forward_hook(lambda m, a, o: hidden.__setitem__("c_proj", o)),
        model.transformer.h[0].mlp.c_proj.register_forward_hook(lambda m, a, o: hidden.__setitem__("mlp", o)),
    ]
    with torch.no_grad():
        model(ids)
    for h in handles:
        h.remove()
    cap = featcheck.capture(model, ids)
    for name in cap.names:
        rec = cap[name]
        if len(rec.shape) == 3 and rec.shape[:2] == (2, 7):  # [batch, tokens, features]
            assert rec.channel_dim == 2 and rec.channels == rec.shape[2], (name, rec.channel_dim)
        elif len(rec.shape) == 4:  # [batch, heads, tokens, head features]
            assert rec.channel_dim == 3 and rec.channels == 16, (name, rec.shape, rec.channel_dim)
    assert cap["transformer.h.0.attn.c_proj"].channels == 32 and cap["transformer.h.0.add"].channels == 32
    assert_stats(cap["transformer.h.0.attn.c_proj"], per_feature(hidden["c_proj"], 2))
    assert_stats(cap["transformer.h.0.mlp.c_proj"], per_feature(hidden["mlp"], 2))
    assert any(len(cap[n].shape) == 4 for n in cap.names)  # the attention's own records were seen


def test_gpt2_generate_keeps_every_step_in_the_statistics() -> None:
    """In ``generate`` the KV cache grows by a token per step and each step feeds one token: with
    tokens read as channels, every cached step was skipped ("an output with 6 channels on dim 2
    was skipped: earlier forwards gave 5") on the residual stream and in attention."""
    model = gpt2(layers=1)
    prompt = torch.randint(0, 100, (2, 5))
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # featcheck's skipped outputs warn
        with featcheck.watch(model) as cap:
            out = model.generate(prompt, max_new_tokens=3, do_sample=False, pad_token_id=0)
    assert out.shape == (2, 8)
    steps = cap.forwards
    assert steps == 3
    for name in cap.names:
        rec = cap[name]
        assert rec.note == "" and rec.forwards == steps, (name, rec.forwards, rec.note)
    res = cap["transformer.h.0.add"]
    assert res.samples == 2 * steps and res.stats["count"].tolist() == [2 * (5 + 1 + 1)] * 32  # every token of every step


class Einsum(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.q = nn.Linear(8, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scores = torch.einsum("bld,bmd->blm", self.q(x), x)  # hands back a view of its own result
        wide = torch.repeat_interleave(scores, 2, dim=2)
        diag = wide.diagonal(dim1=1, dim2=2)  # a view of an input: no new values
        return torch.tensordot(wide, torch.ones(10, 3), dims=1) + diag.mean()


def test_ops_whose_results_are_views_of_their_own_tensors_are_recorded() -> None:
    """einsum, repeat_interleave and tensordot return views of tensors they computed: they were
    taken for views of their inputs and dropped without a word, and ``layers="einsum"`` failed
    although einsum ran. So were all ops of a tensor subclass (``as_subclass`` views)."""
    torch.manual_seed(0)
    model = Einsum().eval()
    x = torch.randn(2, 5, 8)
    cap = featcheck.capture(model, x)
    assert cap.names == ["q", "einsum", "repeat_interleave", "tensordot", "add"]  # (diag.mean() is 0-d)
    with torch.no_grad():
        scores = torch.einsum("bld,bmd->blm", model.q(x), x)
    assert cap["einsum"].shape == (2, 5, 5) and cap["einsum"].channel_dim == 2
    assert_stats(cap["einsum"], per_feature(scores, 2))
    assert cap["repeat_interleave"].channels == 10 and cap["tensordot"].channels == 3
    assert "diagonal" not in cap.names
    assert featcheck.capture(model, x, layers="einsum").names == ["einsum"]

    class Tagged(torch.Tensor):
        pass

    sub = featcheck.capture(model, x.as_subclass(Tagged))
    assert set(cap.names) <= set(sub.names)


class Heads(nn.Module):
    """Attention written with a fused qkv projection, unbind and indexing (timm's way)."""

    def __init__(self) -> None:
        super().__init__()
        self.qkv = nn.Linear(12, 36)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, 4, 3).permute(2, 0, 3, 1, 4)  # [3, B, heads, N, head dim]
        q, k, v = qkv.unbind(0)
        first = qkv[0]  # the same as q, by indexing
        q1, q2 = q.chunk(2, dim=2)  # along tokens: a tuple
        return torch.cat([q1, q2], 2) * 2 + k.sigmoid() + v.tanh() + first.exp()


def test_unbind_indexing_and_chunk_keep_the_head_features_as_channels() -> None:
    torch.manual_seed(0)
    cap = featcheck.capture(Heads().eval(), torch.randn(2, 6, 12))
    for name in ["cat", "mul", "sigmoid", "tanh", "exp", "add", "add:2", "add:3"]:
        assert (cap[name].channel_dim, cap[name].channels) == (3, 3), (name, cap[name].channel_dim)


@pytest.mark.parametrize(
    "old,cdim,new,want",
    [
        ((2, 7, 32), 2, (2, 7, 2, 16), 3),  # into heads: the head's features
        ((2, 7, 2, 16), 3, (2, 7, 32), 2),  # heads merged back
        ((8, 64, 1, 1), 1, (8, 64), 1),  # flatten(1) of a pooled map
        ((2, 8, 4, 4), 1, (2, 2, 4, 4, 4), 2),  # channel shuffle: split into groups
        ((2, 4, 2, 4, 4), 1, (2, 8, 4, 4), 1),  # and merged back
        ((2, 12, 5), 1, (2, 5, 12), None),  # values moved across the channel axis
        ((2, 0, 3), 1, (2, 3, 0), None),
    ],
)
def test_a_reshape_carries_the_channel_axis_where_its_values_went(old, cdim, new, want) -> None:  # type: ignore[no-untyped-def]
    assert _layout._follow_reshape(torch.Size(old), cdim, torch.Size(new)) == want
