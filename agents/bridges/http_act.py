"""X-VLA's reference HTTP API (``POST /act``), forwarded to the gRPC service's unary ``Infer``.

A drop-in for the official X-VLA server (``models/modeling_xvla.py`` ``run()``: FastAPI, JSON with
``json_numpy`` arrays). Its behaviour as reproduced here (observed side by side with the official
server at commit 2c4fedf, notes in ``shared/reference/peers.md``; the source itself was not in the
stored snapshot this was written from):

- ``image0``, ``image1``, ``image2``: the images *present* are packed into views in that order
  (``image0`` + ``image2`` fill views 0 and 1: head and left wrist for R1Pro). Each may be an
  HxWx3 (or HxWx4, HxW grayscale, HxWx1) array, a plain list, 1-D uint8 JPEG/PNG bytes, or a
  path string naming an image file on the serving machine. Arrays go out at their own size: the
  service resizes them with the bundle's contract (pillow bicubic), as the official processor does.
- JPEG/PNG bytes: the official server decodes them with OpenCV and feeds the BGR result as if it
  were RGB. Default here (``bgr_jpeg=False``): correct RGB colours, because X-VLA checkpoints
  are trained on RGB frames (the bytes pass through, the service decodes them to RGB).
  ``--official-bgr-jpeg`` reproduces the official channel swap for bit-level agreement with it.
  Path strings are opened as RGB in both (the official server uses ``PIL.Image.open``).
- ``steps``: ``max(1, steps)``, no upper bound here (default 10 when absent, like the official;
  the service itself refuses more than 1000); ``domain_id``: required, an integer in the model's
  range, else 400 (not 503: nothing to retry); ``language_instruction`` and ``proprio`` required.
- ``noise`` (an extension, not in the official API): the [T, D] flow-matching start, for reproducible
  chunks (the official server draws it with ``torch.randn``).
- Reply: ``{"action": [[...], ...]}``, the whole chunk [T, D]. Errors: 400 ``{"error": ...}`` for
  bad input (naming the field), 422 ``{"detail": [...]}`` when the body is not a JSON object
  (FastAPI's own validation error shape), 413 over the size limit, 503 when the policy service is
  unreachable.

Also: ``GET /healthz`` (200/503) and ``GET /describe`` (the policy description as JSON).
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
import time
from pathlib import Path

import numpy as np
from aiohttp import web

from xvla.agents.bridges.codecs import WireError, as_array, as_int32, json_numpy_value
from xvla.agents.bridges.core import BridgeConfig, BridgeCore, BridgeServer, LockstepSession, PolicyError
from xvla.agents.bridges.observations import PolicyView
from xvla.agents.client import ClientConfig
from xvla.agents.imaging import as_rgb8
from xvla.core.tensors import numpy_to_tensor
from xvla.proto import policy_pb2 as pb

log = logging.getLogger(__name__)

IMAGE_KEYS = ("image0", "image1", "image2")
DEFAULT_CAMERAS = ("head", "left_wrist", "right_wrist")
DEFAULT_STEPS = 10  # the official server's default when ``steps`` is absent
_JPEG, _PNG = b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n"
REFUSED_CODES = ("INVALID_ARGUMENT", "OUT_OF_RANGE", "FAILED_PRECONDITION")


def _json_error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


def _validation_error(kind: str, msg: str, loc: list) -> web.Response:
    """FastAPI's 422 body for a request body that is not a JSON object."""
    return web.json_response({"detail": [{"type": kind, "loc": loc, "msg": msg, "input": None}]}, status=422)


def _decode_bytes_bgr(data: bytes, key: str) -> np.ndarray:
    """JPEG/PNG -> the official server's pixels: OpenCV's IMREAD_COLOR result (BGR), taken as RGB."""
    from PIL import Image  # only with --official-bgr-jpeg

    try:
        rgb = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
    except Exception as e:  # noqa: BLE001
        raise WireError(f"{key}: could not decode {len(data)} bytes as an image ({type(e).__name__})") from e
    return np.ascontiguousarray(rgb[:, :, ::-1])


def _image_from_path(path: str, key: str) -> tuple[bytes | None, np.ndarray | None]:
    """A path string (official: ``PIL.Image.open``): JPEG/PNG bytes pass through, other formats decode."""
    p = Path(path)
    if not p.is_file():
        raise WireError(f"{key}: no image file at {path[:200]!r}")
    data = p.read_bytes()
    if data.startswith(_JPEG) or data.startswith(_PNG):
        return data, None
    from PIL import Image

    try:
        return None, np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
    except Exception as e:  # noqa: BLE001
        raise WireError(f"{key}: {path[:200]!r} is not an image pillow can read ({type(e).__name__})") from e


def _as_pixels(a: np.ndarray, key: str) -> np.ndarray:
    """Any array the official server would take (``PIL.Image.fromarray``) -> HxWx3 uint8 RGB."""
    if a.ndim == 3 and a.shape[2] == 1:
        a = a[:, :, 0]
    if a.ndim == 2:  # grayscale: PIL's L -> RGB conversion replicates the channel
        a = np.repeat(a[:, :, None], 3, axis=2)
    if a.ndim != 3 or a.shape[2] not in (3, 4) or a.shape[0] < 1 or a.shape[1] < 1:
        raise WireError(f"{key}: expected an HxWx3, HxWx4 or HxW image, got shape {list(a.shape)}")
    if a.dtype != np.uint8:
        if a.dtype.kind not in "iuf":
            raise WireError(f"{key}: expected uint8 pixels, got {a.dtype}")
        a = np.clip(a, 0, 255).astype(np.uint8)
    return as_rgb8(a, key)


def build_observation(payload: dict, policy: PolicyView, bgr_jpeg: bool = False) -> tuple[pb.Observation, str, int, int]:
    """Validate an /act payload -> (observation, instruction, domain_id, steps)."""
    if not isinstance(payload, dict):
        raise WireError("the body must be a JSON object")
    cams = policy.cameras or DEFAULT_CAMERAS
    obs = pb.Observation()
    for key in IMAGE_KEYS:
        if key not in payload or payload[key] is None:
            continue
        view = len(obs.cameras)  # packed in the order present, as the official server does
        if view >= len(cams):
            raise WireError(f"{key}: the policy reads only {len(cams)} camera(s) {list(cams)}")
        v = json_numpy_value(payload[key], key)
        encoded: bytes | None = None
        pixels: np.ndarray | None = None
        if isinstance(v, str):
            encoded, pixels = _image_from_path(v, key)
        else:
            a = as_array(v, key) if isinstance(v, (list, tuple)) else v
            if not isinstance(a, np.ndarray):
                raise WireError(f"{key}: expected an image array, got {type(v).__name__}")
            if a.ndim == 1 and a.dtype == np.uint8:  # encoded image bytes
                data = a.tobytes()
                if not (data.startswith(_JPEG) or data.startswith(_PNG)):
                    raise WireError(f"{key}: 1-D bytes that are neither JPEG nor PNG")
                if bgr_jpeg:
                    pixels = _decode_bytes_bgr(data, key)
                else:
                    encoded = data
            else:
                pixels = _as_pixels(a, key)
        cf = obs.cameras.add(name=cams[view])
        if encoded is not None:
            cf.image.encoding = pb.JPEG if encoded.startswith(_JPEG) else pb.PNG
            cf.image.data = encoded
        else:
            cf.image.encoding = pb.RAW_RGB8
            cf.image.height, cf.image.width = pixels.shape[0], pixels.shape[1]
            cf.image.data = pixels.tobytes()
    if len(obs.cameras) == 0:
        raise WireError("image0: no valid images found (send at least one of image0, image1, image2)")
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
    numpy_to_tensor(p, obs.proprio)
    instruction = payload.get("language_instruction")
    if not isinstance(instruction, str):
        raise WireError("language_instruction: missing or not a string")
    if payload.get("domain_id") is None:
        raise WireError("domain_id: missing (the embodiment id, e.g. 19 for R1Pro)")
    domain_id = as_int32(payload["domain_id"], "domain_id", lo=0)
    steps = max(1, as_int32(payload.get("steps", DEFAULT_STEPS), "steps"))
    return obs, instruction, domain_id, steps


def payload_noise(payload: dict) -> np.ndarray | None:
    """``noise`` (not in the official API): the flow-matching start [T, Dm], for reproducible chunks."""
    if payload.get("noise") is None:
        return None
    n = json_numpy_value(payload["noise"], "noise")
    try:
        n = np.asarray(n, dtype=np.float32)
    except (TypeError, ValueError) as e:
        raise WireError(f"noise: not a numeric array ({e})") from e
    if n.ndim not in (2, 3) or not np.all(np.isfinite(n)):
        raise WireError(f"noise: expected a finite [T, D] array, got shape {list(n.shape)}")
    return n


class HttpActBridge(BridgeServer):
    def __init__(self, client_config: ClientConfig, config: BridgeConfig | None = None, bgr_jpeg: bool = False) -> None:
        self.config = config or BridgeConfig()
        self.bgr_jpeg = bgr_jpeg  # --official-bgr-jpeg: reproduce the official server's channel swap
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
                body = await request.read()
            except web.HTTPRequestEntityTooLarge:
                raise
            try:
                payload = json.loads(body)
            except (ValueError, UnicodeDecodeError, RecursionError) as e:  # FastAPI: 422 json_invalid (deep nesting too)
                self.core.counters["errors"] += 1
                return _validation_error("json_invalid", f"JSON decode error ({type(e).__name__})", ["body", 0])
            if not isinstance(payload, dict):  # FastAPI: 422 dict_type
                self.core.counters["errors"] += 1
                return _validation_error("dict_type", "Input should be a valid dictionary", ["body"])
            policy = await self.core.policy()
            # lists -> arrays, image checks and resizes: off the event loop (other requests, health)
            obs, instruction, domain_id, steps = await asyncio.to_thread(build_observation, payload, policy, self.bgr_jpeg)
            actions, _ = await self._session.chunk(obs, None, None, steps=steps, instruction=instruction, domain_id=domain_id,
                                                   noise=payload_noise(payload))
        except web.HTTPRequestEntityTooLarge:
            self.core.counters["errors"] += 1
            return _json_error(413, f"request body exceeds the limit of {self.config.max_message_bytes} bytes")
        except WireError as e:
            self.core.counters["errors"] += 1
            return _json_error(400, str(e))
        except PolicyError as e:
            self.core.counters["errors"] += 1
            # The service refused this request (e.g. domain_id out of range): the client's fault, 400 like
            # the official server; anything else is an outage worth retrying (503).
            return _json_error(400 if e.code in REFUSED_CODES else 503, str(e))
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
