"""Peer comparison over loopback: same model, same observations, one protocol at a time, lock-step.

For every protocol: N requests of the same observation pool, each one observation -> one
chunk; round trip, server compute, overhead (the difference) and payload bytes. Our
streaming service adds a row the request/response protocols cannot have: the per-tick
latency of an action answered from the planned queue (from the e2e benchmark).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np

from xvla.benchmarks.observations import BenchObservation, observation_pool
from xvla.benchmarks.peers.clients import HttpJsonClient, LeRobotClient, OursInferClient, ZmqClient
from xvla.benchmarks.servers import ServerProcess, start_peer, wait_peer
from xvla.benchmarks.stats import Distribution

CLIENTS = {"http": HttpJsonClient, "lerobot": LeRobotClient, "zmq": ZmqClient}
LABELS = {"ours": "xvla-serve (ours)", "http": "X-VLA reference style", "lerobot": "LeRobot async style",
          "zmq": "GR00T style"}


def measure(client: Any, pool: list[BenchObservation], n: int, warmup: int = 2) -> dict[str, Any]:
    for i in range(warmup):
        client.request(pool[i % len(pool)])
    replies = [client.request(pool[i % len(pool)]) for i in range(n)]
    return {
        "transport": client.protocol,
        "requests": n,
        "rtt_ms": Distribution.of([r.rtt_ms for r in replies]).to_dict(),
        "server_ms": Distribution.of([r.server_ms for r in replies]).to_dict(),
        "overhead_ms": Distribution.of([r.overhead_ms for r in replies]).to_dict(),
        "overhead_samples_ms": [round(r.overhead_ms, 3) for r in replies],
        "request_bytes": int(np.mean([r.request_bytes for r in replies])),
        "response_bytes": int(np.mean([r.response_bytes for r in replies])),
        "rpcs_per_chunk": float(np.mean([r.rpcs for r in replies])),
        "chunk_shape": list(replies[-1].chunk.shape),
    }


def native_request_bytes(proprio_dim: int, clients: dict[str, Any]) -> dict[str, int]:
    """Request payload if the robot sent its cameras at native size (720^2 + 2 x 480^2), encode only."""
    obs = observation_pool(1, proprio_dim, size=None, seed=7)[0]
    out = {}
    for name, c in clients.items():
        enc = c.encode(obs)
        out[name] = enc.ByteSize() if hasattr(enc, "ByteSize") else len(enc)
    return out


def run_comparison(bundle: Path, ours_target: str, proprio_dim: int, n: int, log_dir: Path,
                   styles: tuple[str, ...] = ("http", "lerobot", "zmq"), stream_row: Optional[dict] = None,
                   progress: Optional[Callable[[str], None]] = None, seed: int = 0, providers: str = "cpu",
                   threads: int = 0) -> dict[str, Any]:
    pool = observation_pool(8, proprio_dim, seed=seed)
    # all peer servers load in parallel; they are measured one at a time
    servers: dict[str, ServerProcess] = {s: start_peer(s, bundle, log_dir, threads, providers) for s in styles}
    rows: dict[str, Any] = {}
    clients: dict[str, Any] = {}
    try:
        for s in servers.values():
            wait_peer(s)
        if progress:
            progress("peers: ours (Infer)")
        clients["ours"] = OursInferClient(ours_target)
        rows["ours"] = measure(clients["ours"], pool, n)
        for style, server in servers.items():
            if progress:
                progress(f"peers: {style}")
            clients[style] = CLIENTS[style](server.port)
            rows[style] = measure(clients[style], pool, n)
        native = native_request_bytes(proprio_dim, clients)
    finally:
        for c in clients.values():
            c.close()
        for s in servers.values():
            s.stop()
    for name, row in rows.items():
        row["label"] = LABELS[name]
        row["request_bytes_native_cameras"] = native.get(name)
    # the same chunk must come back through every protocol's framing (shapes agree)
    shapes = {tuple(r["chunk_shape"]) for r in rows.values()}
    result: dict[str, Any] = {
        "note": "peer rows are re-creations of the peers' protocols in front of our runtime, not the peers' servers",
        "requests_per_protocol": n, "rows": rows, "chunk_shapes_agree": len(shapes) == 1,
    }
    if stream_row:
        result["ours_stream_tick"] = stream_row
    return result
