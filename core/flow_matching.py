"""The X-VLA flow-matching loop and action post-processing in numpy (no torch).

Part of the bundle contract (``manifest.policy.denoising.schedule = "x0_reflow"``), hence in the
core: one implementation shared by the serving runtime and by the exporter's parity gate, so the
arithmetic that the parity gate checks is exactly the arithmetic the robot gets.

It reproduces the official ``generate_actions`` bit for bit in float32 (README §5 of the
conformance goldens): the network predicts the CLEAN action (x0), and every step re-noises
from the SAME x1 (this is not an Euler/velocity update)::

    action = 0
    for i = N..1:   t = float32(i / N)
        x_t = x1 * t + action * (1 - t)
        action = step_fn(x_t, t)          # the exported ``action`` graph (it applies preprocess)
    actions = postprocess(action, proprio)  # sigmoid dims, per-sample delta, trim to ``dim``
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, Optional

import numpy as np

StepFn = Callable[[np.ndarray, np.ndarray], np.ndarray]


def time_grid(steps: int) -> list[np.float32]:
    """t for each call, N/N .. 1/N: the Python float ``i / N`` rounded once to float32, as the official code."""
    steps = int(steps)
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    return [np.float32(i / steps) for i in range(steps, 0, -1)]


def flow_matching_chunk(step_fn: StepFn, x1: np.ndarray, steps: int, prefix: Optional[np.ndarray] = None,
                        prefix_len: int = 0) -> np.ndarray:
    """Run the denoising loop -> the raw clean-action prediction [B, T, Dm] (before postprocess).

    Args:
        step_fn: ``(x_t [B, T, Dm] float32, t [B] float32) -> action [B, T, Dm]``; one call of
            the ``action`` graph with the chunk's conditioning bound.
        x1: the noise [B, T, Dm], drawn once per chunk.
        steps: number of denoising steps N.
        prefix: optional committed actions [B, P, Dm] in RAW model space (what this function
            returned for the previous chunk, shifted). Real-time chunking by inpainting: at every
            step the first ``prefix_len`` rows of the current estimate are replaced by the prefix
            before re-noising, so ``x_t[:, :k] = t * x1[:, :k] + (1 - t) * prefix[:, :k]`` is
            exactly the training distribution's noisy version of the committed actions; the
            returned chunk starts with the prefix verbatim.
        prefix_len: how many leading rows of ``prefix`` are committed (``0`` = no inpainting).
    """
    x1 = np.asarray(x1)
    if x1.ndim != 3:
        raise ValueError(f"x1 (noise) must be [B, T, Dm], got shape {list(x1.shape)}")
    x1 = x1.astype(np.float32, copy=False)
    b, horizon, dm = x1.shape
    k = int(prefix_len)
    if k < 0 or k > horizon:
        raise ValueError(f"prefix_len must be in [0, {horizon}], got {k}")
    committed: Optional[np.ndarray] = None
    if k > 0:
        if prefix is None:
            raise ValueError("prefix_len > 0 but no prefix given")
        prefix = np.asarray(prefix, np.float32)
        if prefix.ndim != 3 or prefix.shape[0] != b or prefix.shape[2] != dm or prefix.shape[1] < k:
            raise ValueError(f"prefix must be [B={b}, P>={k}, Dm={dm}], got shape {list(prefix.shape)}")
        committed = prefix[:, :k]

    action = np.zeros_like(x1)
    one = np.float32(1.0)
    for t_val in time_grid(steps):
        if committed is not None:
            action[:, :k] = committed
        t = np.full((b,), t_val, dtype=np.float32)
        x_t = x1 * t[:, None, None] + action * (one - t)[:, None, None]
        out = np.asarray(step_fn(x_t, t))
        if out.shape != x1.shape:
            raise ValueError(f"step_fn returned shape {list(out.shape)}, expected {list(x1.shape)}")
        action = out.astype(np.float32, copy=True)
    if committed is not None:
        action[:, :k] = committed
    return action


def _sigmoid(x: np.ndarray) -> np.ndarray:
    # exp of a non-positive argument only: no overflow warnings for large |x|.
    e = np.exp(-np.abs(x))
    return np.where(x >= 0, 1.0 / (1.0 + e), e / (1.0 + e)).astype(x.dtype, copy=False)


def postprocess_actions(action: np.ndarray, proprio: Optional[np.ndarray],
                        action_space: Mapping[str, Any]) -> np.ndarray:
    """Raw x0 prediction [B, T, Dm] -> robot actions [B, T, dim].

    ``action_space`` is the bundle manifest's ``action_space`` block. In order:
    sigmoid on ``sigmoid_dims`` (ee6d gripper logits), ``action[b, :, i] += proprio[b, i]`` for
    ``i`` in ``idx_for_delta`` (per sample, any batch size), trim to ``dim``. ``proprio`` is the
    UNMASKED proprio [B, dim] or [B, Dm]; it may be None when there are no delta dims.
    Never writes into its arguments.
    """
    out = np.array(action, dtype=np.float32, copy=True)
    if out.ndim != 3:
        raise ValueError(f"action must be [B, T, Dm], got shape {list(out.shape)}")
    b, _, dm = out.shape
    sig = [int(i) for i in action_space.get("sigmoid_dims", []) or []]
    delta = [int(i) for i in action_space.get("idx_for_delta", []) or []]
    dim = int(action_space.get("dim", dm))
    for name, idx in (("sigmoid_dims", sig), ("idx_for_delta", delta)):
        bad = [i for i in idx if not 0 <= i < dm]
        if bad:
            raise ValueError(f"action_space.{name} has indices {bad} outside [0, {dm})")
    if sig:
        out[..., sig] = _sigmoid(out[..., sig])
    if delta:
        if proprio is None:
            raise ValueError(f"proprio is required: action_space.idx_for_delta = {delta}")
        p = np.asarray(proprio, np.float32)
        if p.ndim != 2 or p.shape[0] != b:
            raise ValueError(f"proprio must be [B={b}, D], got shape {list(p.shape)}")
        if max(delta) >= p.shape[1]:
            raise ValueError(f"proprio has {p.shape[1]} dims but idx_for_delta reaches {max(delta)}")
        out[..., delta] += p[:, None, delta]
    if dim > dm:
        raise ValueError(f"action_space.dim {dim} exceeds the model dim {dm}")
    return out[..., :dim]


# ---------------------------------------------------------------------------------------------- inverse
# The inverse of the action-space postprocess, for real-time chunking prefixes.
#
# RTC imposes already-committed robot actions on the denoising state of the next chunk,
# which lives in the model's raw space (before sigmoid and before the delta decode). The
# delta dims are re-encoded against the proprio of the observation the new chunk is planned
# from: that is the proprio the new chunk's postprocess will add back, so the robot gets
# exactly the committed action again.
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
