"""The inverse of the action-space postprocess, for real-time chunking prefixes.

RTC imposes already-committed robot actions on the denoising state of the next chunk,
which lives in the model's raw space (before sigmoid and before the delta decode). The
delta dims are re-encoded against the proprio of the observation the new chunk is planned
from: that is the proprio the new chunk's postprocess will add back, so the robot gets
exactly the committed action again.
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np

_EPS = 1e-6


def unpostprocess_actions(actions: np.ndarray, proprio: np.ndarray, action_space: Mapping[str, Any]) -> np.ndarray:
    """Robot actions [B, P, D] -> raw model actions [B, P, Dm] such that postprocess gives them back.

    ``proprio`` is [B, D] or [B, Dm] (the new observation's). Dims beyond D (auto mode's
    padding) are zero, as the model saw them in training.
    """
    actions = np.asarray(actions, dtype=np.float32)
    dim = int(action_space["dim"])
    model_dim = int(action_space.get("model_dim", dim))
    if actions.ndim != 3 or actions.shape[-1] != dim:
        raise ValueError(f"committed actions must be [B, P, {dim}], got {actions.shape}")
    raw = np.zeros(actions.shape[:-1] + (model_dim,), np.float32)
    raw[..., :dim] = actions
    delta = [int(i) for i in action_space.get("idx_for_delta", [])]
    if delta:
        p = np.zeros((proprio.shape[0], model_dim), np.float32)
        p[:, : proprio.shape[1]] = proprio[:, :model_dim]
        raw[..., delta] -= p[:, None, delta]
    sig = [int(i) for i in action_space.get("sigmoid_dims", [])]
    if sig:
        s = np.clip(raw[..., sig], _EPS, 1.0 - _EPS)
        raw[..., sig] = np.log(s) - np.log1p(-s)
    return raw
