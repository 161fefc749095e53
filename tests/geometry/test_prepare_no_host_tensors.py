"""DA3 input preparation builds no tensor from Python values per call (issue 13: a host->device copy per
chunk, illegal inside CUDA-graph capture) and computes exactly what the constant-tensor form did."""

from __future__ import annotations

import torch

from xvla.export.policies.xvla.model.geometry import IMAGENET_MEAN, IMAGENET_STD


def _reference(image_input, intrinsics, th, tw):
    b, v, c, h, w = image_input.shape
    mean = torch.tensor(IMAGENET_MEAN, dtype=torch.float32).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, dtype=torch.float32).view(1, 3, 1, 1)
    x = (image_input.float() * std + mean).clamp(0.0, 1.0)
    x = torch.nn.functional.interpolate(x.reshape(b * v, c, h, w), size=(th, tw), mode="bilinear",
                                        align_corners=False).reshape(b, v, c, th, tw)
    sw, sh = tw / float(w), th / float(h)
    k = intrinsics.float() * torch.tensor([[sw, 1.0, sw], [1.0, sh, sh], [1.0, 1.0, 1.0]])
    return x, k


def test_prepare_inputs_is_exact_and_builds_no_tensor(monkeypatch):
    from xvla.benchmarks.presets import build_model

    model = build_model("tiny-geo", seed=0)
    enc = next(m for m in model.modules() if type(m).__name__ == "DA3InlineEncoder")
    torch.manual_seed(0)
    img, k = torch.randn(2, 3, 3, 56, 70), torch.randn(2, 3, 3, 3)  # skew and row-1 terms non-zero
    th, tw = enc.target_size(56, 70)
    ref_x, ref_k = _reference(img, k, th, tw)

    def no_tensor(*a, **kw):
        raise AssertionError("torch.tensor called inside prepare_inputs")

    monkeypatch.setattr(torch, "tensor", no_tensor)
    x, k2 = enc.prepare_inputs(img, k)
    monkeypatch.undo()
    assert torch.equal(x, ref_x) and torch.equal(k2, ref_k)
