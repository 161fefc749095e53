"""Times the OFFICIAL DexVLA inference (LeRobot @ a0510c0f5) on the conformance checkpoint; prints JSON.

    VENV/bin/python benchmarks/official/time_dexvla.py --code CODE_DIR --conformance DIR [--repeats N]

Runs in the official environment built by ``setup_dexvla_env.sh`` (it imports nothing from xvla). One
chunk = the official inference path at batch 1: ``Qwen2VLAProcess.single_forward_process(images, task,
None, eval=True)`` (chat template, ``fetch_image``, ``Qwen2VLProcessor``) then the unbound
``DexVLAPolicy.dexvla_predict_action`` (``generate`` greedy with KV cache, ``film_forward``, the ScaleDP
DDIM loop), with the conformance harness's runtime hooks only: ``generate`` forced to
``max_new_tokens=8`` (the official call hard-codes 256), ``torch.randn`` of the head's initial noise
replaced by ``sample.noise_init`` (so the chunk can be checked against ``e2e.actions``), the film pad id
set to the tiny tokenizer's. Un-normalisation (one affine op) is left out on both sides.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import types
from pathlib import Path

import torch

# The PyPI torchvision wheel's CUDA-linked _C cannot load against torch 2.13.0+cpu, and
# torchvision/_meta_registrations.py then fails on register_fake('torchvision::nms'): define the two op
# schemas (no kernels; no torchvision op runs) before anything imports torchvision.
_TV = torch.library.Library("torchvision", "FRAGMENT")
_TV.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
_TV.define("qnms(Tensor qdets, Tensor scores, float iou_threshold) -> Tensor")


def _pct(samples: list[float], q: float) -> float:
    s = sorted(samples)
    return s[min(len(s) - 1, int(round(q * (len(s) - 1))))]


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--code", type=Path, required=True, help="folder holding the patched official lerobot/")
    p.add_argument("--conformance", type=Path, required=True, help="shared/conformance/dexvla")
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--threads", type=int, default=1)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    sys.path.insert(0, str(a.code))

    import diffusers
    import lerobot.common.policies.dexvla.configuration_dexvla  # noqa: F401  (registers qwen2_vla + heads)
    import lerobot.common.policies.dexvla.qwe2_vla.modeling_qwen2_vla as mq
    import transformers
    from lerobot.common.policies.dexvla.modeling_dexvla import DexVLAPolicy
    from lerobot.common.policies.dexvla.robot_data_processor import Qwen2VLAProcess
    from safetensors.torch import load_file
    from transformers import AutoConfig, AutoModelForCausalLM, AutoProcessor, AutoTokenizer

    tiny = a.conformance / "tiny_model"
    meta = json.loads((a.conformance / "meta.json").read_text())
    g = load_file(str(a.conformance / "goldens.safetensors"))
    cfg = AutoConfig.from_pretrained(tiny, trust_remote_code=True)
    if isinstance(getattr(cfg, "policy_head_config", None), dict):
        cfg.policy_head_config = AutoConfig.for_model(**cfg.policy_head_config)
    model = AutoModelForCausalLM.from_pretrained(tiny, config=cfg, trust_remote_code=True, _fast_init=False)
    model = model.to(device="cpu", dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(tiny)
    processor = Qwen2VLAProcess(tokenizer=tokenizer, multimodal_processor=AutoProcessor.from_pretrained(tiny))
    mq.DEXVLA_PAD_TOKEN_ID = tokenizer.pad_token_id

    new_tokens = int(meta["gen_kwargs"]["max_new_tokens"])
    generate = model.generate
    model.generate = lambda *args, **kw: generate(*args, **{**kw, "max_new_tokens": new_tokens})
    noise = g["sample.noise_init"]
    randn = torch.randn

    def injected_randn(*shape, **kw):
        size = tuple(shape[0]) if len(shape) == 1 and isinstance(shape[0], (tuple, list, torch.Size)) else shape
        return noise.clone() if tuple(size) == tuple(noise.shape) else randn(*shape, **kw)

    images = g["input.images_uint8"][:, 0]  # (views, 3, H, W) uint8, batch 1
    task = "pick up the red cup and put it in the bin"
    states = g["input.state_normalized"]
    duck = types.SimpleNamespace(model=model)
    pre, pred, total = [], [], []
    action = text = None
    for i in range(a.warmup + a.repeats):
        t0 = time.perf_counter()
        batch = processor.single_forward_process(images, task, None, eval=True)
        t1 = time.perf_counter()
        torch.randn = injected_randn
        try:
            action, text = DexVLAPolicy.dexvla_predict_action(duck, **batch, states=states, is_eval=True,
                                                              tokenizer=tokenizer)
        finally:
            torch.randn = randn
        t2 = time.perf_counter()
        if i >= a.warmup:
            pre.append((t1 - t0) * 1e3)
            pred.append((t2 - t1) * 1e3)
            total.append((t2 - t0) * 1e3)
    assert batch["input_ids"].shape[1] == g["prompt.input_ids"].shape[1], "prompt differs from the goldens"
    diff = float((action.float() - g["e2e.actions"]).abs().max())
    print(json.dumps({
        "side": "official", "commit": "a0510c0f5", "threads": a.threads, "repeats": a.repeats,
        "torch": torch.__version__, "transformers": transformers.__version__, "diffusers": diffusers.__version__,
        "prompt_tokens": int(batch["input_ids"].shape[1]), "new_tokens": new_tokens,
        "ddim_steps": int(model.policy_head.num_inference_timesteps), "chunk": list(action.shape[1:]),
        "max_abs_diff_vs_golden_e2e_actions": diff, "text": text,
        "samples_ms": {"preprocess": pre, "predict": pred, "total": total},
        "median_ms": {k: round(statistics.median(v), 3) for k, v in
                      {"preprocess": pre, "predict": pred, "total": total}.items()},
    }))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
