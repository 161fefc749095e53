"""DexVLA CPU chunk latency: the OFFICIAL code (LeRobot @ a0510c0f5, its own venv) vs ours, interleaved.

    python -m xvla.benchmarks.dexvla_official --bundle DIR --official-python VENV/bin/python
        --official-code CODE_DIR [--conformance DIR] [--rounds 3] [--repeats 20] [--threads 1]
        [--out benchmarks/results/cpu-2core/dexvla_official]

Same checkpoint (``shared/conformance/dexvla/tiny_model``), same inputs (``goldens.safetensors``
``input.*``: three 56x84 views, the 14-d state, the task of the goldens; 72 prompt tokens), same work:
greedy generation of exactly 8 tokens (the goldens' ``max_new_tokens``), FiLM, 10 DDIM steps of ScaleDP,
batch 1, ``--threads`` intra-op threads on every side. ``--rounds`` times in turn: the official process
(``benchmarks/official/time_dexvla.py`` in the venv of ``benchmarks/official/setup_dexvla_env.sh``:
``single_forward_process`` + ``dexvla_predict_action``), then in this process our served bundle
(``PolicyService.infer`` = what ``xvla-serve`` runs for a unary Infer: checks, frame decode, torch-free
preprocessing, ONNX Runtime engines through the batchers) and our PyTorch model (``DexVLAModel`` stage by
stage as in ``dexvla_serving.pytorch``, plus our preprocessing ``policy.prepare``). Every side runs a
warm-up first in each round. Reports medians and p99 over all rounds' samples and ours/official ratios.
Not a unit test.

The official side's numbers were produced with ``HF_HUB_OFFLINE=1``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
CONFORMANCE = Path(os.environ.get("XVLA_CONFORMANCE_DIR", "/work/shared/conformance")) / "dexvla"
TASK = "pick up the red cup and put it in the bin"  # the goldens' instruction (meta.prompt_text)


def _summary(samples: list[float]) -> dict:
    s = sorted(samples)
    return {"median": round(statistics.median(s), 3), "p99": round(s[min(len(s) - 1, round(0.99 * (len(s) - 1)))], 3),
            "n": len(s)}


def official_round(python: str, code: Path, conformance: Path, repeats: int, threads: int) -> dict:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": str(threads)}
    out = subprocess.run([python, str(HERE / "official" / "time_dexvla.py"), "--code", str(code), "--conformance",
                          str(conformance), "--repeats", str(repeats), "--threads", str(threads)],
                         env=env, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


class Ours:
    """Our served bundle and our PyTorch model, loaded once, on the goldens' observation."""

    def __init__(self, bundle: Path, conformance: Path, threads: int) -> None:
        import torch
        from safetensors.numpy import load_file

        from xvla.core.tensors import encode_image_raw, numpy_to_tensor
        from xvla.export.policies.dexvla.bundle import load_source
        from xvla.proto import policy_pb2 as pb
        from xvla.runtime.bundle import Bundle
        from xvla.runtime.policies.base import ObservationInput, Timings
        from xvla.runtime.service import PolicyService, ServiceConfig
        from xvla.runtime.skills import RoutingTable
        from xvla.runtime.wire import decode_cameras

        torch.set_num_threads(threads)
        self.g = load_file(str(conformance / "goldens.safetensors"))
        self.meta = json.loads((conformance / "meta.json").read_text())
        self.new_tokens = int(self.meta["gen_kwargs"]["max_new_tokens"])
        self.steps = int(self.g["sample.timesteps"].shape[0])
        self.svc = PolicyService(RoutingTable.single(bundle), ServiceConfig(intra_op_threads=threads))
        self.svc.load()
        spec = self.svc.gate_policy.spec
        obs = pb.Observation(frame_index=0, instruction=TASK)
        for name, img in zip(spec.camera_names, self.g["input.images_uint8"][:, 0], strict=True):
            obs.cameras.add(name=name, image=encode_image_raw(np.ascontiguousarray(img.transpose(1, 2, 0))))
        # the bundle of a stats-less checkpoint normalises with identity: send the goldens' normalised state,
        # so that the served chunk is comparable to ``e2e.actions`` (the official side's input)
        obs.proprio.CopyFrom(numpy_to_tensor(self.g["input.state_normalized"][0]))
        self.noise = self.g["sample.noise_init"][0]
        header = pb.SessionHeader(task_id=-1, max_new_tokens=self.new_tokens,
                                  execution=pb.ExecutionSettings(denoising_steps=self.steps))
        self.req = pb.InferRequest(session=header, observation=obs, noise=numpy_to_tensor(self.noise))
        self.policy = self.svc.gate_policy
        self.obs_input = ObservationInput(decode_cameras(obs), self.g["input.state_normalized"][0], TASK)
        self.timings = Timings
        source = Bundle.load(bundle).manifest["source"]
        self.model = load_source(Path(source["path"]), None).model.eval()
        self.torch_version = torch.__version__

    def served(self, repeats: int) -> dict:
        from xvla.core.tensors import tensor_to_numpy

        wall, model, pre = [], [], []
        resp = None
        for i in range(repeats + 1):
            t0 = time.perf_counter()
            resp = self.svc.infer(self.req)
            ms = (time.perf_counter() - t0) * 1e3
            if i:
                wall.append(ms)
                st = resp.timings.stage_ms
                pre.append(st["preprocess"])
                model.append(sum(st[s] for s in ("vision", "prefill", "decode_tokens", "condition", "diffusion")))
        actions = tensor_to_numpy(resp.actions, "actions")
        diff = float(np.abs(actions - self.g["e2e.actions"][0]).max())
        return {"total": wall, "model": model, "preprocess": pre, "text": resp.text, "max_abs_diff": diff}

    def pytorch(self, repeats: int) -> dict:
        from xvla.benchmarks.dexvla_serving import pytorch

        total, model, pre = [], [], []
        for _ in range(repeats):  # one timed run per call (each call warms up once first)
            t0 = time.perf_counter()
            prepared = self.policy.prepare(self.obs_input, self.timings())
            p_ms = (time.perf_counter() - t0) * 1e3
            res = pytorch(self.model, prepared, self.policy, self._threads, 1, self.new_tokens, self.steps,
                          self.noise)
            pre.append(p_ms)
            model.append(res["stages_ms"]["model"])
            total.append(p_ms + res["stages_ms"]["model"])
        return {"total": total, "model": model, "preprocess": pre, "new_tokens": res["new_tokens"]}


def _markdown(r: dict) -> str:
    o, s, t = r["official_ms"], r["served_ms"], r["pytorch_ms"]
    lines = [
        "# DexVLA CPU chunk latency: official LeRobot code vs ours (cpu-2core)",
        "",
        f"Conformance checkpoint `tiny_model`, goldens inputs (3 views 56x84, {r['prompt_tokens']} prompt tokens), "
        f"{r['new_tokens']} generated tokens, {r['ddim_steps']} DDIM steps, chunk {r['chunk']}, batch 1, "
        f"{r['threads']} thread(s); {r['rounds']} interleaved rounds x {r['repeats']} repeats per side.",
        f"Official: LeRobot a0510c0f5, torch {r['official_versions']['torch']}, transformers "
        f"{r['official_versions']['transformers']}, diffusers {r['official_versions']['diffusers']}. "
        f"Ours: torch {r['torch']}, onnxruntime {r['onnxruntime']}.",
        "",
        "| side | end to end p50 ms | p99 ms | model p50 ms | preprocess p50 ms | ours/official (p50 e2e) |",
        "|---|---|---|---|---|---|",
        f"| official (`single_forward_process` + `dexvla_predict_action`) | {o['total']['median']} | "
        f"{o['total']['p99']} | {o['predict']['median']} | {o['preprocess']['median']} | 1 |",
        f"| ours served (`PolicyService.infer`, ONNX Runtime) | {s['total']['median']} | {s['total']['p99']} | "
        f"{s['model']['median']} | {s['preprocess']['median']} | {r['ratio_p50']['served_over_official']} |",
        f"| ours PyTorch (`DexVLAModel` + `prepare`) | {t['total']['median']} | {t['total']['p99']} | "
        f"{t['model']['median']} | {t['preprocess']['median']} | {r['ratio_p50']['pytorch_over_official']} |",
        "",
        f"Correctness in the same run: official chunk vs golden `e2e.actions` max |diff| "
        f"{r['official_max_abs_diff']:.2e}; served chunk vs golden `e2e.actions` (identity normalisation in the bundle) "
        f"{r['served_max_abs_diff']:.2e}.",
        "",
        f"Machine load (1/5/15-min load average) before / after: {r['loadavg_1_5_15_before_after']} on "
        f"{r['cpus']} CPUs (shared machine: absolute times are noisy, the ratios of interleaved rounds less so).",
        "",
        r["note"],
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bundle", type=Path, required=True, help="xvla-export of the conformance tiny_model")
    p.add_argument("--official-python", required=True, help="python of setup_dexvla_env.sh's venv")
    p.add_argument("--official-code", type=Path, required=True, help="the patched official lerobot checkout")
    p.add_argument("--conformance", type=Path, default=CONFORMANCE)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", type=Path, default=None, help="write OUT.json and OUT.md")
    a = p.parse_args(argv)

    import onnxruntime

    ours = Ours(a.bundle, a.conformance, a.threads)
    ours._threads = a.threads
    off: dict[str, list[float]] = {"total": [], "predict": [], "preprocess": []}
    srv: dict[str, list[float]] = {"total": [], "model": [], "preprocess": []}
    pt: dict[str, list[float]] = {"total": [], "model": [], "preprocess": []}
    info = served = None
    load_before = os.getloadavg()
    for _ in range(a.rounds):
        info = official_round(a.official_python, a.official_code, a.conformance, a.repeats, a.threads)
        for k in off:
            off[k] += info["samples_ms"][k]
        served = ours.served(a.repeats)
        for k in srv:
            srv[k] += served[k]
        torch_res = ours.pytorch(a.repeats)
        for k in pt:
            pt[k] += torch_res[k]
    o, s, t = ({k: _summary(v) for k, v in d.items()} for d in (off, srv, pt))
    result = {
        "benchmark": "dexvla_official", "checkpoint": str(a.conformance / "tiny_model"), "bundle": str(a.bundle),
        "prompt_tokens": info["prompt_tokens"], "new_tokens": info["new_tokens"], "ddim_steps": info["ddim_steps"],
        "chunk": info["chunk"], "threads": a.threads, "rounds": a.rounds, "repeats": a.repeats,
        "official_versions": {k: info[k] for k in ("commit", "torch", "transformers", "diffusers")},
        "loadavg_1_5_15_before_after": [list(load_before), list(os.getloadavg())], "cpus": os.cpu_count(),
        "torch": ours.torch_version, "onnxruntime": onnxruntime.__version__,
        "pytorch_new_tokens": torch_res["new_tokens"], "official_text": info["text"], "served_text": served["text"],
        "official_max_abs_diff": info["max_abs_diff_vs_golden_e2e_actions"],
        "served_max_abs_diff": served["max_abs_diff"],
        "official_ms": o, "served_ms": s, "pytorch_ms": t,
        "ratio_p50": {"served_over_official": round(s["total"]["median"] / o["total"]["median"], 3),
                      "pytorch_over_official": round(t["total"]["median"] / o["total"]["median"], 3),
                      "served_model_over_official_predict": round(s["model"]["median"] / o["predict"]["median"], 3)},
        "ratio_p99": {"served_over_official": round(s["total"]["p99"] / o["total"]["p99"], 3),
                      "pytorch_over_official": round(t["total"]["p99"] / o["total"]["p99"], 3)},
        "note": "end to end = official: single_forward_process + dexvla_predict_action (processor, generate, "
                "film_forward, ScaleDP DDIM loop); served: the whole PolicyService.infer call (checks, raw-frame "
                "decode, preprocessing, five engine stages, un-normalisation); PyTorch: policy.prepare + the five "
                "DexVLAModel stages. model = official dexvla_predict_action / our five model stages. Each side "
                "warms up before each round; the official side runs in its own process and venv.",
    }
    text = json.dumps(result, indent=1)
    print(text)
    if a.out is not None:
        a.out.parent.mkdir(parents=True, exist_ok=True)
        a.out.with_suffix(".json").write_text(text + "\n")
        a.out.with_suffix(".md").write_text(_markdown(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
