"""``xvla-bench --preset tiny --quick`` end to end: the files and their structure (never the speeds).

One quick run (module fixture) drives every section against real processes: components
(torch + ONNX Runtime on the exported tiny R1Pro bundle), xvla-serve over gRPC, 1 and 2
simulated R1Pro agents, and the three peer-protocol harness servers.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from xvla.benchmarks.cli import main
from xvla.benchmarks.plots import PLOTS

PIXELS_224 = 3 * 224 * 224 * 3  # three RGB8 cameras at the model size
PIXELS_NATIVE = 720 * 720 * 3 + 2 * 480 * 480 * 3


@pytest.fixture(scope="module")
def quick(tmp_path_factory, bench_bundle) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("bench") / "cpu-test"
    rc = main(["--preset", "tiny", "--quick", "--out", str(out), "--bundle", f"tiny={bench_bundle}",
               "--artifacts", str(tmp_path_factory.mktemp("artifacts"))])
    assert rc == 0
    return out, json.loads((out / "results.json").read_text())


def test_writes_json_report_and_png_plots(quick) -> None:
    from PIL import Image

    out, r = quick
    assert (out / "report.md").is_file() and (out / "results.json").is_file()
    assert sorted(r["plots"]) == sorted(PLOTS)
    for name in PLOTS:
        with Image.open(out / "plots" / name) as im:
            assert im.format == "PNG" and im.size[0] >= 400 and im.size[1] >= 300
    assert r["profile"]["name"] == "cpu-quick" and r["sections"] == sorted(["flops", "components", "e2e",
                                                                             "closed-loop", "peers", "dexvla"])
    assert r["machine"]["cores"] >= 1 and r["machine"]["cpu_measured"]["gflops"] > 0


def test_components_cover_every_stage_and_backend_with_counted_flops(quick) -> None:
    _, r = quick
    fl = r["flops"]["tiny"]
    assert fl["chunk"] == fl["vlm"] + fl["geometry"] + fl["steps"] * fl["action_step"] and fl["params"] > 0
    done = {(c["backend"], c["stage"]): c for c in r["components"] if c["dist"]}
    for backend in ("torch", "ort-cpu"):
        for stage in ("vlm", "action_step", "chunk"):
            c = done[(backend, stage)]
            assert c["batch"] == 1 and c["dist"]["n"] == len(c["samples_ms"]) >= 3
            assert 0 < c["dist"]["p50"] <= c["dist"]["p99"] <= c["dist"]["max"]
            per_sample = fl["chunk"] if stage == "chunk" else fl[stage]
            assert c["flops"] == per_sample
            assert c["achieved_gflops"] == pytest.approx(per_sample / c["dist"]["p50"] / 1e6, rel=1e-3)  # p50 is rounded
            assert c["peak_fraction"] > 0 and "measured" in c["peak_source"]
    assert not [c for c in r["components"] if c.get("skipped", "") and c["skipped"].startswith("failed")]


def test_end_to_end_through_grpc(quick) -> None:
    _, r = quick
    e = r["e2e"]["tiny"]
    inf, st = e["infer"], e["stream"]
    assert inf["requests"] == 5 and inf["rtt_ms"]["n"] == 5
    assert inf["overhead_ms"]["min"] > 0  # the round trip always exceeds the server's own compute
    assert PIXELS_224 < inf["request_bytes"] < PIXELS_224 * 1.01  # raw RGB8 on the wire, no base64
    assert st["ticks"] == 30 and st["tick_ms_by_source"]["FIRST_CHUNK"]["n"] == 1
    assert sum(d["n"] for d in st["tick_ms_by_source"].values()) == 30
    assert st["reply_bytes_with_chunk"] > st["reply_bytes_without_chunk"] > 23 * 4
    assert e["wire"]["native_720_480"]["raw_pixels"] == PIXELS_NATIVE
    assert e["wire"]["native_720_480"]["stream_observation"] > PIXELS_NATIVE


def test_closed_loop_runs_one_and_two_agents(quick) -> None:
    _, r = quick
    s = r["closed_loop"]["tiny"]
    runs = {run["robots"]: run for run in s["runs"]}
    assert 1 in runs
    for k, run in runs.items():
        assert run["ticks"] > 0 and not run["errors"]
        assert run["held"] == (run["starved_ticks"] == 0)
        assert run["utilisation"]["server_cpu_pct_mean"] is not None
        assert run["wire_bytes_per_frame"] > PIXELS_224
    held = [k for k, run in sorted(runs.items()) if run["held"]]
    assert s["max_robots_zero_starved"] == (max(held) if held else 0)


def test_peer_comparison_same_chunk_through_every_protocol(quick) -> None:
    _, r = quick
    p = r["peers"]["tiny"]
    assert "re-creations" in p["note"]
    rows = p["rows"]
    assert set(rows) == {"ours", "http", "lerobot", "zmq"} and p["chunk_shapes_agree"]
    assert rows["ours"]["chunk_shape"] == [30, 23]
    assert rows["http"]["request_bytes"] > PIXELS_224 * 4 / 3  # base64 inflates every image by 4/3
    assert rows["lerobot"]["rpcs_per_chunk"] >= 2 and rows["ours"]["rpcs_per_chunk"] == 1
    for row in rows.values():
        assert row["requests"] == 5 and row["overhead_ms"]["n"] == 5
        assert row["request_bytes_native_cameras"] > PIXELS_NATIVE


def test_report_has_every_section_and_the_peer_disclaimer(quick) -> None:
    out, r = quick
    md = (out / "report.md").read_text()
    for heading in ("## Machine", "## FLOPs per chunk (counted)", "## Component latency", "## End to end through gRPC",
                    "## Closed loop", "## Peer comparison", "## Plots"):
        assert heading in md
    assert "re-creations of the peers' protocols" in md
    for name in PLOTS:
        assert f"(plots/{name})" in md
    assert "| tiny | ort-cpu | fp32 | chunk | 1 |" in md


def test_unknown_preset_is_a_clear_error(tmp_path, capsys) -> None:
    assert main(["--preset", "tiny,nope", "--only", "flops", "--out", str(tmp_path)]) == 2
    assert "unknown benchmark preset 'nope'" in capsys.readouterr().err


def test_dexvla_section_times_every_stage(quick) -> None:
    """Issue 14: xvla-bench covers DexVLA (tiny preset on the CPU): every stage timed, in the report."""
    out, r = quick
    (row,) = r["dexvla"]
    assert row["preset"] == "tiny-dexvla" and row["batch"] == 1 and "error" not in row, row
    for stage in ("vision_ms", "prefill_ms", "decode_per_token_ms", "diffusion_ms", "chunk_ms_estimate"):
        assert row[stage] > 0, (stage, row)
    assert "## DexVLA per stage" in (out / "report.md").read_text()

