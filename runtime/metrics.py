"""Prometheus metrics of the policy service (prometheus-client), one registry per service instance.

A registry per instance (not the global default) lets tests and multi-server processes
start several services without colliding metric names.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.035, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1.0, 2.5, 5.0)
BATCH_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 64)
DEPTH_BUCKETS = (0, 1, 2, 4, 8, 12, 16, 24, 32, 48, 64)


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.stage_seconds = Histogram("xvla_stage_seconds", "Per-chunk time per stage (the policy kind's stages, "
                                       "e.g. preprocess, vlm, denoise, decode; plus queue_wait and total)", ["stage", "route"],
                                       buckets=LATENCY_BUCKETS, registry=r)
        self.tick_seconds = Histogram("xvla_tick_seconds", "Server time from receiving an observation to sending its "
                                      "action", ["source"], buckets=LATENCY_BUCKETS, registry=r)
        self.engine_seconds = Histogram("xvla_engine_seconds", "Engine call time", ["graph"],
                                        buckets=LATENCY_BUCKETS, registry=r)
        self.batch_size = Histogram("xvla_batch_size", "Rows per engine call", ["graph"], buckets=BATCH_BUCKETS, registry=r)
        self.queue_depth = Histogram("xvla_queue_depth", "Planned future actions after each tick", buckets=DEPTH_BUCKETS,
                                     registry=r)
        self.ticks = Counter("xvla_ticks_total", "Observations answered", ["source"], registry=r)
        self.starved_ticks = Counter("xvla_starved_ticks_total", "Ticks that waited for inference (queue empty)", registry=r)
        self.chunks = Counter("xvla_chunks_total", "Chunks planned", ["route"], registry=r)
        self.skill_switches = Counter("xvla_skill_switches_total", "Skill changes decided by the gate", registry=r)
        self.sessions = Gauge("xvla_sessions", "Open streaming sessions", registry=r)
        self.errors = Counter("xvla_errors_total", "RPCs ended with an error status", ["code"], registry=r)

    def observe_chunk(self, route: str, timings: dict[str, float]) -> None:
        for stage, ms in timings.items():
            if stage != "batch_size":
                self.stage_seconds.labels(stage, route).observe(ms / 1000.0)
        self.chunks.labels(route).inc()

    def observe_batch(self, graph: str, size: int, run_ms: float) -> None:
        self.batch_size.labels(graph).observe(size)
        self.engine_seconds.labels(graph).observe(run_ms / 1000.0)

    def serve_http(self, port: int, addr: str = "0.0.0.0") -> int:
        """Starts the /metrics HTTP endpoint in a daemon thread; returns the bound port (port 0 = any free)."""
        from prometheus_client import start_http_server

        server, _thread = start_http_server(port, addr=addr, registry=self.registry)
        self._http = server
        return int(server.server_port)

    def stop_http(self) -> None:
        server = getattr(self, "_http", None)
        if server is not None:
            server.shutdown()
            server.server_close()
            self._http = None

    def text(self) -> str:
        return generate_latest(self.registry).decode()
