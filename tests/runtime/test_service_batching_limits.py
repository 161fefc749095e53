"""--max-batch is clamped to what the engines accept (issue 13 fix 6); warm-up covers the bundle's
batch list for engines with per-batch state (fix 5), batch 1 only for CPU engines."""

from __future__ import annotations

import logging

from tests.runtime.fakes import FakeAction, FakeVLM, fake_factory, fake_policy
from xvla.runtime.service import PolicyService, ServiceConfig
from xvla.runtime.skills import RoutingTable


class ProfiledAction(FakeAction):
    """A FakeAction with TensorRT-like limits: a profile max of 4 rows and per-batch state."""

    batch_limit = 4
    warms_per_batch = True


def _service(tmp_path, action, **cfg):
    pol = fake_policy(tmp_path / "fake", vlm=FakeVLM(), action=action)
    pol.bundle.manifest["max_batch"] = 16
    svc = PolicyService(RoutingTable.single(tmp_path / "fake"), ServiceConfig(**cfg),
                        policy_factory=fake_factory({"default": pol}))
    return svc, pol


def test_max_batch_clamped_to_the_engine_profiles(tmp_path, caplog):
    svc, pol = _service(tmp_path, ProfiledAction(), max_batch=16)
    with caplog.at_level(logging.WARNING):
        svc.load()
    try:
        assert pol.engines["action"].max_batch == 4 and pol.engines["vlm"].max_batch == 4
        assert svc.max_batch["default"] == 4
        assert "--max-batch 16 exceeds what the engines accept (action <= 4); using 4" in caplog.text
        # warm-up ran each bucket top of the (clamped) batch list: 1 and 4
        assert sorted(set(pol.engines["action"].engine.batch_sizes)) == [1, 4]
    finally:
        svc.close()


def test_cpu_engines_warm_batch_one_only(tmp_path):
    svc, pol = _service(tmp_path, FakeAction())
    svc.load()
    try:
        assert pol.engines["action"].max_batch == 16
        assert set(pol.engines["action"].engine.batch_sizes) == {1}
        assert svc.warmup_batches("default", pol) == [1]
    finally:
        svc.close()
