"""Two xvla-serve builds side by side, request by request: ``Infer`` round trips, interleaved A, B, A, B...

``python -m xvla.benchmarks.ab_infer BUNDLE --a-src OLD_TREE`` starts server A from another source
tree (e.g. a ``git worktree`` of the commit before a change; run through PYTHONPATH, nothing
installed) and server B from this tree, both on the same bundle and flags, and sends the same
observations to both alternately, so load on a shared machine hits both alike. Prints one JSON
line: p50/p99 round trip (ms) of each and B/A.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Optional

import numpy as np

PACKAGES = ("core", "runtime", "export", "agents", "proto", "benchmarks")


def source_path(tree: Path) -> str:
    """A folder whose ``xvla/`` links to ``tree``'s package folders (the package-dir mapping)."""
    root = Path(tempfile.mkdtemp(prefix="xvla-src-"))
    (root / "xvla").mkdir()
    (root / "xvla" / "__init__.py").write_text("")
    for pkg in PACKAGES:
        if (tree / pkg).is_dir():
            (root / "xvla" / pkg).symlink_to((tree / pkg).resolve())
    return str(root)


def start(bundle: Path, src: Optional[Path], providers: str, threads: int, log: Path):
    from xvla.runtime.serve_process import ServerProcess, child_env, free_port

    port, mport = free_port(), free_port()
    env = child_env()
    if src is not None:
        env["PYTHONPATH"] = source_path(src)
    cmd = [sys.executable, "-m", "xvla.runtime.cli", "--bundle", str(bundle), "--host", "127.0.0.1", "--port",
           str(port), "--providers", providers, "--threads", str(threads), "--log-level", "warning",
           "--metrics-port", str(mport)]
    with open(log, "wb") as f:
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env=env)
    return ServerProcess("xvla-serve", proc, port, mport, log)


def main(argv: Optional[list[str]] = None) -> int:
    from xvla.benchmarks.observations import observation_pool
    from xvla.benchmarks.peers.clients import OursInferClient
    from xvla.runtime.serve_process import wait_serving

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("bundle", type=Path)
    ap.add_argument("--a-src", type=Path, required=True, help="source tree of server A (B is this tree)")
    ap.add_argument("--n", type=int, default=40)
    ap.add_argument("--providers", default="cpu")
    ap.add_argument("--threads", type=int, default=0)
    args = ap.parse_args(argv)
    dim = int(json.loads((args.bundle / "manifest.json").read_text())["action_space"]["dim"])
    pool = observation_pool(8, dim)
    logs = Path(tempfile.mkdtemp(prefix="ab-infer-"))
    servers = {"A": start(args.bundle, args.a_src, args.providers, args.threads, logs / "a.log"),
               "B": start(args.bundle, None, args.providers, args.threads, logs / "b.log")}
    try:
        for s in servers.values():
            wait_serving(s, timeout=300)
        clients = {k: OursInferClient(s.target) for k, s in servers.items()}
        rtt: dict[str, list[float]] = {k: [] for k in servers}
        for i in range(3):  # warm-up
            for c in clients.values():
                c.request(pool[i % len(pool)])
        for i in range(args.n):
            order = ("A", "B") if i % 2 == 0 else ("B", "A")
            for k in order:
                rtt[k].append(clients[k].request(pool[i % len(pool)]).rtt_ms)
        for c in clients.values():
            c.close()
    finally:
        for s in servers.values():
            s.stop()
    out = {k: {"p50": round(float(np.percentile(v, 50)), 2), "p99": round(float(np.percentile(v, 99)), 2)}
           for k, v in rtt.items()}
    out["B/A p50"] = round(out["B"]["p50"] / out["A"]["p50"], 3)
    out["B/A p99"] = round(out["B"]["p99"] / out["A"]["p99"], 3)
    out.update(n=args.n, providers=args.providers, threads=args.threads, a_src=str(args.a_src),
               load_avg=os.getloadavg()[0])
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
