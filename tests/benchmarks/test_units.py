"""Unit tests of the benchmark building blocks (no servers, no bundles): fast and deterministic."""

from __future__ import annotations

import json

import numpy as np
import pytest

from xvla.benchmarks.closed_loop import FleetRun
from xvla.benchmarks.machine import MachineInfo, gpu_peak_tflops, theoretical_cpu_gflops
from xvla.benchmarks.peers import codecs
from xvla.benchmarks.profiles import PROFILES, expected_memory_gib, get_profile
from xvla.benchmarks.servers import metric_value
from xvla.benchmarks.stats import Distribution, time_call


def test_distribution_matches_numpy_percentiles() -> None:
    rng = np.random.default_rng(3)
    x = rng.exponential(5.0, 1000)
    d = Distribution.of(x.tolist() + [float("nan")])  # NaN samples are dropped, not propagated
    assert d.n == 1000
    assert d.p50 == pytest.approx(np.percentile(x, 50))
    assert d.p90 == pytest.approx(np.percentile(x, 90))
    assert d.p99 == pytest.approx(np.percentile(x, 99))
    assert d.min == pytest.approx(x.min()) and d.max == pytest.approx(x.max())
    assert Distribution.of([]).n == 0


def test_time_call_warms_up_unsampled_and_syncs_every_sample() -> None:
    calls, syncs = [], []
    run = time_call(lambda: calls.append(1), warmup=3, iters=7, sync=lambda: syncs.append(1))
    assert len(calls) == 10 and len(run.samples_ms) == 7
    assert len(syncs) == 3 + 2 * 7  # after each warm-up call; before and after each sample
    assert run.dist.n == 7


def test_time_call_stops_at_max_seconds_but_keeps_three_samples() -> None:
    import time

    run = time_call(lambda: time.sleep(0.02), warmup=0, iters=1000, max_seconds=0.01)
    assert len(run.samples_ms) == 3
    assert min(run.samples_ms) >= 19.0


@pytest.mark.parametrize("dtype", [np.float32, np.uint8, np.int64])
def test_json_numpy_and_msgpack_round_trip_arrays(dtype) -> None:
    a = (np.arange(24).reshape(2, 3, 4) % 200).astype(dtype)
    obj = {"image0": a, "text": "pick up", "n": 3}
    back = codecs.json_loads(codecs.json_dumps(obj))
    np.testing.assert_array_equal(back["image0"], a)
    assert back["image0"].dtype == a.dtype and back["text"] == "pick up" and back["n"] == 3
    back = codecs.msgpack_loads(codecs.msgpack_dumps({"data": obj}))["data"]
    np.testing.assert_array_equal(back["image0"], a)
    # base64 inflates the payload by 4/3: the JSON body is bigger than the raw bytes
    assert len(codecs.json_dumps({"x": np.zeros(3000, np.uint8)})) > 4000


def test_pickle_pieces_split_at_two_megabytes_and_rejoin() -> None:
    payload = codecs.pickle_dumps({"img": np.random.default_rng(0).integers(0, 255, 5_000_000, dtype=np.uint8)})
    msgs = codecs.pieces(payload)
    assert len(msgs) == 3 and all(len(m) <= codecs.PIECE_BYTES + 1 for m in msgs)
    assert [m[0] for m in msgs] == [codecs.TRANSFER_BEGIN, codecs.TRANSFER_MIDDLE, codecs.TRANSFER_END]
    assert codecs.join_pieces(msgs) == payload
    assert codecs.pieces(b"abc") == [bytes([codecs.TRANSFER_END]) + b"abc"]


def test_metric_value_sums_matching_samples_only() -> None:
    text = "\n".join([
        "# HELP xvla_chunks_total chunks", "# TYPE xvla_chunks_total counter",
        'xvla_chunks_total{route="tiny"} 12.0', 'xvla_chunks_total{route="big"} 3.0',
        'xvla_chunks_created{route="tiny"} 1.7e9', "xvla_chunks_total_other 99",
    ])
    assert metric_value(text, "xvla_chunks_total") == 15.0
    assert metric_value(text, "xvla_chunks_total", 'route="big"') == 3.0
    assert metric_value(text, "absent") == 0.0


def test_quick_profile_is_the_ci_cut_of_every_profile() -> None:
    for name, prof in PROFILES.items():
        q = prof.quick()
        assert q.name == f"{name}-quick" and q.batch_sizes == (1,) and len(q.presets) == 1
        assert q.fleet_sizes == (1, 2) and q.fleet_seconds <= 2 and q.iters <= 3
        assert q.fleet_presets == q.presets and q.comparison_presets == q.presets
    with pytest.raises(KeyError, match="unknown profile"):
        get_profile("tpu")


def test_expected_memory_grows_with_precision_and_batch() -> None:
    params = 900_000_000
    fp16, fp32 = expected_memory_gib(params, "fp16", 1), expected_memory_gib(params, "fp32", 1)
    assert fp32 - fp16 == pytest.approx(params * 2 / 2**30)
    assert expected_memory_gib(params, "fp16", 8) > fp16
    for name in ("a6000", "h200"):  # the GPU profiles' largest case fits their card (DA3-XVLA: 1.39B counted)
        prof = PROFILES[name]
        assert expected_memory_gib(1_390_000_000, "fp32", max(prof.batch_sizes)) < prof.memory_gib


def test_peaks() -> None:
    assert gpu_peak_tflops("NVIDIA H200")["fp16"] > gpu_peak_tflops("NVIDIA RTX A6000")["fp16"]
    assert gpu_peak_tflops("Some Unknown GPU") is None
    t = theoretical_cpu_gflops(2, 2.5, {"avx512f", "fma"})
    assert t["gflops"] == pytest.approx(2 * 2.5 * 64)
    assert theoretical_cpu_gflops(4, 3.0, {"fma"})["gflops"] == pytest.approx(4 * 3.0 * 32)
    m = MachineInfo("x", "cpu", 2, 1.0, [], "", "", cpu_theoretical=t, cpu_measured={"gflops": 100.0, "gemm": "g"})
    assert m.peak_gflops("cpu", "fp32")[0] == 100.0  # measured wins over theoretical


def test_fleet_run_holds_only_without_starved_ticks_or_errors() -> None:
    agent = {"ticks": 60, "starved_replies": 0, "server_hold_ticks": 0, "skipped_ticks": 1, "duration_s": 2.0,
             "jitter_ms": {"n": 60, "p50": 0.1, "p99": 2.0, "max": 3.0}, "rtt_ms": {"n": 60, "p50": 4.0, "p99": 9.0}}
    ok = FleetRun(2, 2.0, agents=[agent, dict(agent)], chunks=10, window_s=2.0)
    assert ok.held and ok.starved == 0
    s = ok.summary()
    assert s["ticks"] == 120 and s["skipped_ticks"] == 2 and s["chunks_per_s"] == 5.0 and s["jitter_ms_p99_max"] == 2.0
    starved = FleetRun(2, 2.0, agents=[agent, dict(agent, starved_replies=2, server_hold_ticks=1)])
    assert not starved.held and starved.starved == 3
    assert not FleetRun(2, 2.0, agents=[agent]).held  # an agent that never reported
    assert not FleetRun(1, 2.0, agents=[agent], errors=["agent exit 2"]).held
    json.dumps(ok.summary())


def test_report_and_plots_survive_failed_sections(tmp_path) -> None:
    """A section that failed on some machine is reported with its reason; the rest still renders."""
    from xvla.benchmarks.plots import write_plots
    from xvla.benchmarks.report import render

    results = {
        "created": "now", "command": "xvla-bench", "elapsed_s": 1.0,
        "profile": {"name": "cpu", "presets": ["tiny"], "steps": 10, "backends": ["torch"], "precisions": ["fp32"],
                    "batch_sizes": [1]},
        "machine": {"name": "m", "cpu": "c", "cores": 2, "memory_gib": 1.0, "gpus": [], "versions": {},
                    "load_average": [0.1]},
        "flops": {"da3-xvla": {"preset": "da3-xvla", "error": "KeyError: not registered"}},
        "components": [{"preset": "tiny", "backend": "ort-cuda", "provider": "", "precision": "fp32", "stage": "*",
                        "batch": 0, "dist": None, "skipped": "ort-cuda: no CUDAExecutionProvider"}],
        "e2e": {"tiny": {"error": "RuntimeError: stream failed"}},
        "closed_loop": {"tiny": {"error": "TimeoutError: agents"}},
        "peers": {"tiny": {"error": "OSError: port"}},
        "notes": ["profile h200 asks for a GPU but none is visible"],
    }
    md = render(results)
    for text in ("not counted: KeyError: not registered", "tiny: not run: RuntimeError: stream failed",
                 "tiny: not run: TimeoutError: agents", "tiny: not run: OSError: port",
                 "ort-cuda: no CUDAExecutionProvider", "none is visible"):
        assert text in md
    assert [p.name for p in write_plots(results, tmp_path)] == ["latency.png", "stages.png", "fleet.png",
                                                                  "peers.png", "batch.png"]
