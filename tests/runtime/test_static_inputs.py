"""The chunk's conditioning is bound once per chunk, each denoising step sends only x_t and t
(issue 13 fix 4: the VLM features were re-sent, i.e. re-uploaded on a GPU, at every one of the 10 steps)."""

from __future__ import annotations

import numpy as np

from tests.runtime.fakes import FakeAction, fake_policy
from tests.runtime.test_policy_fake import inputs
from xvla.runtime.batching import BatchingEngine


class CountingAction(FakeAction):
    """FakeAction that records bind_static / run_bound calls and what each call carried."""

    def __init__(self) -> None:
        super().__init__()
        self.bound: list[set[str]] = []
        self.step_inputs: list[set[str]] = []

    def bind_static(self, arrays):
        self.bound.append(set(arrays))
        return super().bind_static(arrays)

    def run_bound(self, static, inputs):
        self.step_inputs.append(set(inputs))
        return super().run_bound(static, inputs)


def test_conditioning_bound_once_per_chunk(tmp_path):
    action = CountingAction()
    pol = fake_policy(tmp_path / "p", action=action)
    plain = fake_policy(tmp_path / "q").generate_actions(**inputs(), steps=10)
    out = pol.generate_actions(**inputs(), steps=10)
    np.testing.assert_allclose(out, plain)  # same chunk as the unbound path
    assert len(action.bound) == 1 and {"vlm_features", "proprio", "domain_id"} <= action.bound[0]
    assert action.step_inputs == [{"x_t", "t"}] * 10


def test_batcher_forwards_the_handle_for_a_lone_caller(tmp_path):
    action = CountingAction()
    pol = fake_policy(tmp_path / "p", action=action)
    pol.engines["action"] = BatchingEngine(action, max_batch=8, window_ms=0.0)
    try:
        pol.generate_actions(**inputs(), steps=4)
    finally:
        pol.engines["action"].close()
    assert len(action.bound) == 1 and action.step_inputs == [{"x_t", "t"}] * 4
