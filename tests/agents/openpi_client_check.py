"""Run with the openpi-client environment (.venv-openpi/bin/python), as the BEHAVIOR harness would.

    python openpi_client_check.py PORT N   -> prints one JSON line with what the client saw
"""

import json
import sys
import urllib.request

import numpy as np
from openpi_client import msgpack_numpy
from openpi_client.websocket_client_policy import WebsocketClientPolicy

port, n = int(sys.argv[1]), int(sys.argv[2])
health = urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5).read().decode()
policy = WebsocketClientPolicy(host="127.0.0.1", port=port)
meta = policy.get_server_metadata()
# BEHAVIOR-1K's harness resets an episode by sending {"reset": True}; no reply comes back.
policy._ws.send(msgpack_numpy.packb({"reset": True}))
rng = np.random.default_rng(0)
obs = {
    "robot_r1::robot_r1:zed_link:Camera:0::rgb": rng.integers(0, 256, (720, 720, 4), dtype=np.uint8),
    "robot_r1::robot_r1:left_realsense_link:Camera:0::rgb": rng.integers(0, 256, (480, 480, 4), dtype=np.uint8),
    "robot_r1::robot_r1:right_realsense_link:Camera:0::rgb": rng.integers(0, 256, (480, 480, 4), dtype=np.uint8),
    "robot_r1::proprio": rng.standard_normal(256).astype(np.float32),
    "task_id": np.array([1]),
}
actions = []
for i in range(n):
    out = policy.infer(obs)
    a = out["action"]
    actions.append(a.tolist())
    assert a.shape == (23,) and a.dtype == np.float32, (a.shape, a.dtype)
chunk = policy.infer(dict(obs, __action_chunk_size__=8))
print(json.dumps({
    "health": health,
    "metadata": meta,
    "n": len(actions),
    "actions": actions,
    "chunk_shape": list(chunk["action_chunk"].shape),
    "chunk_first_equals_action": bool(np.array_equal(chunk["action_chunk"][0], chunk["action"])),
    "server_timing_keys": sorted(out["server_timing"]),
    "numpy": np.__version__,
}))
