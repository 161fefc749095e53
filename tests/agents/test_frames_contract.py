"""The robot's frames give the model exactly the pixels the bundle's contract computes from the camera frame.

Reference: the server's own preprocessing (``runtime/policies/xvla/preprocess.py`` ImagePreprocessor: pillow
BICUBIC resize to 224x224, ImageNet normalisation) applied to the original frame. Each way the
agent can send frames goes through the real wire decode (``runtime/wire.py``) and the same
preprocessing, and the resulting ``image_input`` is compared after normalisation.
"""

from __future__ import annotations

import numpy as np
import pytest

from tests.agents.fake_server import FakePolicyService
from xvla.agents.observation import ObservationEncoder
from xvla.agents.sim_r1pro import SimR1Pro

SPEC = {"image_size": [224, 224], "resize_filter": "bicubic", "camera_names": ["head", "left_wrist", "right_wrist"],
        "num_views": 3}


def _image_input(enc: ObservationEncoder, obs) -> np.ndarray:
    from xvla.runtime.policies.xvla.preprocess import ImagePreprocessor
    from xvla.runtime.wire import decode_cameras

    return ImagePreprocessor(SPEC)(decode_cameras(enc.encode(0, obs).observation)).image_input


def _reference(obs) -> np.ndarray:
    from xvla.core.images import CameraInput
    from xvla.runtime.policies.xvla.preprocess import ImagePreprocessor

    return ImagePreprocessor(SPEC)({n: CameraInput(np.ascontiguousarray(img[:, :, :3])) for n, img in obs.images.items()}).image_input


@pytest.fixture(scope="module")
def frames():
    sim = SimR1Pro()
    obs = sim.read_observation()
    rgba = SimR1Pro().read_observation()
    rgba.images = {n: np.concatenate([im, np.full(im.shape[:2] + (1,), 255, np.uint8)], axis=2) for n, im in rgba.images.items()}
    return obs, rgba


@pytest.mark.parametrize("mode", ["original", "bicubic"])
def test_agent_frames_give_the_servers_image_input(frames, mode):
    policy = FakePolicyService().describe()  # cameras at 224x224
    for obs in frames:  # RGB (the simulator) and RGBA (BEHAVIOR's cameras)
        ours = _image_input(ObservationEncoder(policy, frames=mode), obs)
        ref = _reference(obs)
        assert ours.shape == ref.shape == (3, 3, 224, 224)
        assert float(np.abs(ours - ref).max()) == 0.0


def test_the_numpy_shrink_is_not_the_contract(frames):
    """Why it is no longer the default: other pixels than the checkpoint was trained on."""
    obs = frames[0]
    ours = _image_input(ObservationEncoder(FakePolicyService().describe(), frames="numpy"), obs)
    assert float(np.abs(ours - _reference(obs)).max()) > 0.05
