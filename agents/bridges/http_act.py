"""X-VLA's reference HTTP API (``POST /act``), forwarded to the gRPC service's unary ``Infer``.

Request (what X-VLA's evaluation clients post, arrays as ``json_numpy`` strings):
``{"image0": ..., "image1"?: ..., "image2"?: ..., "proprio": ..., "language_instruction": str,
"domain_id"?: int, "steps"?: int}``. ``imageN`` is the N-th camera of the policy
(``Describe.cameras`` order: head, left wrist, right wrist for R1Pro); an image may be
an HxWx3 array or a 1-D uint8 array of JPEG/PNG bytes (passed through encoded; the
service decodes it). Reply: ``{"action": [[...], ...]}``, the whole chunk [T, D],
like the reference server. Errors: ``{"error": "..."}`` with 400 (bad input, naming
the field), 413 (body over the limit) or 503 (policy service unreachable).

Also: ``GET /healthz`` (200/503) and ``GET /describe`` (the policy description as JSON).
"""

from __future__ import annotations

import asyncio
import logging
import time

import numpy as np
from aiohttp import web

from xvla.agents.bridges.codecs import WireError, json_numpy_value
from xvla.agents.bridges.core import BridgeConfig, BridgeCore, BridgeServer, LockstepSession, PolicyError
from xvla.agents.bridges.observations import PolicyView
from xvla.agents.client import ClientConfig
from xvla.agents.imaging import resize_rgb
from xvla.agents.tensors import to_tensor
from xvla.proto import policy_pb2 as pb

log = logging.getLogger(__name__)

IMAGE_KEYS = ("image0", "image1", "image2")
DEFAULT_CAMERAS = ("head", "left_wrist", "right_wrist")
_JPEG, _PNG = b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n"


def _json_error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


def build_observation(payload: dict, policy: PolicyView) -> tuple[pb.Observation, str, int | None, int]:
    """Validate an /act payload -> (observation, instruction, domain_id, steps)."""
    if not isinstance(payload, dict):
        raise WireError("the body must be a JSON object")
    cams = policy.cameras or DEFAULT_CAMERAS
    sizes = {c.name: (int(c.height), int(c.width)) for c in policy.describe.cameras}
    obs = pb.Observation()
    n_images = 0
    for i, key in enumerate(IMAGE_KEYS):
        if key not in payload or payload[key] is None:
            continue
        if i >= len(cams):
            raise WireError(f"{key}: the policy reads only {len(cams)} camera(s) {list(cams)}")
        v = json_numpy_value(payload[key], key)
        a = np.asarray(v) if isinstance(v, list) else v
        if not isinstance(a, np.ndarray):
            raise WireError(f"{key}: expected an image array, got {type(v).__name__}")
        cf = obs.cameras.add(name=cams[i])
        if a.ndim == 1 and a.dtype == np.uint8:  # encoded image bytes: pass through
            data = a.tobytes()
            if data.startswith(_JPEG):
                cf.image.encoding = pb.JPEG
            elif data.startswith(_PNG):
                cf.image.encoding = pb.PNG
            else:
                raise WireError(f"{key}: 1-D bytes that are neither JPEG nor PNG")
            cf.image.data = data
        else:
            if a.ndim != 3 or a.shape[2] not in (3, 4):
                raise WireError(f"{key}: expected an HxWx3 image, got shape {list(a.shape)}")
            if a.dtype != np.uint8:
                if a.dtype.kind not in "iuf":
                    raise WireError(f"{key}: expected uint8 pixels, got {a.dtype}")
                a = np.clip(a, 0, 255).astype(np.uint8)
            h, w = sizes.get(cams[i], (0, 0))
            img = resize_rgb(a, h, w) if h and w else np.ascontiguousarray(a[:, :, :3])
            cf.image.encoding = pb.RAW_RGB8
            cf.image.height, cf.image.width = img.shape[0], img.shape[1]
            cf.image.data = img.tobytes()
        n_images += 1
    if n_images == 0:
        raise WireError("image0: no valid images found (send at least image0)")
    if "proprio" not in payload:
        raise WireError("proprio: missing")
    p = json_numpy_value(payload["proprio"], "proprio")
    try:
        p = np.asarray(p, dtype=np.float32).reshape(-1)
    except (TypeError, ValueError) as e:
        raise WireError(f"proprio: not a numeric vector ({e})") from e
    if policy.accepted_proprio_dims and p.shape[0] not in policy.accepted_proprio_dims:
        raise WireError(f"proprio: {p.shape[0]} values, the policy accepts {list(policy.accepted_proprio_dims)}")
    if not np.all(np.isfinite(p)):
        raise WireError("proprio: contains NaN or inf")
    to_tensor(p, obs.proprio)
    instruction = payload.get("language_instruction")
    if not isinstance(instruction, str):
        raise WireError("language_instruction: missing or not a string")
    domain_id = payload.get("domain_id")
    if domain_id is not None:
        try:
            domain_id = int(domain_id)
        except (TypeError, ValueError) as e:
            raise WireError(f"domain_id: not an integer ({domain_id!r:.30})") from e
    steps = payload.get("steps", 0) or 0
    try:
        steps = int(steps)
    except (TypeError, ValueError) as e:
        raise WireError(f"steps: not an integer ({steps!r:.30})") from e
    if not 0 <= steps <= 1000:
        raise WireError(f"steps: {steps} is outside 0..1000 (0 = the policy default)")
    return obs, instruction, domain_id, steps


class HttpActBridge(BridgeServer):
    def __init__(self, client_config: ClientConfig, config: BridgeConfig | None = None) -> None:
        self.config = config or BridgeConfig()
        self.core = BridgeCore(client_config, self.config)
        self._session = LockstepSession(self.core)  # Infer is stateless: one helper serves every request
        self._runner: web.AppRunner | None = None
        self.port = 0

    def app(self) -> web.Application:
        app = web.Application(client_max_size=self.config.max_message_bytes, middlewares=[self._auth])
        app.router.add_post("/act", self._act)
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/describe", self._describe)
        return app

    @web.middleware
    async def _auth(self, request: web.Request, handler):
        if request.path != "/healthz" and not self.config.security.authorized(request.headers.get("Authorization")):
            return _json_error(401, "authorization: missing or wrong token")
        return await handler(request)

    async def _healthz(self, request: web.Request) -> web.Response:
        if await self.core.healthy():
            return web.Response(text="OK\n")
        return web.Response(status=503, text="policy service unavailable\n")

    async def _describe(self, request: web.Request) -> web.Response:
        try:
            await self.core.policy()
        except PolicyError as e:
            return _json_error(503, str(e))
        return web.json_response(self.core.metadata("xvla-http-act"))

    async def _act(self, request: web.Request) -> web.Response:
        t0 = time.perf_counter()
        self.core.counters["requests"] += 1
        try:
            try:
                payload = await request.json()
            except web.HTTPRequestEntityTooLarge:
                raise
            except Exception as e:  # noqa: BLE001 - any parse failure is the client's
                raise WireError(f"the body is not valid JSON ({type(e).__name__})") from e
            policy = await self.core.policy()
            # lists -> arrays, image checks and resizes: off the event loop (other requests, health)
            obs, instruction, domain_id, steps = await asyncio.to_thread(build_observation, payload, policy)
            actions, _ = await self._session.chunk(obs, None, None, steps=steps, instruction=instruction, domain_id=domain_id)
        except web.HTTPRequestEntityTooLarge:
            self.core.counters["errors"] += 1
            return _json_error(413, f"request body exceeds the limit of {self.config.max_message_bytes} bytes")
        except WireError as e:
            self.core.counters["errors"] += 1
            return _json_error(400, str(e))
        except PolicyError as e:
            self.core.counters["errors"] += 1
            return _json_error(503, str(e))
        log.debug("/act answered in %.1f ms", (time.perf_counter() - t0) * 1e3)
        return web.json_response({"action": actions.tolist()})

    async def start(self) -> int:
        self._runner = web.AppRunner(self.app(), access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.config.host, self.config.port,
                           ssl_context=self.config.security.ssl_context())
        for warning in self.config.security.startup_warnings(self.config.host, "the HTTP /act bridge"):
            log.warning(warning)
        await site.start()
        server = site._server  # the bound port when port=0
        self.port = server.sockets[0].getsockname()[1] if server and server.sockets else self.config.port
        log.info("HTTP /act bridge on http://%s:%d", self.config.host, self.port)
        return self.port

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        await self.core.close()
