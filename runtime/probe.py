"""``python -m xvla.runtime.probe``: exit 0 when the policy service's grpc.health.v1 says SERVING.

For probes that cannot speak TLS themselves (the kubelet's built-in gRPC probe has no TLS): an exec
probe runs this with the pod's own client certificate. The health service needs no token.

    python -m xvla.runtime.probe --target localhost:50051 --tls-ca /etc/xvla/tls/ca.crt \
        --tls-cert /etc/xvla/tls/tls.crt --tls-key /etc/xvla/tls/tls.key --server-name xvla-policy
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m xvla.runtime.probe", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--target", default="localhost:50051")
    p.add_argument("--tls-ca", type=Path, help="PEM CA of the server certificate: probe over TLS")
    p.add_argument("--tls-cert", type=Path, help="PEM client certificate (the server requires mTLS)")
    p.add_argument("--tls-key", type=Path)
    p.add_argument("--server-name", help="name in the server certificate when it differs from the target host")
    p.add_argument("--timeout", type=float, default=2.0)
    return p


def main(argv: list[str] | None = None) -> int:
    a = build_parser().parse_args(argv)
    opts = [("grpc.ssl_target_name_override", a.server_name)] if a.server_name else []
    if a.tls_ca:
        creds = grpc.ssl_channel_credentials(a.tls_ca.read_bytes(), a.tls_key.read_bytes() if a.tls_key else None,
                                             a.tls_cert.read_bytes() if a.tls_cert else None)
        ch = grpc.secure_channel(a.target, creds, options=opts)
    else:
        ch = grpc.insecure_channel(a.target)
    try:
        r = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=a.timeout)
    except grpc.RpcError as e:
        print(f"probe: {e.code().name}: {e.details()}", file=sys.stderr)
        return 1
    finally:
        ch.close()
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(r.status)
    print(f"probe: {status}")
    return 0 if r.status == health_pb2.HealthCheckResponse.SERVING else 1


if __name__ == "__main__":
    sys.exit(main())
