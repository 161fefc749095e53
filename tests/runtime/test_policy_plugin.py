"""A third policy kind, defined here in a few lines, served through the real server: the boundary is real.

Nothing below touches an X-VLA file: the toy kind registers itself under its manifest's
``policy_kind``, its bundle is a folder with a format-2 manifest (no graphs: the toy computes in
numpy), and a Stream runs through xvla-serve's PolicyServer, session, execution plan and batching.
"""

from __future__ import annotations

from pathlib import Path

import grpc
import numpy as np
import pytest

from xvla.benchmarks.serving import serve_in_background
from xvla.benchmarks.stream_client import run_stream
from xvla.core.manifest import FORMAT_VERSION, BundleError, write_manifest
from xvla.core.tensors import encode_image_raw, numpy_to_tensor
from xvla.proto import policy_pb2 as pb
from xvla.runtime import policies
from xvla.runtime.policies.base import Chunk, PlanContext, PolicySpec, Timings

H, D = 4, 2


class ToyPolicy:
    """actions[j] = gain * proprio + j: a robot reporting proprio = 0 gets j at the j-th frame of a chunk."""

    kind = "toy"

    def __init__(self, bundle, engines, route):
        self.bundle, self.engines, self.route = bundle, dict(engines), route
        self.gain = float(bundle.policy["gain"])
        self.spec = PolicySpec(kind=self.kind, name=bundle.name, action_dim=bundle.dim, horizon=bundle.horizon,
                               camera_names=bundle.camera_names, image_size=bundle.image_size,
                               proprio_dims=bundle.proprio_dims, gripper_dims=bundle.gripper_dims)

    @classmethod
    def from_bundle(cls, bundle, engines, *, seed=None, route=""):
        return cls(bundle, engines, route or bundle.name)

    def prepare(self, observation, timings: Timings, field="observation"):
        with timings.stage("toy_prepare"):
            return observation.proprio

    def gate_signals(self, prepared, timings):
        return None

    def plan(self, prepared, context: PlanContext, timings: Timings) -> Chunk:
        with timings.stage("toy_plan"):
            actions = self.gain * prepared[None, :] + np.arange(H, dtype=np.float32)[:, None]
        return Chunk(actions=actions.astype(np.float32), timings=timings, text="toy says hi")

    def warmup(self, batch_sizes=(1,)):
        return 0.0

    def close(self):
        pass


def toy_bundle(root: Path, kind: str = "toy") -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "weights.json").write_text('{"gain": 2.0}')
    write_manifest(root, {
        "format_version": FORMAT_VERSION, "policy_kind": kind, "exporter": {"name": "test", "version": "0", "onnx_opset": 20},
        "model_name": "toy", "embodiment": None, "action": {"dim": D, "horizon": H, "gripper_dims": []},
        "cameras": {"names": ["cam"], "image_size": [8, 8], "needs_pose": False}, "proprio": {"dims": [D]},
        "skills": [], "tasks": [], "graphs": {}, "precision": "fp32", "max_batch": 4, "files": {},
        "parity": None, "tensorrt": None, "policy": {"gain": 2.0},
    })
    return root


def observation(frame: int) -> pb.Observation:
    o = pb.Observation(frame_index=frame)
    o.cameras.add(name="cam", image=encode_image_raw(np.zeros((8, 8, 3), np.uint8)))
    o.proprio.CopyFrom(numpy_to_tensor(np.zeros(D, np.float32)))
    return o


async def test_a_toy_policy_kind_serves_a_stream_through_the_real_server(tmp_path):
    policies.register("toy", ToyPolicy)
    header = pb.SessionHeader(task_id=-1, execution=pb.ExecutionSettings(mode=pb.RECEDING_HORIZON, execute_horizon=H))
    async with serve_in_background(toy_bundle(tmp_path / "toy")) as (server, port):
        res = await run_stream(f"127.0.0.1:{port}", header, observation, n=3 * H, rate_hz=None)
    assert res.code == grpc.StatusCode.OK, res.details
    assert res.accepted.policy.policy_kind == "toy"
    assert [t.frame for t in res.ticks] == list(range(3 * H))
    # the toy's j-th action is j: every frame gets the action of its offset from the frame its chunk was planned at
    assert all(float(t.action[0]) == t.frame - t.reply.planned_from_frame for t in res.ticks)
    assert {t.reply.planned_from_frame for t in res.ticks} != {0}  # replanned: more than one chunk was served
    first = res.ticks[0].reply
    assert first.text == "toy says hi" and set(first.timings.stage_ms) == {"toy_prepare", "toy_plan"}


def test_an_unknown_kind_is_a_load_error_naming_it_and_the_known_kinds(tmp_path):
    with pytest.raises(BundleError, match=r"policy_kind 'nope'.*known: \[.*'xvla'"):
        policies.load_policy(toy_bundle(tmp_path / "nope", kind="nope"))
