"""Where the chunk loop loses time between engine calls, on the runtime's own serving engines.

``python -m xvla.benchmarks.chunk_loop BUNDLE`` loads the bundle through ``Policy.load`` (the
engines the service uses), and times, interleaved sample by sample so a noisy shared machine hurts
every configuration alike:

* ``chunk``  ``Policy.generate_actions`` (VLM once + N action steps + postprocess, host arrays);
* ``vlm`` and ``step``: the same engines called alone with the same inputs;
* ``gap`` = chunk - vlm - N x step: what the loop costs between engine calls.

Configurations (``--configs``): ``old`` = one intra-op thread, no spin, every step re-sends the
conditioning (the defaults before issue 13 on a 2-core machine); ``auto`` = the per-machine thread
policy + the conditioning bound once per chunk (IO binding); ``t<N>[-spin|-nospin][-nobind]`` set
each knob (e.g. ``t2-spin``, ``t1-nobind``). Results: one JSON line per configuration on stdout (p50/p99 in ms).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any, Mapping

import numpy as np


class _NoBind:
    """An engine wrapper hiding bind_static: the policy then sends every input at every step (old path)."""

    bind_static = None

    def __init__(self, engine: Any) -> None:
        self._engine = engine
        self.info, self.inputs, self.outputs = engine.info, engine.inputs, engine.outputs
        self.input_names, self.output_names = engine.input_names, engine.output_names

    def run(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        return self._engine.run(inputs)

    def close(self) -> None:
        self._engine.close()


def parse_config(config: str) -> tuple[int, bool | None, bool]:
    """'old' | 'auto' | 't<N>[-spin|-nospin][-nobind]' -> (intra-op threads (0 = policy), spin, bind)."""
    if config == "old":
        return 1, False, False
    if config == "auto":
        return 0, None, True
    parts = config.split("-")
    threads = int(parts[0][1:]) if parts[0].startswith("t") and parts[0][1:].isdigit() else 0
    spin = True if "spin" in parts else False if "nospin" in parts else None
    return threads, spin, "nobind" not in parts


def load(bundle: Path, config: str, seed: int = 0) -> Any:
    import os

    from xvla.runtime import Policy

    threads, spin, bind = parse_config(config)
    if spin is None:
        os.environ.pop("XVLA_ORT_SPIN", None)
    else:
        os.environ["XVLA_ORT_SPIN"] = "1" if spin else "0"
    pol = Policy.load(bundle, providers=["cpu"], intra_op_threads=threads, verify=False, seed=seed)
    os.environ.pop("XVLA_ORT_SPIN", None)
    if not bind:
        pol.engines["action"] = _NoBind(pol.engines["action"])
    return pol


def feeds(pol: Any, batch: int = 1) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    pre = pol.preprocess_spec
    v, (h, w) = pol.images.num_views, pol.images.size
    f = {"input_ids": np.full((batch, int(pre.get("max_text_len", 50))), 5, np.int64),
         "image_input": rng.standard_normal((batch, v, 3, h, w), dtype=np.float32),
         "image_mask": np.ones((batch, v), bool), "domain_id": np.zeros(batch, np.int64),
         "proprio": rng.standard_normal((batch, pol.dim), dtype=np.float32)}
    if pol.needs_task:
        f["task_id"] = np.zeros(batch, np.int64)
    if pol.takes_skill:
        f["skill_id"] = np.zeros(batch, np.int64)
    return f


def _pct(xs: list[float]) -> dict[str, float]:
    a = np.asarray(xs)
    return {"p50": round(float(np.percentile(a, 50)), 2), "p99": round(float(np.percentile(a, 99)), 2)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("bundle", type=Path)
    ap.add_argument("--configs", default="old,auto")
    ap.add_argument("--iters", type=int, default=30)
    ap.add_argument("--steps", type=int, default=10)
    args = ap.parse_args(argv)
    configs = [c.strip() for c in args.configs.split(",") if c.strip()]
    pols = {c: load(args.bundle, c) for c in configs}
    samples: dict[str, dict[str, list[float]]] = {c: {"chunk": [], "vlm": [], "step": []} for c in configs}
    f = feeds(next(iter(pols.values())))
    enc_feeds = {k: f[k] for k in ("input_ids", "image_input", "image_mask")}
    for c, pol in pols.items():  # warm-up
        pol.generate_actions(**f, steps=args.steps)
    for _ in range(args.iters):
        for c, pol in pols.items():
            t0 = time.perf_counter()
            pol.generate_actions(**f, steps=args.steps)
            t1 = time.perf_counter()
            enc = pol.encode(**enc_feeds)
            t2 = time.perf_counter()
            step_feeds = {"x_t": np.zeros((1, pol.horizon, pol.model_dim), np.float32), "t": np.ones(1, np.float32),
                          "proprio": np.zeros((1, pol.model_dim), np.float32), "domain_id": np.zeros(1, np.int64),
                          **enc.features}
            for k in ("task_id", "skill_id"):
                if k in pol.engines["action"].input_names:
                    step_feeds[k] = np.zeros(1, np.int64)
            t3 = time.perf_counter()
            pol.engines["action"].run(step_feeds)
            t4 = time.perf_counter()
            samples[c]["chunk"].append((t1 - t0) * 1e3)
            samples[c]["vlm"].append((t2 - t1) * 1e3)
            samples[c]["step"].append((t4 - t3) * 1e3)
    for c, pol in pols.items():
        s = samples[c]
        row = {k: _pct(v) for k, v in s.items()}
        row["gap_p50"] = round(row["chunk"]["p50"] - row["vlm"]["p50"] - args.steps * row["step"]["p50"], 2)
        eng = pol.engines["vlm"]
        print(json.dumps({"config": c, "threads": eng.info.extra.get("intra_op_threads"),
                          "spin": eng.info.extra.get("spin"), "steps": args.steps, "iters": args.iters, **row}))
        pol.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
