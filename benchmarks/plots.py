"""PNG plots of a results dict (matplotlib, Agg backend: no display needed)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def _ok(cases: list[dict]) -> list[dict]:
    return [c for c in cases if c.get("dist") and not c.get("skipped")]


def latency_distributions(results: dict[str, Any], path: Path) -> Path:
    """Box plots (log scale) of every batch-1 chunk case, the Infer round trip and the stream QUEUE tick."""
    series: list[tuple[str, list[float]]] = []
    for c in _ok(results.get("components", [])):
        if c["stage"] == "chunk" and c["batch"] == 1 and c.get("samples_ms"):
            series.append((f"{c['preset']}\n{c['backend']} {c['precision']}\nchunk", c["samples_ms"]))
    for preset, e in (results.get("e2e") or {}).items():
        if "error" in e:
            continue
        if e.get("infer", {}).get("rtt_samples_ms"):
            series.append((f"{preset}\ngRPC Infer\nobs->chunk", e["infer"]["rtt_samples_ms"]))
        if e.get("stream", {}).get("queue_tick_samples_ms"):
            series.append((f"{preset}\ngRPC Stream\nobs->action", e["stream"]["queue_tick_samples_ms"]))
    fig, ax = plt.subplots(figsize=(max(6.0, 1.3 * len(series) + 2), 4.5))
    if series:
        ax.boxplot([s for _, s in series], showfliers=True, whis=(1, 99))
        ax.set_xticks(range(1, len(series) + 1), [n for n, _ in series], fontsize=7)
        ax.set_yscale("log")
    else:
        ax.text(0.5, 0.5, "no latency samples", ha="center", va="center", transform=ax.transAxes)
    ax.set_ylabel("ms (log)")
    ax.set_title("Latency distributions (whiskers p1-p99)")
    ax.grid(axis="y", alpha=0.3, which="both")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def stage_breakdown(results: dict[str, Any], path: Path) -> Path:
    """Stacked p50 per (preset, backend, precision) at batch 1: vlm + geometry + steps x step vs the measured chunk."""
    steps = int(results.get("profile", {}).get("steps", 10))
    groups: dict[tuple[str, str, str], dict[str, float]] = {}
    for c in _ok(results.get("components", [])):
        if c["batch"] != 1:
            continue
        groups.setdefault((c["preset"], c["backend"], c["precision"]), {})[c["stage"]] = c["dist"]["p50"]
    rest = "rest (loop, postprocess, session switches)"
    labels, parts = [], {"vlm": [], "geometry": [], "denoise (steps x step)": [], rest: []}
    chunk = []
    for (preset, backend, prec), st in groups.items():
        if "chunk" not in st:
            continue
        labels.append(f"{preset}\n{backend} {prec}")
        vlm, geo, den = st.get("vlm", 0.0), st.get("geometry", 0.0), steps * st.get("action_step", 0.0)
        parts["vlm"].append(vlm)
        parts["geometry"].append(geo)
        parts["denoise (steps x step)"].append(den)
        parts[rest].append(max(0.0, st["chunk"] - vlm - geo - den))
        chunk.append(st["chunk"])
    fig, ax = plt.subplots(figsize=(max(6.0, 1.5 * len(labels) + 2), 4.5))
    if labels:
        x = range(len(labels))
        bottom = [0.0] * len(labels)
        for name, vals in parts.items():
            ax.bar(x, vals, bottom=bottom, label=name)
            bottom = [b + v for b, v in zip(bottom, vals)]
        ax.scatter(list(x), chunk, color="black", marker="_", s=400, label="measured chunk p50", zorder=3)
        ax.set_xticks(list(x), labels, fontsize=7)
        ax.legend(fontsize=7)
    else:
        ax.text(0.5, 0.5, "no stage data", ha="center", va="center", transform=ax.transAxes)
    ax.set_ylabel("ms (p50, batch 1)")
    ax.set_title(f"Per-stage breakdown of one chunk ({steps} denoising steps)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def fleet(results: dict[str, Any], path: Path) -> Path:
    """Robots vs starved ticks (bars, labelled) and chunks/s (line) per closed-loop preset."""
    cl = {k: v for k, v in (results.get("closed_loop") or {}).items() if "runs" in v}
    fig, ax = plt.subplots(figsize=(7, 4.5))
    ax2 = ax.twinx()
    width = 0.8 / max(1, len(cl))
    all_k: set[int] = set()
    top = 1
    for i, (preset, sweep) in enumerate(cl.items()):
        runs = sweep.get("runs", [])
        ks = [r["robots"] for r in runs]
        all_k.update(ks)
        xs = [k + (i - (len(cl) - 1) / 2) * width for k in ks]
        starved = [r["starved_ticks"] for r in runs]
        top = max([top] + starved)
        bars = ax.bar(xs, starved, width=width, label=f"{preset}: starved ticks", alpha=0.7)
        ax.bar_label(bars, labels=[str(v) for v in starved], fontsize=7)
        ax2.plot(ks, [r["chunks_per_s"] or 0 for r in runs], marker="o", label=f"{preset}: chunks/s")
        ax.axvline(sweep.get("max_robots_zero_starved", 0) + 0.5, color=bars.patches[0].get_facecolor() if bars.patches
                   else "grey", linestyle=":", linewidth=1)
    if not cl:
        ax.text(0.5, 0.5, "no closed-loop runs", ha="center", va="center", transform=ax.transAxes)
    if all_k:
        ax.set_xticks(sorted(all_k))
    ax.set_ylim(0, top * 1.25)
    ax2.set_ylim(bottom=0)
    ax.set_xlabel("robots (30 Hz simulated R1Pro agents); dotted: the most held with zero starved ticks")
    ax.set_ylabel("starved ticks (sum over robots)")
    ax2.set_ylabel("chunks per second")
    h1, l1 = ax.get_legend_handles_labels()
    h2, l2 = ax2.get_legend_handles_labels()
    if h1 or h2:
        ax.legend(h1 + h2, l1 + l2, fontsize=7, loc="upper left")
    ax.set_title("Closed loop: robots vs starved ticks")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def peers(results: dict[str, Any], path: Path) -> Path:
    """Per-request overhead (p50, p90 whisker) and request payload per protocol."""
    comp = results.get("peers") or {}
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4.2))
    any_rows = False
    for preset, res in comp.items():
        rows = res.get("rows", {})
        names = list(rows)
        if not names:
            continue
        any_rows = True
        labels = [rows[n]["label"].replace(" style", "\nstyle") for n in names]
        p50 = [rows[n]["overhead_ms"]["p50"] for n in names]
        p90 = [rows[n]["overhead_ms"]["p90"] for n in names]
        ax1.bar(labels, p50, yerr=[[0] * len(p50), [b - a for a, b in zip(p50, p90)]], capsize=4)
        ax1.set_title(f"Per-request overhead, {preset} (p50, to p90)")
        ax1.set_ylabel("ms: round trip - server compute")
        ax2.bar(labels, [rows[n]["request_bytes"] / 1e3 for n in names])
        ax2.set_title("Request payload per observation (224^2 cameras)")
        ax2.set_ylabel("kB")
        for ax in (ax1, ax2):
            ax.tick_params(axis="x", labelsize=7)
        break  # one preset per figure
    if not any_rows:
        ax1.text(0.5, 0.5, "no peer comparison", ha="center", va="center", transform=ax1.transAxes)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def batch_scaling(results: dict[str, Any], path: Path) -> Path:
    """Chunk latency per sample vs batch size (amortisation by batching)."""
    fig, ax = plt.subplots(figsize=(7, 4.5))
    lines: dict[tuple[str, str, str], list[tuple[int, float]]] = {}
    for c in _ok(results.get("components", [])):
        if c["stage"] == "chunk":
            lines.setdefault((c["preset"], c["backend"], c["precision"]), []).append((c["batch"], c["dist"]["p50"]))
    for (preset, backend, prec), pts in lines.items():
        pts.sort()
        ax.plot([b for b, _ in pts], [t / b for b, t in pts], marker="o", label=f"{preset} {backend} {prec}")
    if lines:
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.legend(fontsize=7)
    else:
        ax.text(0.5, 0.5, "no chunk cases", ha="center", va="center", transform=ax.transAxes)
    ax.set_xlabel("batch size")
    ax.set_ylabel("chunk p50 per sample, ms (log)")
    ax.set_title("Batching: time per chunk per robot")
    ax.grid(alpha=0.3, which="both")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


PLOTS = {"latency.png": latency_distributions, "stages.png": stage_breakdown, "fleet.png": fleet,
         "peers.png": peers, "batch.png": batch_scaling}


def write_plots(results: dict[str, Any], out_dir: Path) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    return [fn(results, out_dir / name) for name, fn in PLOTS.items()]
