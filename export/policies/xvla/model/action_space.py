"""Action spaces: what the action transformer sees (``preprocess``) and what the robot gets
(``postprocess``).

Semantics follow the official ``action_hub.py`` (2c4fedf for ee6d/joint, the v2 branch for
``auto`` with ``idx_for_delta`` / ``idx_for_mask_proprio``) with two deliberate fixes:

* nothing is modified in place (the official ee6d postprocess and v2 auto preprocess write
  into the caller's tensor);
* the delta is per sample, ``action[b, :, i] += proprio[b, i]``, for ANY batch size (the v2
  code broadcasts ``[B, k]`` against ``[T, k]``, correct only for B = 1).

Every per-dimension rule is a constant boolean mask combined with ``torch.where``, so the
functions trace into static ONNX graphs (no index_put, no data-dependent branches). The masks
are non-persistent buffers built once: they move with the model (``.to(device)``), stay out of
the state dict, and a call never builds a device tensor from a Python list (that was a host
sync per denoising step, and illegal inside CUDA-graph capture).
"""

from __future__ import annotations

from typing import Optional

import torch

from xvla.export.policies.xvla.model.config import XVLAConfig


def _dim_mask(dims: tuple[int, ...], size: int) -> torch.Tensor:
    """[size] bool, True on ``dims`` (built once, at construction, on the CPU).

    The device is explicit: strict checkpoint loads build the model under ``torch.device("meta")``
    and assign only the state dict's tensors, so a non-persistent buffer must hold real data.
    """
    mask = torch.zeros(size, dtype=torch.bool, device="cpu")
    if dims:
        mask[list(dims)] = True
    return mask


_MASKS = ("gripper_dims", "sigmoid_dims", "idx_for_delta", "idx_for_mask_proprio")


class ActionSpace(torch.nn.Module):
    """Base: identity pre/post-processing; subclasses set the per-dimension rules.

    Attributes:
        mode: "ee6d" | "joint" | "auto".
        dim: the action dimension handed to the user (``real_action_dim`` for auto).
        model_dim: the dimension the transformer works in (``max_action_dim`` for auto).
        gripper_dims: zeroed in both inputs before every transformer call.
        sigmoid_dims: squashed by a sigmoid in ``postprocess``.
        idx_for_delta: ``postprocess`` adds proprio to these dims (delta actions).
        idx_for_mask_proprio: proprio dims zeroed before the transformer.
    """

    mode: str = "base"

    def __init__(self, dim: int, model_dim: int, gripper_dims: tuple[int, ...] = (),
                 sigmoid_dims: tuple[int, ...] = (), idx_for_delta: tuple[int, ...] = (),
                 idx_for_mask_proprio: tuple[int, ...] = ()) -> None:
        super().__init__()
        self.dim = int(dim)
        self.model_dim = int(model_dim)
        self.gripper_dims = tuple(int(i) for i in gripper_dims)
        self.sigmoid_dims = tuple(int(i) for i in sigmoid_dims)
        self.idx_for_delta = tuple(int(i) for i in idx_for_delta)
        self.idx_for_mask_proprio = tuple(int(i) for i in idx_for_mask_proprio)
        for name in ("gripper_dims", "sigmoid_dims", "idx_for_delta", "idx_for_mask_proprio"):
            bad = [i for i in getattr(self, name) if not 0 <= i < self.model_dim]
            if bad:
                raise ValueError(f"{name} has indices {bad} outside [0, {self.model_dim})")
        for name in _MASKS:  # [model_dim] bool each; non-persistent: checkpoints are unchanged
            self.register_buffer(f"{name}_mask", _dim_mask(getattr(self, name), self.model_dim), persistent=False)

    def _mask(self, name: str, size: int) -> torch.Tensor:
        mask = getattr(self, f"{name}_mask")
        if size != mask.shape[0]:
            raise ValueError(f"{name}: last dimension is {size}, expected the model dim {mask.shape[0]}")
        return mask

    # -- shape helpers ------------------------------------------------------------------
    def _to_model_dim(self, x: torch.Tensor, name: str) -> torch.Tensor:
        """Zero-pad the last axis from ``dim`` to ``model_dim`` (auto mode's padding)."""
        d = x.shape[-1]
        if d == self.model_dim:
            return x
        if d == self.dim:
            pad = x.new_zeros(*x.shape[:-1], self.model_dim - d)
            return torch.cat([x, pad], dim=-1)
        raise ValueError(f"{name}: last dimension is {d}, expected {self.dim} or {self.model_dim}")

    # -- hooks --------------------------------------------------------------------------
    def preprocess(self, proprio: torch.Tensor, action: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(proprio [B, D|Dm], noisy action [B, T, D|Dm]) -> both in model_dim, rules applied.

        Never writes into the arguments.
        """
        proprio_m = self._to_model_dim(proprio, "proprio")
        action_m = self._to_model_dim(action, "action")
        if self.gripper_dims:
            g = self._mask("gripper_dims", self.model_dim)
            proprio_m = torch.where(g, torch.zeros_like(proprio_m), proprio_m)
            action_m = torch.where(g, torch.zeros_like(action_m), action_m)
        if self.idx_for_mask_proprio:
            m = self._mask("idx_for_mask_proprio", self.model_dim)
            proprio_m = torch.where(m, torch.zeros_like(proprio_m), proprio_m)
        return proprio_m, action_m

    def postprocess(self, action: torch.Tensor, proprio: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Raw x0 prediction [B, T, Dm] -> robot action [B, T, D] (sigmoid, delta, trim).

        ``proprio`` [B, D|Dm] is required when ``idx_for_delta`` is set.
        """
        out = action
        if self.sigmoid_dims:
            s = self._mask("sigmoid_dims", action.shape[-1])
            out = torch.where(s, torch.sigmoid(out), out)
        if self.idx_for_delta:
            if proprio is None:
                raise ValueError(f"postprocess: proprio is required for the delta dims {list(self.idx_for_delta)}")
            p = self._to_model_dim(proprio, "proprio")
            if p.shape[0] != action.shape[0]:
                raise ValueError(f"postprocess: proprio batch {p.shape[0]} != action batch {action.shape[0]}")
            d = self._mask("idx_for_delta", self.model_dim)
            out = torch.where(d, out + p.unsqueeze(1), out)  # per sample: [B,1,Dm] over T
        if self.dim != out.shape[-1]:
            out = out[..., : self.dim]
        return out

    def describe(self) -> dict:
        """The bundle manifest's ``action_space`` block (docs/bundle.md)."""
        return {"mode": self.mode, "dim": self.dim, "model_dim": self.model_dim,
                "idx_for_delta": list(self.idx_for_delta), "idx_for_mask_proprio": list(self.idx_for_mask_proprio),
                "gripper_dims": list(self.gripper_dims), "sigmoid_dims": list(self.sigmoid_dims)}

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.describe()})"


class EE6DActionSpace(ActionSpace):
    """Two arms x (xyz, 6-D rotation, gripper logit) = 20; grippers at 9 and 19."""

    mode = "ee6d"
    DIM = 20
    GRIPPERS = (9, 19)

    def __init__(self) -> None:
        super().__init__(self.DIM, self.DIM, gripper_dims=self.GRIPPERS, sigmoid_dims=self.GRIPPERS)


class JointActionSpace(ActionSpace):
    """Two arms x (6 joints, gripper logit) = 14; grippers at 6 and 13."""

    mode = "joint"
    DIM = 14
    GRIPPERS = (6, 13)

    def __init__(self) -> None:
        super().__init__(self.DIM, self.DIM, gripper_dims=self.GRIPPERS, sigmoid_dims=self.GRIPPERS)


class AutoActionSpace(ActionSpace):
    """Any dimension: real_dim padded to max_dim for the model, optional delta/proprio-mask dims.

    The R1Pro 23-d BEHAVIOR-1K action is ``auto`` with real = max = 23 and
    ``idx_for_delta = R1PRO_IDX_FOR_DELTA``.
    """

    mode = "auto"

    def __init__(self, real_dim: int, max_dim: int, idx_for_delta: tuple[int, ...] = (),
                 idx_for_mask_proprio: tuple[int, ...] = ()) -> None:
        super().__init__(real_dim, max_dim, idx_for_delta=idx_for_delta, idx_for_mask_proprio=idx_for_mask_proprio)


def build_action_space(config: XVLAConfig) -> ActionSpace:
    if config.action_mode == "ee6d":
        return EE6DActionSpace()
    if config.action_mode == "joint":
        return JointActionSpace()
    return AutoActionSpace(config.real_action_dim, config.max_action_dim,
                           config.idx_for_delta, config.idx_for_mask_proprio)
