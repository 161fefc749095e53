"""Every Kubernetes manifest in deploy/k8s validates against the Kubernetes API schemas (offline, from the
``kubernetes-validate`` package), and the Deployment mounts the Secrets its flags read."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

kv = pytest.importorskip("kubernetes_validate")

K8S = Path(__file__).resolve().parents[2] / "deploy" / "k8s"
MANIFESTS = sorted(K8S.glob("*.yaml"))
VERSION = "1.30.0"  # the oldest Kubernetes the manifests promise to work on (gRPC probes, ...)


@pytest.mark.parametrize("path", MANIFESTS, ids=[p.name for p in MANIFESTS])
def test_manifest_validates_against_the_api_schemas(path: Path) -> None:
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d]
    assert docs
    for doc in docs:
        kv.validate(doc, VERSION, strict=True)  # raises ValidationError naming the bad field


def test_the_validator_catches_a_bad_field() -> None:
    deployment = next(d for d in yaml.safe_load_all((K8S / "policy-server.yaml").read_text()) if d and d["kind"] == "Deployment")
    deployment["spec"]["replicas"] = "two"
    with pytest.raises(kv.ValidationError):
        kv.validate(deployment, VERSION, strict=True)


def test_deployment_mounts_the_secrets_its_flags_read() -> None:
    deployment = next(d for d in yaml.safe_load_all((K8S / "policy-server.yaml").read_text()) if d and d["kind"] == "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    c = pod["containers"][0]
    args = dict(zip(c["args"][::2], c["args"][1::2]))
    mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
    secrets = {v["name"]: v["secret"]["secretName"] for v in pod["volumes"] if "secret" in v}
    for flag in ("--tls-cert", "--tls-key", "--tls-client-ca", "--auth-token-file"):
        folder = str(Path(args[flag]).parent)
        assert folder in mounts and mounts[folder] in secrets, flag
    examples = {d["metadata"]["name"] for d in yaml.safe_load_all((K8S / "secrets.example.yaml").read_text()) if d}
    assert set(secrets.values()) == examples
