"""benchmarks/device_check.sh --dry-run: the GPU check's code on the tiny preset on the CPU (issue 13 item 4).

One run drives every section (matmul peak, chunk cases, counted FLOPs, the closed loop through a real
xvla-serve with the torch-cpu engine on a torch-only bundle, report + JSON + plot); nothing is timed
against a target here."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_device_check_dry_run(tmp_path):
    env = {**os.environ, "OUT": str(tmp_path / "out"), "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([str(ROOT / "benchmarks" / "device_check.sh"), "--dry-run"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    out = tmp_path / "out"
    res = json.loads((out / "results.json").read_text())
    assert res["config"]["dry_run"] is True and res["peak_bf16_tflops"] > 0
    by_mode = {(c["mode"], c["batch"]): c for c in res["cases"]}
    assert set(by_mode) == {(m, b) for m in ("eager-fp32", "eager-bf16", "graph-bf16") for b in (1, 2)}
    for b in (1, 2):
        for m in ("eager-fp32", "eager-bf16"):
            c = by_mode[(m, b)]
            assert c["skipped"] is None and c["p50_ms"] > 0 and c["p99_ms"] >= c["p50_ms"]
            assert c["flops"] == res["flops"]["tiny"]["chunk"] * b and c["roofline_share"] > 0
        assert "CUDA graphs need a CUDA device" in by_mode[("graph-bf16", b)]["skipped"]
    loop = res["closed_loop"]
    assert "error" not in loop, loop
    assert loop["provider"] == "torch-cpu" and loop["runs"] and loop["runs"][0]["ticks"] > 0
    assert set(res["targets"]) == {"xvla-0.9b b1 p50 ms", "xvla-0.9b b8 / b1", "da3-xvla b1 p50 ms"}
    report = (out / "report.md").read_text()
    assert "DRY RUN" in report and "Closed loop" in report
    assert (out / "chunk_latency.png").stat().st_size > 0
    assert not (ROOT / "benchmarks" / "results" / res["machine"]["name"] / "device_check").exists() or \
        json.loads((ROOT / "benchmarks" / "results" / res["machine"]["name"] / "device_check" / "results.json")
                   .read_text())["config"]["dry_run"] is False  # a dry run never overwrites committed results
