"""``xvla-agent`` as users run it: separate processes, talking over loopback."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request

import numpy as np

from tests.agents.fake_server import FakeServer, fake_chunk
from tests.agents.helpers import free_port
from xvla.agents.bridges.codecs import json_numpy_dumps

AGENT = [sys.executable, "-m", "xvla.agents.cli"]


def test_run_prints_json_statistics():
    with FakeServer() as srv:
        r = subprocess.run(AGENT + ["run", "--target", srv.target, "--seconds", "1.5", "--json", "--frames", "bicubic",
                                    "--max-new-tokens", "7"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert srv.record.headers[0].HasField("max_new_tokens") and srv.record.headers[0].max_new_tokens == 7
    s = json.loads(r.stdout)
    assert s["ticks"] + s["skipped_ticks"] == 45 and s["accounted"]
    assert s["fresh_ticks"] + s["plan_ticks"] + s["safe_ticks"] == s["ticks"]
    assert s["sessions"] == 1 and s["replies"] > 30
    assert s["wire_bytes_per_frame"] < s["raw_bytes_per_frame"]
    # the per-tick timeline and the session events, with times since the loop's start
    assert len(s["timeline"]) == len(s["tick_t_s"]) == s["ticks"] and set(s["timeline"]) <= set("FPS")
    assert s["timeline"].count("F") == s["fresh_ticks"] and s["tick_t_s"] == sorted(s["tick_t_s"])
    assert 0 <= s["tick_t_s"][0] and s["tick_t_s"][-1] <= s["duration_s"] + 0.1
    opens = [e for e in s["events"] if e["event"] == "session_open"]
    assert len(opens) == 1 and opens[0]["detail"] == srv.target and s["t0_monotonic"] > 0


def test_describe_and_a_clear_error_without_server():
    with FakeServer() as srv:
        r = subprocess.run(AGENT + ["describe", "--target", srv.target], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and json.loads(r.stdout)["model_name"] == "fake"
    r = subprocess.run(AGENT + ["describe", "--target", f"127.0.0.1:{free_port()}", "--connect-timeout", "0.3"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "no policy service answered" in r.stderr


def test_http_bridge_process_serves_until_sigterm():
    port = free_port()
    with FakeServer() as srv:
        p = subprocess.Popen(AGENT + ["bridge", "http", "--target", srv.target, "--host", "127.0.0.1", "--port", str(port)],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            deadline = time.monotonic() + 30
            while True:
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as r:
                        assert r.status == 200
                        break
                except (urllib.error.URLError, ConnectionError):
                    assert time.monotonic() < deadline and p.poll() is None, p.stderr.read() if p.poll() is not None else "timeout"
                    time.sleep(0.2)
            body = json.dumps({"image0": json_numpy_dumps(np.zeros((224, 224, 3), np.uint8)),
                               "proprio": json_numpy_dumps(np.zeros(23, np.float32)), "language_instruction": "x",
                               "domain_id": 19}).encode()
            req = urllib.request.Request(f"http://127.0.0.1:{port}/act", data=body, method="POST",
                                         headers={"Content-Type": "application/json"})
            with urllib.request.urlopen(req, timeout=30) as r:
                np.testing.assert_allclose(np.array(json.loads(r.read())["action"]), fake_chunk(0), rtol=1e-6)
        finally:
            p.send_signal(signal.SIGTERM)
            rc = p.wait(timeout=30)
    assert rc == 0


def test_run_defaults_to_the_address_xvla_serve_listens_on_with_no_flags():
    from xvla.agents.cli import DEFAULT_TARGET, build_parser, client_config
    from xvla.runtime.cli import build_parser as serve_parser

    serve = serve_parser().parse_args([])
    assert DEFAULT_TARGET == f"{serve.host}:{serve.port}"
    assert client_config(build_parser().parse_args(["run"])).targets == [DEFAULT_TARGET]

