"""Our gRPC ``Infer`` against the OFFICIAL X-VLA server, side by side on CPU, interleaved request by request.

The peer the issue measures us against is the official server as its users run it: ``deploy.py``
of the X-VLA repository at 2c4fedf (FastAPI ``POST /act``, json_numpy arrays, PyTorch eager),
in its own venv (``benchmarks/official/setup_official_env.sh``), on the same checkpoint as our
bundle (exported from it with ``xvla-export``) and sent the same observation: the same images,
views, instruction, proprio, domain and denoising steps, through the same tokenizer and the
same preprocessing contract (pillow bicubic resize to the model size, ImageNet mean/std).

Why interleaved: on a shared machine the load changes by the second. Alternating one request
to ours and one to theirs (who goes first alternates too) gives both servers the same load
history, so the *ratio* stays meaningful even when the absolute numbers drift. Each client
times from the start of serialising its request to the decoded chunk (protocol, transport,
decoding, preprocessing and inference all inside), on a kept-alive connection, one request at
a time (servers never compete for the cores).

    python -m xvla.benchmarks.official_server --official-venv /work/venv-official \\
        --official-code /work/xvla-official --checkpoint ../shared/conformance/xvla/tiny_auto

writes ``official_side_by_side.json`` (config, commands, versions, load, raw samples) and
``official_side_by_side.md`` (the table) into ``--out-dir`` (``--name`` changes the file stem).
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np

from xvla.benchmarks.stats import Distribution
from xvla.runtime.serve_process import ServerProcess, child_env, free_port, start_xvla_serve, wait_serving

OFFICIAL_COMMIT = "2c4fedf36b57b14ab661ee083b46d4544445457c"
HERE = Path(__file__).resolve().parent
SERVE_OFFICIAL = HERE / "official" / "serve_official.py"
SETUP_OFFICIAL = HERE / "official" / "setup_official_env.sh"
PIL_BICUBIC = 3  # PIL.Image.Resampling.BICUBIC, what the bundle contract's "bicubic" means


@dataclass
class SideBySideConfig:
    official_venv: Path
    official_code: Path
    checkpoint: Path
    work_dir: Path
    out_dir: Path
    bundle: Optional[Path] = None
    requests: int = 200
    warmup: int = 20
    image_size: int = 224
    views: int = 3
    instruction: str = "turn on the radio"
    domain_id: int = 19
    steps: int = 10
    official_threads: int = 2
    ours_threads: tuple[int, ...] = (1, 2)
    seed: int = 0
    name: str = "official_side_by_side"


@dataclass
class Observation:
    """One observation, sent to both servers: uint8 RGB views in model order + proprio."""

    images: list[np.ndarray]
    proprio: np.ndarray
    instruction: str


@dataclass
class Sample:
    rtt_ms: float
    server_ms: float = float("nan")
    shape: tuple[int, ...] = field(default_factory=tuple)


# ----------------------------------------------------------------------------- inputs


def observation_pool(n: int, views: int, size: int, proprio_dim: int, instruction: str, seed: int) -> list[Observation]:
    rng = np.random.default_rng(seed)
    return [Observation([rng.integers(0, 256, (size, size, 3), dtype=np.uint8) for _ in range(views)],
                        (rng.standard_normal(proprio_dim) * 0.1).astype(np.float32), instruction) for _ in range(n)]


def official_processor_config(preprocess: dict[str, Any]) -> dict[str, Any]:
    """``preprocessor_config.json`` for the official ``XVLAProcessor`` equal to the bundle's preprocessing.

    The conformance checkpoints ship no processor; the official server's ``AutoImageProcessor``
    then gets a CLIP image processor that resizes to exactly the model size with pillow bicubic
    (no crop), rescales by 1/255 and normalises with the bundle's mean/std, which is the bundle
    contract our service applies.
    """
    if preprocess.get("resize_filter", "bicubic") != "bicubic":
        raise ValueError(f"preprocess.resize_filter {preprocess.get('resize_filter')!r}: only bicubic is mapped")
    h, w = preprocess["image_size"]
    return {"image_processor_type": "CLIPImageProcessor", "do_resize": True, "size": {"height": int(h), "width": int(w)},
            "resample": PIL_BICUBIC, "do_center_crop": False, "do_rescale": True, "rescale_factor": 1 / 255,
            "do_normalize": True, "image_mean": list(preprocess["mean"]), "image_std": list(preprocess["std"]),
            "do_convert_rgb": True}


def interleave_order(i: int) -> tuple[str, str]:
    """Who goes first in round ``i``: alternates, so neither side always follows the other."""
    return ("ours", "official") if i % 2 == 0 else ("official", "ours")


def summarise(ours_ms: list[float], official_ms: list[float]) -> dict[str, Any]:
    o, t = Distribution.of(ours_ms), Distribution.of(official_ms)
    return {"ours_ms": o.to_dict(), "official_ms": t.to_dict(),
            "ratio_p50": round(o.p50 / t.p50, 4), "ratio_p99": round(o.p99 / t.p99, 4),
            "ratio_mean": round(o.mean / t.mean, 4)}


# ----------------------------------------------------------------------------- clients


class OfficialActClient:
    """What official clients post to ``/act``: every array a ``json_numpy.dumps`` string, keep-alive HTTP."""

    def __init__(self, port: int, domain_id: int, steps: int) -> None:
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        self.domain_id, self.steps = domain_id, steps

    @staticmethod
    def _np(a: np.ndarray) -> str:
        from xvla.agents.bridges.codecs import json_numpy_dumps

        return json_numpy_dumps(a)

    def encode(self, obs: Observation) -> bytes:
        body: dict[str, Any] = {f"image{i}": self._np(img) for i, img in enumerate(obs.images)}
        body.update(proprio=self._np(obs.proprio), language_instruction=obs.instruction, domain_id=self.domain_id,
                    steps=self.steps)
        return json.dumps(body).encode()

    def request(self, obs: Observation) -> Sample:
        t0 = time.perf_counter()
        self.conn.request("POST", "/act", body=self.encode(obs), headers={"Content-Type": "application/json"})
        resp = self.conn.getresponse()
        data = resp.read()
        if resp.status != 200:
            raise RuntimeError(f"official /act: HTTP {resp.status} {data[:300]!r}")
        chunk = np.asarray(json.loads(data)["action"], np.float32)
        return Sample((time.perf_counter() - t0) * 1000.0, shape=chunk.shape)

    def close(self) -> None:
        self.conn.close()


class OursInferClient:
    """Our gRPC ``Infer``: the same views as raw RGB8 camera images, proprio as a tensor, same domain/steps."""

    def __init__(self, target: str, camera_names: list[str], domain_id: int, steps: int) -> None:
        import grpc

        from xvla.proto import policy_pb2 as pb
        from xvla.proto import policy_pb2_grpc as pb_grpc

        self.pb, self.cameras = pb, camera_names
        opts = [("grpc.max_receive_message_length", 64 << 20), ("grpc.max_send_message_length", 64 << 20)]
        self.channel = grpc.insecure_channel(target, options=opts)
        grpc.channel_ready_future(self.channel).result(timeout=30)
        self.stub = pb_grpc.PolicyServiceStub(self.channel)
        self.header = pb.SessionHeader(robot_id="official-side-by-side", domain_id=domain_id, control_rate_hz=30.0,
                                       execution=pb.ExecutionSettings(denoising_steps=steps))

    def request(self, obs: Observation) -> Sample:
        from xvla.core.tensors import encode_image_raw, numpy_to_tensor, tensor_to_numpy

        t0 = time.perf_counter()
        o = self.pb.Observation(timestamp=time.monotonic(), instruction=obs.instruction)
        for name, img in zip(self.cameras, obs.images):
            o.cameras.add(name=name, image=encode_image_raw(img))
        o.proprio.CopyFrom(numpy_to_tensor(obs.proprio))
        resp = self.stub.Infer(self.pb.InferRequest(session=self.header, observation=o), timeout=120)
        chunk = tensor_to_numpy(resp.actions, "actions")
        return Sample((time.perf_counter() - t0) * 1000.0, float(resp.timings.total_ms), tuple(chunk.shape))

    def close(self) -> None:
        self.channel.close()


# ----------------------------------------------------------------------------- setup


def _run(cmd: list[str], log: Path) -> None:
    with open(log, "ab") as f:
        f.write(("$ " + shlex.join(cmd) + "\n").encode())
        f.flush()
        rc = subprocess.call(cmd, stdout=f, stderr=subprocess.STDOUT, env=child_env())
    if rc:
        raise RuntimeError(f"{cmd[0]} exited with {rc}; see {log}")


def prepare(cfg: SideBySideConfig, commands: list[str]) -> tuple[Path, Path, dict[str, Any]]:
    """Our bundle (exported unless given) and the official processor folder with the SAME tokenizer."""
    cfg.work_dir.mkdir(parents=True, exist_ok=True)
    log = cfg.work_dir / "prepare.log"
    proc_dir = cfg.work_dir / "processor"
    if cfg.bundle is None:
        tok_dir = cfg.work_dir / "tokenizer"
        if (cfg.checkpoint / "vocab.json").is_file() or (cfg.checkpoint / "tokenizer.json").is_file():
            tok_dir = cfg.checkpoint  # the checkpoint's own tokenizer, on both sides
        elif not (tok_dir / "vocab.json").is_file():
            from xvla.export.policies.xvla.tokenizer import build_tiny_tokenizer

            build_tiny_tokenizer(tok_dir)  # 1024-token BPE: the conformance checkpoints' vocabulary size
        bundle = cfg.work_dir / f"bundle-{cfg.checkpoint.name}"
        cmd = [str(Path(sys.executable).parent / "xvla-export"), str(cfg.checkpoint), "-o", str(bundle),
               "--tokenizer", str(tok_dir)]
        commands.append(shlex.join(cmd))
        _run(cmd, log)
    else:
        bundle = cfg.bundle
    manifest = json.loads((bundle / "manifest.json").read_text())
    policy = manifest.get("policy", manifest)
    if not (bundle / "tokenizer").is_dir():
        raise RuntimeError(f"{bundle}: no tokenizer/ (export with --tokenizer DIR so both servers tokenize alike)")
    if proc_dir.exists():
        shutil.rmtree(proc_dir)
    shutil.copytree(bundle / "tokenizer", proc_dir)
    (proc_dir / "preprocessor_config.json").write_text(json.dumps(official_processor_config(policy["preprocess"]), indent=1))
    return bundle, proc_dir, policy


def start_official(cfg: SideBySideConfig, processor: Path, log_path: Path) -> tuple[ServerProcess, str]:
    port = free_port()
    out = cfg.work_dir / f"official-logs-{port}"  # deploy.py refuses an output dir holding an info.json
    cmd = [str(cfg.official_venv / "bin" / "python"), str(SERVE_OFFICIAL), "--code", str(cfg.official_code),
           "--threads", str(cfg.official_threads), "--", "--model_path", str(cfg.checkpoint),
           "--processor_path", str(processor), "--device", "cpu", "--host", "127.0.0.1", "--port", str(port),
           "--output_dir", str(out)]
    env = dict(child_env(), OMP_NUM_THREADS=str(cfg.official_threads), MKL_NUM_THREADS=str(cfg.official_threads))
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
    return ServerProcess("official-xvla", proc, port, None, log_path), shlex.join(cmd)


def wait_official(server: ServerProcess, probe: Observation, cfg: SideBySideConfig, timeout: float = 300.0) -> None:
    """Ready when a real ``/act`` answers 200 (uvicorn listening is not enough: the model must answer)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        server.check_alive()
        client = OfficialActClient(server.port, cfg.domain_id, cfg.steps)
        try:
            client.request(probe)
            return
        except (ConnectionError, OSError, http.client.HTTPException):
            time.sleep(0.3)
        finally:
            client.close()
    raise TimeoutError(f"official server not answering /act after {timeout:.0f} s; log: {server.log_path}")


_OFFICIAL_PREPROCESS = """
import sys
import numpy as np
from PIL import Image
sys.path.insert(0, sys.argv[1])
from models.processing_xvla import XVLAProcessor
d = np.load(sys.argv[3])
proc = XVLAProcessor.from_pretrained(sys.argv[2])
images = [Image.fromarray(d[k]) for k in sorted(k for k in d.files if k.startswith("image"))]
out = proc(images, str(d["instruction"]))
np.savez(sys.argv[4], **{k: v.numpy() for k, v in out.items()})
"""


def check_same_inputs(cfg: SideBySideConfig, bundle: Path, processor: Path, policy: dict[str, Any],
                      obs: Observation) -> dict[str, Any]:
    """The model inputs each side makes of the same observation, compared (tokens, pixels, view mask).

    The official ``XVLAProcessor`` (in its venv, from ``processor``) against our service's
    preprocessing (``runtime.policies.xvla.preprocess``, from the bundle): if these differ, the
    two servers would not be computing the same chunk and the comparison would be void.
    """
    from types import SimpleNamespace

    from xvla.runtime.policies.xvla.preprocess import ImagePreprocessor, InstructionTokenizer

    spec = policy["preprocess"]
    images = ImagePreprocessor(spec)({name: SimpleNamespace(image=img, extrinsics=None, intrinsics=None)
                                      for name, img in zip(spec["camera_names"], obs.images)})
    ids = InstructionTokenizer(bundle / "tokenizer", int(spec["max_text_len"]), spec.get("pad_token_id"))(obs.instruction)
    src, dst = cfg.work_dir / "inputs-check-in.npz", cfg.work_dir / "inputs-check-out.npz"
    np.savez(src, instruction=np.array(obs.instruction), **{f"image{i}": img for i, img in enumerate(obs.images)})
    subprocess.run([str(cfg.official_venv / "bin" / "python"), "-c", _OFFICIAL_PREPROCESS, str(cfg.official_code),
                    str(processor), str(src), str(dst)], check=True, capture_output=True, env=child_env())
    theirs = np.load(dst)
    return {"input_ids_equal": bool(np.array_equal(theirs["input_ids"][0], ids)),
            "image_mask_equal": bool(np.array_equal(theirs["image_mask"][0], images.image_mask)),
            "image_input_max_abs": float(np.abs(theirs["image_input"][0] - images.image_input).max())}


def official_versions(cfg: SideBySideConfig) -> dict[str, str]:
    code = ("import json, torch, transformers, timm, fastapi, uvicorn, numpy, sys; print(json.dumps({"
            "'python': sys.version.split()[0], 'torch': torch.__version__, 'transformers': transformers.__version__,"
            "'timm': timm.__version__, 'fastapi': fastapi.__version__, 'uvicorn': uvicorn.__version__,"
            "'numpy': numpy.__version__}))")
    out = subprocess.run([str(cfg.official_venv / "bin" / "python"), "-c", code], capture_output=True, text=True,
                         env=child_env(), check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def our_versions() -> dict[str, str]:
    import grpc
    import onnxruntime

    return {"python": sys.version.split()[0], "onnxruntime": onnxruntime.__version__, "grpcio": grpc.__version__}


# ----------------------------------------------------------------------------- run


def interleaved(ours: OursInferClient, official: OfficialActClient, pool: list[Observation], n: int,
                warmup: int) -> dict[str, list[Sample]]:
    clients = {"ours": ours, "official": official}
    got: dict[str, list[Sample]] = {"ours": [], "official": []}
    for i in range(warmup + n):
        obs = pool[i % len(pool)]
        for side in interleave_order(i):
            s = clients[side].request(obs)
            if i >= warmup:
                got[side].append(s)
    return got


def run(cfg: SideBySideConfig) -> dict[str, Any]:
    commands: list[str] = []
    load_start = os.getloadavg()
    bundle, processor, policy = prepare(cfg, commands)
    cameras = list(policy["preprocess"]["camera_names"])[: cfg.views]
    proprio_dim = int(policy["preprocess"]["proprio"]["dim"])
    pool = observation_pool(16, cfg.views, cfg.image_size, proprio_dim, cfg.instruction, cfg.seed)
    same_inputs = check_same_inputs(cfg, bundle, processor, policy, pool[0])
    print(f"same model inputs on both sides: {same_inputs}", flush=True)
    if not (same_inputs["input_ids_equal"] and same_inputs["image_mask_equal"]):
        raise RuntimeError(f"the two sides tokenise or mask the same observation differently: {same_inputs}")
    logs = cfg.work_dir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    official, official_cmd = start_official(cfg, processor, logs / "official.log")
    commands.append(official_cmd)
    variants = []
    try:
        wait_official(official, pool[0], cfg)
        off_client = OfficialActClient(official.port, cfg.domain_id, cfg.steps)
        for threads in cfg.ours_threads:
            ours = start_xvla_serve(bundle, logs / f"xvla-serve-threads{threads}.log", threads=threads, metrics=False)
            commands.append(f"xvla-serve --bundle {bundle} --providers cpu --threads {threads}")
            try:
                wait_serving(ours)
                client = OursInferClient(ours.target, cameras, cfg.domain_id, cfg.steps)
                try:
                    t0 = time.monotonic()
                    got = interleaved(client, off_client, pool, cfg.requests, cfg.warmup)
                    seconds = time.monotonic() - t0
                finally:
                    client.close()
            finally:
                ours.stop()
            shapes = {side: sorted({s.shape for s in v}) for side, v in got.items()}
            variant = {"ours_threads": threads, "seconds": round(seconds, 1), "load_avg_after": os.getloadavg(),
                       "chunk_shapes": {k: [list(s) for s in v] for k, v in shapes.items()},
                       **summarise([s.rtt_ms for s in got["ours"]], [s.rtt_ms for s in got["official"]]),
                       "ours_server_ms": Distribution.of([s.server_ms for s in got["ours"]]).to_dict(),
                       "ours_samples_ms": [round(s.rtt_ms, 3) for s in got["ours"]],
                       "official_samples_ms": [round(s.rtt_ms, 3) for s in got["official"]]}
            variants.append(variant)
            print(f"ours --threads {threads}: p50 {variant['ours_ms']['p50']:.1f} ms p99 {variant['ours_ms']['p99']:.1f}"
                  f" | official p50 {variant['official_ms']['p50']:.1f} p99 {variant['official_ms']['p99']:.1f}"
                  f" | ours/official p50 {variant['ratio_p50']:.3f} p99 {variant['ratio_p99']:.3f}", flush=True)
        off_client.close()
    finally:
        official.stop()
    cfg_dict = {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(cfg).items()}
    return {"what": "gRPC Infer (xvla-serve, ONNX Runtime CPU) vs the official X-VLA FastAPI /act (PyTorch eager), "
                    "interleaved request by request", "official_commit": OFFICIAL_COMMIT, "config": cfg_dict,
            "bundle": str(bundle), "same_inputs": same_inputs, "cameras": cameras, "proprio_dim": proprio_dim, "commands": commands,
            "cpu_count": os.cpu_count(), "load_avg_start": load_start, "load_avg_end": os.getloadavg(),
            "shared_machine_note": "2 cores shared with other engineers' jobs while measured; the interleaving "
                                   "keeps the ratio fair-ish, absolute numbers drift with the load",
            "versions": {"official": official_versions(cfg), "ours": our_versions()},
            "finished_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "variants": variants}


def markdown(result: dict[str, Any], command: str) -> str:
    cfg = result["config"]
    lines = [
        "# Ours vs the official X-VLA server (CPU, interleaved)", "",
        f"`{command}`", "",
        f"Checkpoint `{cfg['checkpoint']}`, {cfg['views']} views of {cfg['image_size']}x{cfg['image_size']}, "
        f"proprio {result['proprio_dim']}, domain {cfg['domain_id']}, {cfg['steps']} steps, "
        f"{cfg['requests']} requests each after {cfg['warmup']} warm-up rounds. Official: {result['official_commit'][:7]} "
        f"`deploy.py` /act, PyTorch eager, {cfg['official_threads']} threads "
        f"(torch {result['versions']['official']['torch']}, transformers {result['versions']['official']['transformers']}). "
        f"Ours: `xvla-serve` gRPC Infer, ONNX Runtime {result['versions']['ours']['onnxruntime']} CPU.", "",
        "Same model inputs on both sides, checked before timing (official `XVLAProcessor` vs our preprocessing of "
        f"one observation): token ids equal {result['same_inputs']['input_ids_equal']}, view mask equal "
        f"{result['same_inputs']['image_mask_equal']}, pixels max abs {result['same_inputs']['image_input_max_abs']:.1e}.", "",
        f"**Shared machine**: {result['cpu_count']} cores, load average {result['load_avg_start'][0]:.2f} at start, "
        f"{result['load_avg_end'][0]:.2f} at end (other engineers' jobs). Absolute numbers drift with the load; "
        "the interleaving keeps the ratio fair-ish.", "",
        "| ours `--threads` | ours p50 | ours p99 | official p50 | official p99 | ours/official p50 | ours/official p99 | ours server p50 |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for v in result["variants"]:
        lines.append(f"| {v['ours_threads']} | {v['ours_ms']['p50']:.1f} | {v['ours_ms']['p99']:.1f} | "
                     f"{v['official_ms']['p50']:.1f} | {v['official_ms']['p99']:.1f} | **{v['ratio_p50']:.2f}x** | "
                     f"{v['ratio_p99']:.2f}x | {v['ours_server_ms']['p50']:.1f} |")
    lines += ["", "Milliseconds, client round trip (serialise -> decoded chunk). Commands run:", ""]
    lines += [f"    {c}" for c in result["commands"]]
    return "\n".join(lines) + "\n"


def parse_args(argv: Optional[list[str]] = None) -> SideBySideConfig:
    p = argparse.ArgumentParser(
        prog="python -m xvla.benchmarks.official_server", description=__doc__.split("\n\n")[0],
        epilog=f"Build the official side once with: {SETUP_OFFICIAL} VENV_DIR CODE_DIR [SOURCE]")
    p.add_argument("--official-venv", type=Path, required=True, help="venv built by setup_official_env.sh")
    p.add_argument("--official-code", type=Path, required=True, help="official X-VLA code at 2c4fedf (deploy.py, models/)")
    p.add_argument("--checkpoint", type=Path, required=True, help="official-layout checkpoint both sides load")
    p.add_argument("--bundle", type=Path, help="our bundle of that checkpoint (default: exported into --work-dir)")
    p.add_argument("--work-dir", type=Path, default=Path("artifacts/official-side-by-side"))
    p.add_argument("--out-dir", type=Path, default=Path("benchmarks/results/cpu-2core"))
    p.add_argument("--name", default="official_side_by_side", help="file stem of the JSON and markdown written")
    p.add_argument("--requests", type=int, default=200, help="timed requests per side (per ours variant)")
    p.add_argument("--warmup", type=int, default=20, help="unsampled interleaved rounds first")
    p.add_argument("--image-size", type=int, default=224, help="side of the square uint8 images sent")
    p.add_argument("--views", type=int, default=3, choices=(1, 2, 3))
    p.add_argument("--domain-id", type=int, default=19)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--official-threads", type=int, default=2)
    p.add_argument("--ours-threads", default="1,2", help="xvla-serve --threads variants, comma separated")
    a = p.parse_args(argv)
    for path in (a.official_venv / "bin" / "python", a.official_code / "deploy.py", a.checkpoint / "config.json"):
        if not path.exists():
            p.error(f"{path} not found (build the official side with {SETUP_OFFICIAL})")
    return SideBySideConfig(a.official_venv.resolve(), a.official_code.resolve(), a.checkpoint.resolve(),
                            a.work_dir.resolve(), a.out_dir, a.bundle.resolve() if a.bundle else None, a.requests,
                            a.warmup, a.image_size, a.views, domain_id=a.domain_id, steps=a.steps,
                            official_threads=a.official_threads,
                            ours_threads=tuple(int(t) for t in a.ours_threads.split(",") if t.strip()), name=a.name)


def main(argv: Optional[list[str]] = None) -> int:
    cfg = parse_args(argv)
    command = "python -m xvla.benchmarks.official_server " + shlex.join(sys.argv[1:] if argv is None else argv)
    result = run(cfg)
    result["command"] = command
    cfg.out_dir.mkdir(parents=True, exist_ok=True)
    (cfg.out_dir / f"{cfg.name}.json").write_text(json.dumps(result, indent=1))
    (cfg.out_dir / f"{cfg.name}.md").write_text(markdown(result, command))
    print(markdown(result, command))
    return 0


if __name__ == "__main__":
    sys.exit(main())
