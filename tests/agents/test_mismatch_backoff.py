"""A robot that does not fit the policy: reported once, and reconnects back off instead of one per tick."""

from __future__ import annotations

from tests.agents.fake_server import FakeBehaviour, FakeServer
from xvla.agents.backoff import BackoffConfig
from xvla.agents.client import ClientConfig, PolicyClient
from xvla.agents.control_loop import ControlLoop, LoopConfig
from xvla.agents.sim_r1pro import SimR1Pro


def test_a_refused_observation_is_reported_once_and_reconnects_back_off(caplog):
    # The fake accepts only a 20-d proprio: every 23-d observation of the R1Pro ends its stream
    # with INVALID_ARGUMENT, as the real service does for a 20-d bundle.
    with FakeServer(FakeBehaviour(accepted_proprio_dims=(20,))) as srv:
        cfg = ClientConfig([srv.target], connect_timeout_s=0.5, reply_timeout_s=1.0,
                           backoff=BackoffConfig(initial_s=0.05, max_s=0.4, jitter=0.0))  # deterministic delays
        with PolicyClient(cfg) as client:
            st = ControlLoop(SimR1Pro(), client, None, LoopConfig(rate_hz=30.0)).run(ticks=60)
    assert st.ticks + st.skipped_ticks == 60 and st.safe_ticks == st.ticks and st.fresh_ticks == 0
    assert "observation.proprio" in st.problem and "INVALID_ARGUMENT" in st.problem
    # 2 s with delays 0.05, 0.1, 0.2, 0.4, 0.4, ...: session k opens no earlier than the sum of the first k-1
    # delays (0.75 s for four, then 0.4 s each), so at most 8 fit in 2 s (9 with the loop's own shutdown),
    # and more than one happens: never one per tick (60), never a single give-up.
    assert 2 <= st.sessions <= 9, st.format()
    assert st.backoffs >= st.sessions - 1
    assert "MISMATCH" in st.format()
    refusals = [r for r in caplog.records if r.levelname == "ERROR" and "refuses this robot" in r.getMessage()]
    assert len(refusals) == 1, [r.getMessage() for r in refusals]  # reported once, not once per reconnect
