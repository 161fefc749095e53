"""Action spaces: no in-place writes, per-dimension rules, per-sample delta for any batch size."""

from __future__ import annotations

import pytest
import torch

from xvla.export.policies.xvla.model import (
    R1PRO_IDX_FOR_DELTA,
    AutoActionSpace,
    EE6DActionSpace,
    JointActionSpace,
    XVLAConfig,
    build_action_space,
)


@pytest.mark.parametrize("space", [EE6DActionSpace(), JointActionSpace()])
def test_gripper_spaces(space) -> None:
    proprio, action = torch.randn(3, space.dim), torch.randn(3, 30, space.dim)
    p0, a0 = proprio.clone(), action.clone()
    pm, am = space.preprocess(proprio, action)
    assert torch.equal(proprio, p0) and torch.equal(action, a0)  # callers' tensors untouched
    g = list(space.gripper_dims)
    assert torch.all(pm[:, g] == 0) and torch.all(am[..., g] == 0)
    others = [i for i in range(space.dim) if i not in g]
    assert torch.equal(pm[:, others], proprio[:, others]) and torch.equal(am[..., others], action[..., others])
    out = space.postprocess(action)
    assert torch.equal(action, a0)
    assert torch.allclose(out[..., g], torch.sigmoid(action[..., g]))
    assert torch.equal(out[..., others], action[..., others])


def test_ee6d_layout() -> None:
    space = build_action_space(XVLAConfig.preset("tiny"))
    assert (space.mode, space.dim, space.model_dim, space.gripper_dims) == ("ee6d", 20, 20, (9, 19))


@pytest.mark.parametrize("batch", [1, 2, 3, 30])
def test_delta_is_per_sample_for_any_batch(batch: int) -> None:
    space = AutoActionSpace(23, 23, idx_for_delta=R1PRO_IDX_FOR_DELTA)
    action, proprio = torch.randn(batch, 30, 23), torch.randn(batch, 23)
    out = space.postprocess(action, proprio)
    for b in range(batch):  # the intended semantics, one sample at a time
        expected = action[b].clone()
        expected[:, list(R1PRO_IDX_FOR_DELTA)] += proprio[b, list(R1PRO_IDX_FOR_DELTA)]
        assert torch.equal(out[b], expected)


def test_auto_pads_masks_and_trims() -> None:
    space = AutoActionSpace(real_dim=5, max_dim=8, idx_for_delta=(1,), idx_for_mask_proprio=(2,))
    proprio, action = torch.randn(2, 5), torch.randn(2, 30, 5)
    p0 = proprio.clone()
    pm, am = space.preprocess(proprio, action)
    assert torch.equal(proprio, p0)
    assert pm.shape == (2, 8) and am.shape == (2, 30, 8)
    assert torch.all(pm[:, 5:] == 0) and torch.all(am[..., 5:] == 0) and torch.all(pm[:, 2] == 0)
    assert torch.equal(pm[:, [0, 1, 3, 4]], proprio[:, [0, 1, 3, 4]])
    raw = torch.randn(2, 30, 8)
    out = space.postprocess(raw, proprio)
    assert out.shape == (2, 30, 5)
    assert torch.equal(out[..., 1], raw[..., 1] + proprio[:, None, 1])
    assert torch.equal(out[..., [0, 2, 3, 4]], raw[..., [0, 2, 3, 4]])


def test_errors_name_the_problem() -> None:
    space = AutoActionSpace(23, 23, idx_for_delta=(3,))
    with pytest.raises(ValueError, match="proprio"):
        space.postprocess(torch.randn(1, 30, 23))
    with pytest.raises(ValueError, match="proprio"):
        space.preprocess(torch.randn(1, 7), torch.randn(1, 30, 23))
    with pytest.raises(ValueError, match="idx_for_delta"):
        AutoActionSpace(5, 5, idx_for_delta=(7,))


def test_masks_are_buffers_built_once(monkeypatch) -> None:
    """Issue 13 fix 7: the per-dim masks are non-persistent buffers, never a tensor built from a list per call
    (a host->device copy per denoising step on a GPU, illegal inside CUDA-graph capture)."""
    space = AutoActionSpace(23, 23, idx_for_delta=R1PRO_IDX_FOR_DELTA, idx_for_mask_proprio=(3, 4))
    buffers = dict(space.named_buffers())
    assert set(buffers) == {"gripper_dims_mask", "sigmoid_dims_mask", "idx_for_delta_mask", "idx_for_mask_proprio_mask"}
    assert buffers["idx_for_delta_mask"].nonzero().flatten().tolist() == list(R1PRO_IDX_FOR_DELTA)
    assert space.state_dict() == {}  # checkpoints (strict loads) do not change

    def no_tensor(*a, **k):
        raise AssertionError("torch.tensor called inside an action-space call")

    proprio, action = torch.randn(2, 23), torch.randn(2, 30, 23)
    monkeypatch.setattr(torch, "tensor", no_tensor)
    pm, _ = space.preprocess(proprio, action)
    out = space.postprocess(action, proprio)
    monkeypatch.undo()
    assert torch.all(pm[:, [3, 4]] == 0)
    assert torch.allclose(out[..., list(R1PRO_IDX_FOR_DELTA)],
                          action[..., list(R1PRO_IDX_FOR_DELTA)] + proprio[:, None, list(R1PRO_IDX_FOR_DELTA)])
    # they follow the module to another device (meta: no memory, same code path as cuda)
    space.to("meta")
    assert all(b.device.type == "meta" for b in space.buffers())
    pm, am = EE6DActionSpace().to("meta").preprocess(torch.randn(1, 20, device="meta"),
                                                     torch.randn(1, 30, 20, device="meta"))
    assert pm.device.type == "meta" and am.shape == (1, 30, 20)


def test_model_state_dict_has_no_mask_entries() -> None:
    from xvla.export.policies.xvla.model import XVLA

    model = XVLA(XVLAConfig.preset("tiny"))
    assert not [k for k in model.state_dict() if k.endswith("_mask") and k.startswith("action_space")]
    assert any(n.startswith("action_space.") for n, _ in model.named_buffers())
