"""The deployment files call the real CLIs with flags those CLIs accept, so they cannot drift silently."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import pytest
import yaml

from xvla.runtime.cli import build_parser as serve_parser
from xvla.runtime.probe import build_parser as probe_parser

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"


def _k8s_docs() -> list[dict]:
    return [d for d in yaml.safe_load_all((DEPLOY / "k8s" / "policy-server.yaml").read_text()) if d]


def test_k8s_container_args_parse_and_ports_match() -> None:
    deployment = next(d for d in _k8s_docs() if d["kind"] == "Deployment")
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    args = serve_parser().parse_args(container["args"])
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    probe = container["readinessProbe"]["exec"]["command"]
    assert probe[:3] == ["python", "-m", "xvla.runtime.probe"]
    probe_args = probe_parser().parse_args(probe[3:])
    assert args.port == ports["grpc"] == int(probe_args.target.rsplit(":", 1)[1])
    assert args.metrics_port == ports["metrics"]
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    assert int(annotations["prometheus.io/port"]) == args.metrics_port
    service = next(d for d in _k8s_docs() if d["kind"] == "Service")
    assert {p["targetPort"] for p in service["spec"]["ports"]} == set(ports)


def test_serve_dockerfile_entrypoint_parses() -> None:
    text = (DEPLOY / "docker" / "Dockerfile.serve").read_text()
    entry = json.loads(re.search(r"^ENTRYPOINT (\[.*\])$", text, re.M).group(1))
    assert entry[0] == "xvla-serve"
    args = serve_parser().parse_args(entry[1:])
    exposed = {int(p) for p in re.search(r"^EXPOSE (.*)$", text, re.M).group(1).split()}
    assert {args.port, args.metrics_port} == exposed


def test_slurm_job_runs_xvla_serve_with_valid_flags() -> None:
    line = next(s for s in (DEPLOY / "slurm" / "serve.sbatch").read_text().splitlines() if s.startswith("srun "))
    argv = shlex.split(line.replace('"$BUNDLE"', "/b").replace('"$PORT"', "50051"))
    assert argv[:2] == ["srun", "xvla-serve"]
    serve_parser().parse_args(argv[2:])


@pytest.mark.parametrize("script", ["xvla-serve", "xvla-agent", "xvla-export"])
def test_console_scripts_declared(script: str) -> None:
    assert f'{script} = "xvla.' in (DEPLOY.parent / "pyproject.toml").read_text()


def test_gpu_serve_image_uses_the_gpu_extra_and_valid_flags() -> None:
    """Issue 13: the GPU image installs the gpu extra from an NVIDIA CUDA base; its entrypoint + CMD parse."""
    import tomllib

    text = (DEPLOY / "docker" / "Dockerfile.serve-gpu").read_text()
    assert re.search(r"^FROM nvidia/cuda:\S+cudnn-runtime", text, re.M)
    assert '".[gpu]"' in text and "pip uninstall -y onnxruntime" in text and "COPY core core" in text
    entry = json.loads(re.search(r"^ENTRYPOINT (\[.*\])$", text, re.M).group(1))
    cmd = json.loads(re.search(r"^CMD (\[.*\])$", text, re.M).group(1))
    args = serve_parser().parse_args(entry[1:] + cmd)
    assert args.providers == "tensorrt"
    extras = tomllib.loads((DEPLOY.parent / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    names = {re.split(r"[<>=]", d)[0] for d in extras["gpu"]}
    assert {"onnxruntime-gpu", "tensorrt-cu12", "cuda-python"} <= names
    for f in ("Dockerfile.serve", "Dockerfile.agent"):  # the xvla.core package is copied into every image
        assert "COPY core core" in (DEPLOY / "docker" / f).read_text()
