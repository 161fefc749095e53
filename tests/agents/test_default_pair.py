"""The documented pair, as a new user runs it: ``xvla-serve`` with no arguments + ``xvla-agent run``.

Both sides must use the same embedded default (the seeded tiny R1Pro v20 BEHAVIOR-style bundle):
300 ticks in 10 s, only cold-start ticks safe, one session, no reconnects, no mismatch.
The exported bundle comes from the session cache (tests/bundles.py) and is placed where
``xvla-serve`` looks for its default (``--artifacts DIR``/<default preset>), so nothing here
passes a bundle or a preset.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.realtime import assert_safe_ticks_explained
from tests.support.serve import REPO, xvla_serve

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def default_service(tmp_path_factory):
    bundles = pytest.importorskip("tests.bundles")
    from xvla.runtime.artifacts import DEFAULT_PRESET

    root = tmp_path_factory.mktemp("default-pair")
    bundle = Path(bundles.make_tiny_bundle(root / "cache", preset=DEFAULT_PRESET, parity=False))
    artifacts = root / "artifacts"
    artifacts.mkdir()
    (artifacts / DEFAULT_PRESET).symlink_to(bundle, target_is_directory=True)
    with xvla_serve(["--artifacts", str(artifacts)], root / "serve.log") as (target, desc):
        yield target, desc


def test_xvla_serve_defaults_and_xvla_agent_run_fit_each_other(default_service):
    target, desc = default_service
    assert desc.action_space.dim == 23 and len(desc.tasks) > 0 and len(desc.skills) > 0
    r = subprocess.run([sys.executable, "-m", "xvla.agents.cli", "run", "--target", target, "--seconds", "10", "--json"],
                       cwd=REPO, capture_output=True, text=True, timeout=120, env=dict(os.environ, HF_HUB_OFFLINE="1"))
    assert r.returncode == 0, r.stderr[-3000:]
    st = json.loads(r.stdout)
    # 300 clock slots; on this shared 2-core machine an outside burst of load may cost a slot or two
    # (the wall-clock tests of test_e2e.py hold the loop itself to zero skipped ticks).
    assert st["ticks"] + st["skipped_ticks"] == 300 and st["skipped_ticks"] <= 3, st
    assert st["sessions"] == 1 and st["reconnects"] == 0 and st["connect_failures"] == 0, st
    assert st["problem"] == "" and st["invalid_replies"] == 0, st
    # Safe ticks only while the first chunk is planned (cold start), or while the service was silent
    # longer than the hold timeout (another job took the CPU): each one's cause is in the record.
    assert_safe_ticks_explained(st)
    assert st["fresh_ticks"] + st["plan_ticks"] > st["ticks"] // 2, st  # the policy drove the robot
    # the default's skill gate is visible from the robot: every chunk names a skill of the policy and its route
    skills = {s.name for s in desc.skills}
    assert st["skill_chunks"] and all(k.split(" @ ")[0] in skills for k in st["skill_chunks"]), st["skill_chunks"]
