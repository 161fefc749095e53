"""The BEHAVIOR challenge evaluators (2025 and 2026), unchanged, against the gRPC policy service.

A superset of the openpi websocket bridge (``openpi_ws.py``: metadata first, msgpack numpy
frames, ``{"reset": True}`` without a reply, errors as text frames) that knows what the two
BEHAVIOR-1K evaluators send. Read from BEHAVIOR-1K (newest stored versions; the snapshot
does not carry the tag ``v3.9.3``):

- 2025: ``OmniGibson/omnigibson/learning/eval.py`` + ``learning/utils/network_utils.py``
  (``WebsocketClientPolicy``: polls ``/healthz`` until 200, receives the metadata, then one
  observation per step, lock-step, no deadline; tensors packed with ``__torch__``).
  ``robot_r1::proprio`` has 256 values (``learning/utils/eval_utils.py``
  ``PROPRIOCEPTION_INDICES``), cameras are RGBA (224x224 with ``RGBLowResWrapper``, 720/480
  full resolution), ``task_id`` is [1] int64 in 0-49.
- 2026: ``OmniGibson/omnigibson/eval/`` (``eval.py``, ``evaluator.py``, ``policies.py``,
  ``utils/network_utils.py``): ``robot_r1::proprio`` laid out by ``r1pro.yaml``'s
  ``proprio_obs`` (61 values); ``RGBDFullResWrapper`` (720x720 head, 480x480 wrists, RGB +
  ``depth_linear``) or a 224x224 wrapper; extra keys (``cam_rel_poses``, depth,
  segmentation) are ignored. ``MultiWebsocketPolicy`` (``--num-envs N``) opens one client per
  logical environment, each with its own endpoint, and adds a leading batch axis of 1 to every
  key; the reply may carry it too. ``__action_chunk_size__ = K`` asks for K actions at once:
  the reply must carry ``action`` and ``action_chunk`` of shape (..., K, 23) with
  ``action_chunk[..., 0, :] == action`` exactly, and the client replays the chunk open loop.
  Each query has a deadline (``POLICY_RESPONSE_TIMEOUT`` = 600 s, or the rollout's remaining
  time budget); when it passes the client closes the socket.

What this bridge adds on top of the openpi bridge:

- The proprio layout is detected from its length (``xvla.core.embodiments.r1pro_layouts``) and
  cut here to the bundle's 23-d state unless the policy takes that raw length itself.
- Chunk requests are answered from one fresh plan of this observation (unary ``Infer``: no
  temporal ensembling, no blending with older chunks), which is what open-loop replay needs: a
  chunk-mode session is receding horizon over K. K above the policy's horizon is refused.
- ``--num-envs N``: one listener per environment on ports ``port .. port+N-1``, all in this one
  process and one policy client; each connection is its own policy session and the service
  batches them together.
- Deadlines: the bridge never waits on the service longer than ``reply_timeout_s``; a reply that
  cannot make it is an error text frame (the evaluator raises it), never a hang.
- ``/healthz`` is 200 only when the served policy accepts this robot's observations (23-d R1Pro
  actions, BEHAVIOR's cameras, a proprio it can take, no camera poses needed); ``/status`` is a
  JSON report of readiness, configuration problems, sessions and counters.
- ``task_id`` is mapped to the policy's task vocabulary by task name (the evaluator's task list:
  built in for 2025, ``--task-table`` for 2026's ``B100_task_misc.csv``), else by id when the
  policy's names are generic; otherwise the request is refused naming the id and the known tasks.
- ``server_timing`` (``infer_ms``, ``prev_total_ms`` like the evaluator's own server, plus
  ``bridge_ms``) in every reply.
"""

from __future__ import annotations

import asyncio
import http
import json
import logging
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed

from xvla.agents.bridges.codecs import WireError, packb
from xvla.agents.bridges.core import BridgeConfig, LockstepSession, PolicyError
from xvla.agents.bridges.observations import (
    ACTION_CHUNK_KEY,
    BEHAVIOR_CAMERA_KEYS,
    BEHAVIOR_PROPRIO_KEY,
    TASK_ID_KEY,
    PolicyView,
    _str_keys,
    _task_id,
)
from xvla.agents.bridges.openpi_ws import OpenpiBridge
from xvla.agents.client import ClientConfig
from xvla.core.embodiments.behavior_tasks import tasks_2025
from xvla.core.embodiments.r1pro_layouts import R1PRO_STATE_DIM, detect_layout

log = logging.getLogger(__name__)

PROTOCOL = "behavior-websocket"


@dataclass
class BehaviorOptions:
    num_envs: int = 1
    # Evaluator task id -> name. None: the 2025 list for 256-d proprio, unknown names for 2026.
    task_table: dict[int, str] | None = None
    state_order: str = "action_aligned"


def policy_problems(p: PolicyView) -> list[str]:
    """Why the served policy cannot take a BEHAVIOR R1Pro's observations (empty: it can)."""
    out: list[str] = []
    if p.action_dim != R1PRO_STATE_DIM:
        out.append(f"the policy's actions have {p.action_dim} values; the BEHAVIOR R1Pro takes {R1PRO_STATE_DIM}")
    unknown = [c for c in p.cameras if c not in BEHAVIOR_CAMERA_KEYS]
    if unknown:
        out.append(f"the policy reads cameras {unknown} that the evaluator does not send "
                   f"(it sends {list(BEHAVIOR_CAMERA_KEYS)})")
    if p.accepted_proprio_dims and R1PRO_STATE_DIM not in p.accepted_proprio_dims \
            and not any(detect_layout(d) for d in p.accepted_proprio_dims):
        out.append(f"the policy takes proprio of {list(p.accepted_proprio_dims)} values; the bridge can give it "
                   f"{R1PRO_STATE_DIM} (cut from the evaluator's 256 or 61 values)")
    if any(c.needs_pose for c in p.describe.cameras):
        out.append("the policy needs camera extrinsics + intrinsics, which the BEHAVIOR evaluators do not send")
    return out


class TaskMapper:
    """Evaluator task ids -> the policy's task ids, by name where both sides name them."""

    def __init__(self, evaluator_tasks: dict[int, str] | None) -> None:
        self.evaluator_tasks = evaluator_tasks

    def table_for(self, proprio_dim: int | None) -> dict[int, str]:
        if self.evaluator_tasks is not None:
            return self.evaluator_tasks
        return tasks_2025() if proprio_dim == 256 else {}

    def map(self, task_id: int | None, policy: PolicyView, proprio_dim: int | None) -> int | None:
        tasks = {int(t.id): t.name for t in policy.describe.tasks}
        if task_id is None or not tasks:
            return task_id
        name = self.table_for(proprio_dim).get(task_id)
        by_name = {n: i for i, n in tasks.items()}
        if name is not None and name in by_name:
            return by_name[name]
        generic = tasks.get(task_id, "") in ("", f"task_{task_id}")
        if task_id in tasks and (name is None or generic):
            return task_id
        known = ", ".join(f"{i} {n}" for i, n in sorted(tasks.items())[:12]) + (" ..." if len(tasks) > 12 else "")
        raise WireError(f"{TASK_ID_KEY}: {task_id}" + (f" ({name})" if name else "")
                        + f" is not one of the policy's {len(tasks)} tasks (known: {known})")


@dataclass
class SessionInfo:
    env: int
    port: int
    peer: str
    requests: int = 0
    errors: int = 0
    task_id: int | None = None
    proprio_dim: int | None = None
    chunk_size: int | None = None
    last_ms: float = 0.0
    opened: float = field(default_factory=time.time)


class BehaviorBridge(OpenpiBridge):
    """``xvla-agent bridge behavior``: one process, ``num_envs`` websocket endpoints, one policy client."""

    def __init__(self, client_config: ClientConfig, config: BridgeConfig | None = None,
                 options: BehaviorOptions | None = None) -> None:
        super().__init__(client_config, config)
        self.options = options or BehaviorOptions()
        if self.options.num_envs < 1:
            raise ValueError(f"num_envs must be >= 1, got {self.options.num_envs}")
        self.tasks = TaskMapper(self.options.task_table)
        self._servers: list = []
        self.ports: list[int] = []
        self.sessions: dict[int, SessionInfo] = {}

    # -- HTTP side: /healthz, /status --------------------------------------------------
    async def readiness(self) -> tuple[bool, list[str]]:
        if not await self.core.healthy():
            return False, ["policy service unavailable"]
        problems = policy_problems(self.core._policy)  # fresh: healthy() just re-read Describe
        return not problems, problems

    async def status(self) -> dict:
        ready, problems = await self.readiness()
        p = self.core._policy
        policy = None
        if p is not None:
            d = p.describe
            policy = {"model_name": d.model_name, "policy_kind": d.policy_kind, "action_dim": p.action_dim,
                      "horizon": p.horizon, "cameras": {c.name: [c.height, c.width] for c in d.cameras},
                      "accepted_proprio_dims": list(p.accepted_proprio_dims), "tasks": len(d.tasks),
                      "skills": len(d.skills)}
        return {
            "ready": ready, "problems": problems, "protocol": PROTOCOL, "ports": self.ports, "policy": policy,
            "config": {"num_envs": self.options.num_envs, "reply_timeout_s": self.config.reply_timeout_s,
                       "domain_id": self.config.domain_id, "state_order": self.options.state_order,
                       "task_table": "custom" if self.options.task_table is not None else "2025 built-in (256-d)",
                       "targets": list(self.core.client_config.targets)},
            "sessions": [vars(s) for s in self.sessions.values()],
            "counters": dict(self.core.counters),
        }

    async def _health(self, connection: ServerConnection, request):
        path = request.path.split("?")[0]
        if path == "/healthz":
            ready, problems = await self.readiness()
            if ready:
                return connection.respond(http.HTTPStatus.OK, "OK\n")
            return connection.respond(http.HTTPStatus.SERVICE_UNAVAILABLE, "; ".join(problems) + "\n")
        if path == "/status":
            resp = connection.respond(http.HTTPStatus.OK, json.dumps(await self.status(), default=str) + "\n")
            resp.headers["Content-Type"] = "application/json"
            return resp
        return None

    # -- websocket side ------------------------------------------------------------------
    async def _handle_env(self, ws: ServerConnection, env: int, port: int) -> None:
        session = LockstepSession(self.core)
        info = SessionInfo(env=env, port=port, peer=str(ws.remote_address))
        self.sessions[id(ws)] = info
        log.info("BEHAVIOR env %d client %s connected on port %d", env, info.peer, port)
        try:
            try:
                await session.prepare()
            except PolicyError as e:
                log.warning("connected without a policy description: %s", e)
            await ws.send(packb(self.core.metadata(PROTOCOL) | {"env": env, "num_envs": self.options.num_envs}))
            prev_total_ms: float | None = None
            while True:
                msg = await ws.recv()
                t0 = time.perf_counter()
                try:
                    reply = await self._answer_env(session, info, msg)
                except (WireError, PolicyError) as e:
                    self.core.counters["errors"] += 1
                    info.errors += 1
                    log.info("error reply to env %d: %s", env, e)
                    await ws.send(f"error: {e}")
                    continue
                except Exception as e:  # noqa: BLE001 - a bug on one message must not drop the evaluator (1011)
                    self.core.counters["errors"] += 1
                    info.errors += 1
                    log.exception("unexpected error answering env %d", env)
                    await ws.send(f"error: internal bridge error ({type(e).__name__})")
                    continue
                if reply is None:  # reset: no reply by protocol
                    continue
                infer_ms = reply.pop("_infer_ms")
                reply["server_timing"] = {"infer_ms": infer_ms, "bridge_ms": (time.perf_counter() - t0) * 1e3 - infer_ms}
                if prev_total_ms is not None:
                    reply["server_timing"]["prev_total_ms"] = prev_total_ms
                await ws.send(packb(reply))
                prev_total_ms = info.last_ms = (time.perf_counter() - t0) * 1e3
        except ConnectionClosed:
            pass
        finally:
            self.sessions.pop(id(ws), None)
            await session.close()
            log.info("BEHAVIOR env %d client %s disconnected", env, info.peer)

    def _adapt(self, obs: dict, policy: PolicyView, info: SessionInfo) -> dict:
        """The evaluator's dict -> what ``translate`` takes: proprio cut to 23 where needed, task id mapped."""
        obs = _str_keys(obs)
        if BEHAVIOR_PROPRIO_KEY in obs:
            raw = np.asarray(obs[BEHAVIOR_PROPRIO_KEY])
            n = int(raw.shape[-1]) if raw.ndim else 0
            info.proprio_dim = n
            layout = detect_layout(n)
            accepted = policy.accepted_proprio_dims
            if layout is not None and n not in accepted and (not accepted or R1PRO_STATE_DIM in accepted):
                if raw.dtype.kind not in "fiu":
                    raise WireError(f"{BEHAVIOR_PROPRIO_KEY}: expected numbers, got dtype {raw.dtype}")
                obs[BEHAVIOR_PROPRIO_KEY] = layout.state(raw, self.options.state_order)
            elif layout is None and n not in accepted:
                raise WireError(f"{BEHAVIOR_PROPRIO_KEY}: {n} values; known evaluator layouts are 256 (2025) and "
                                f"61 (2026 r1pro.yaml proprio_obs), the policy itself takes {list(accepted)}")
        if TASK_ID_KEY in obs and obs[TASK_ID_KEY] is not None:
            tid = _task_id(obs[TASK_ID_KEY])
            mapped = self.tasks.map(tid, policy, info.proprio_dim)
            obs[TASK_ID_KEY] = np.array([mapped if mapped is not None else -1], np.int64)
            info.task_id = tid
        return obs

    async def _answer_env(self, session: LockstepSession, info: SessionInfo, msg) -> dict | None:
        obs = await self._decode(session, msg)
        if obs is None:
            return None
        info.requests += 1
        policy = await session.prepare()
        problems = policy_problems(policy)
        if problems:
            raise PolicyError("the served policy cannot take this robot's observations: " + "; ".join(problems))
        obs = self._adapt(obs, policy, info)
        if ACTION_CHUNK_KEY in obs:
            info.chunk_size = int(np.asarray(obs[ACTION_CHUNK_KEY]).reshape(-1)[0]) if np.size(obs[ACTION_CHUNK_KEY]) == 1 else None
        t = time.perf_counter()
        out = await session.answer(obs)
        out["_infer_ms"] = (time.perf_counter() - t) * 1e3
        return out

    async def start(self) -> int:
        hard_cap = 4 * self.config.max_message_bytes
        base = self.config.port
        for env in range(self.options.num_envs):
            port = base + env if base else 0

            async def handler(ws, env=env):
                await self._handle_env(ws, env, ws.local_address[1])

            server = await serve(handler, self.config.host, port, process_request=self._health, max_size=hard_cap,
                                 compression=None, ping_interval=60, ping_timeout=300)
            self._servers.append(server)
            self.ports.append(server.sockets[0].getsockname()[1])
        self.port = self.ports[0]
        log.info("BEHAVIOR bridge: %d env(s) on ws://%s:%s", self.options.num_envs, self.config.host,
                 ",".join(map(str, self.ports)))
        return self.port

    async def stop(self) -> None:
        for server in self._servers:
            server.close()
        for server in self._servers:
            try:
                await asyncio.wait_for(server.wait_closed(), 2.0)
            except asyncio.TimeoutError:
                log.warning("some connections did not close within 2 s")
        self._servers.clear()
        await self.core.close()


def load_task_routes(path: str | None) -> dict[str, str]:
    """A task -> checkpoint map: JSON or YAML ``{task: route}``, a task being the policy's task id or task
    name (as Describe lists them; evaluator ids are mapped to those first) and a route a bundle name of the
    service's ``routes.yaml``. The service refuses an unknown route naming it, on that task's first request."""
    if not path:
        return {}
    import json
    from pathlib import Path

    text = Path(path).read_text()
    if path.endswith((".yaml", ".yml")):
        import yaml

        raw = yaml.safe_load(text)
    else:
        raw = json.loads(text)
    if not isinstance(raw, dict) or not all(isinstance(v, str) and v for v in raw.values()):
        raise ValueError(f"--task-routes {path}: expected a mapping task id or name -> route name")
    return {str(k).strip(): v for k, v in raw.items()}


def load_task_table(path: str | None) -> dict[int, str] | None:
    if not path:
        return None
    from xvla.core.embodiments.behavior_tasks import load_task_csv

    return load_task_csv(path)


__all__: list[Any] = ["BehaviorBridge", "BehaviorOptions", "TaskMapper", "policy_problems", "load_task_table",
                      "load_task_routes"]
