"""Helpers to run a policy server in-process, for benchmarks and tests.

    from xvla.benchmarks.serving import serve_in_background

    with serve_in_background(bundle_dir) as (server, port):      # sync: own event loop in a thread
        channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        ...
    async with serve_in_background(bundle_dir) as (server, port):  # async: in the running loop
        ...

The server is SERVING (engines loaded and warmed up) when the block starts, and is shut
down gracefully when it ends. ``DelayedEngine`` / ``slow_engines`` make an engine
artificially slow (to show starvation being counted).
"""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from xvla.runtime.engines.base import Engine
from xvla.runtime.security import ServerSecurity
from xvla.runtime.server import PolicyServer
from xvla.runtime.service import EngineWrapper, PolicyFactory, ServiceConfig
from xvla.runtime.skills import RoutingTable


class DelayedEngine(Engine):
    """Wraps an engine and sleeps ``delay_s`` before every call (an artificially slow GPU)."""

    def __init__(self, engine: Engine, delay_s: float) -> None:
        self.engine, self.delay_s = engine, delay_s
        self.info, self.inputs, self.outputs = engine.info, engine.inputs, engine.outputs

    def run(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        time.sleep(self.delay_s)
        return self.engine.run(inputs)

    def close(self) -> None:
        self.engine.close()


def slow_engines(delay_ms: float, graphs: Sequence[str] = ("vlm",)) -> EngineWrapper:
    """An engine_wrapper adding ``delay_ms`` to every call of the named graphs."""

    def wrap(route: str, graph: str, engine: Engine) -> Engine:
        return DelayedEngine(engine, delay_ms / 1000.0) if graph in graphs else engine

    return wrap


class BackgroundServer:
    """Context manager (sync or async) around a PolicyServer; enter gives (server, port)."""

    def __init__(self, bundle_dir: str | Path | None = None, port: int = 0, *, routes: RoutingTable | None = None,
                 config: ServiceConfig | None = None, host: str = "127.0.0.1", metrics_port: int | None = None,
                 engine_wrapper: EngineWrapper | None = None, policy_factory: PolicyFactory | None = None,
                 grace: float = 2.0, security: "ServerSecurity | None" = None) -> None:
        if routes is None:
            if bundle_dir is None:
                raise ValueError("serve_in_background needs bundle_dir or routes")
            routes = RoutingTable.single(bundle_dir)
        self.server = PolicyServer(routes, config, host, port, metrics_port, engine_wrapper, policy_factory, security)
        self.grace = grace
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ async
    async def __aenter__(self) -> tuple[PolicyServer, int]:
        port = await self.server.start()
        return self.server, port

    async def __aexit__(self, *exc: Any) -> None:
        await self.server.stop(self.grace)

    # ------------------------------------------------------------------ sync (own loop in a thread)
    def __enter__(self) -> tuple[PolicyServer, int]:
        self._loop = asyncio.new_event_loop()
        ready = threading.Event()
        box: dict[str, Any] = {}

        def run() -> None:
            asyncio.set_event_loop(self._loop)
            try:
                box["port"] = self._loop.run_until_complete(self.server.start())
            except BaseException as exc:  # report to the caller's thread
                box["error"] = exc
                ready.set()
                return
            ready.set()
            self._loop.run_until_complete(self.server.wait())

        self._thread = threading.Thread(target=run, name="xvla-serve", daemon=True)
        self._thread.start()
        ready.wait()
        if "error" in box:
            raise box["error"]
        return self.server, int(box["port"])

    def __exit__(self, *exc: Any) -> None:
        assert self._loop is not None and self._thread is not None
        asyncio.run_coroutine_threadsafe(self.server.stop(self.grace), self._loop).result(timeout=30)
        self._thread.join(timeout=30)
        self._loop.close()

    def call(self, coro: Any, timeout: float = 30) -> Any:
        """Runs a coroutine on the server's loop (sync mode), e.g. ``bg.call(server.stop())``."""
        assert self._loop is not None
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout=timeout)


def serve_in_background(bundle_dir: str | Path | None = None, port: int = 0, **kwargs: Any) -> BackgroundServer:
    """A SERVING policy server on 127.0.0.1:``port`` (0 = a free port) for the duration of a with-block."""
    return BackgroundServer(bundle_dir, port, **kwargs)
