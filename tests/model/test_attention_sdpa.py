"""BART and DaViT attention run through scaled_dot_product_attention (issue 13 fix 8): same numbers as the
explicit matmul + softmax the official eager code computes, and no explicit Softmax left in the modules."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from xvla.export.policies.xvla.model.bart import BartSelfAttention
from xvla.export.policies.xvla.model.davit import ChannelAttention, WindowAttention


def _explicit_bart(m: BartSelfAttention, x: torch.Tensor) -> torch.Tensor:
    n, d = x.shape[1], x.shape[2]
    heads = lambda t: t.reshape(-1, n, m.num_heads, m.head_dim).transpose(1, 2)  # noqa: E731
    q, k, v = heads(m.q_proj(x) * m.scaling), heads(m.k_proj(x)), heads(m.v_proj(x))
    out = ((q @ k.transpose(-1, -2)).softmax(-1) @ v).transpose(1, 2).reshape(-1, n, d)
    return m.out_proj(out)


def _explicit_channel(m: ChannelAttention, x: torch.Tensor) -> torch.Tensor:
    n, c = x.shape[1], x.shape[2]
    qkv = m.qkv(x).reshape(-1, n, 3, m.groups, c // m.groups).permute(2, 0, 3, 1, 4)
    q, k, v = qkv[0] * (float(n) ** -0.5), qkv[1], qkv[2]
    out = (((q.transpose(-1, -2) @ k).softmax(-1)) @ v.transpose(-1, -2)).transpose(-1, -2)
    return m.proj(out.transpose(1, 2).reshape(-1, n, c))


def _explicit_window(m: WindowAttention, x: torch.Tensor, size) -> torch.Tensor:
    calls = []
    real = F.scaled_dot_product_attention

    def explicit(q, k, v, scale=None, **kw):
        calls.append(scale)
        return ((q * scale) @ k.transpose(-2, -1)).softmax(-1) @ v

    F.scaled_dot_product_attention = explicit
    try:
        return m(x, size)
    finally:
        F.scaled_dot_product_attention = real
        assert calls == [m.scale]


def test_same_numbers_as_the_explicit_attention():
    torch.manual_seed(0)
    with torch.no_grad():
        bart = BartSelfAttention(64, 4, 0.0).eval()
        x = torch.randn(2, 37, 64)
        torch.testing.assert_close(bart(x), _explicit_bart(bart, x), rtol=1e-5, atol=1e-6)
        ch = ChannelAttention(64, 4).eval()
        x = torch.randn(2, 49, 64)
        torch.testing.assert_close(ch(x, (7, 7)), _explicit_channel(ch, x), rtol=1e-5, atol=1e-6)
        win = WindowAttention(64, 4, 4).eval()
        torch.testing.assert_close(win(x, (7, 7)), _explicit_window(win, x, (7, 7)), rtol=1e-5, atol=1e-6)


def test_modules_call_sdpa(monkeypatch):
    seen = []
    real = F.scaled_dot_product_attention
    monkeypatch.setattr(F, "scaled_dot_product_attention", lambda *a, **k: seen.append(1) or real(*a, **k))
    with torch.no_grad():
        BartSelfAttention(32, 2, 0.0)(torch.randn(1, 5, 32))
        ChannelAttention(32, 2)(torch.randn(1, 9, 32), (3, 3))
        WindowAttention(32, 2, 2)(torch.randn(1, 9, 32), (3, 3))
    assert len(seen) == 3
