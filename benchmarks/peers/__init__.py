"""Re-creations of other VLA serving protocols, to compare wire formats and per-request overhead.

These are NOT the peers' servers: they are small harness servers written here that speak
each peer's *protocol* (transport, message layout, array encoding, request pattern) in
front of the very same model and runtime (``xvla.runtime.Policy`` on the same bundle), so
that the only difference between two rows of the comparison is the protocol.

* ``http``    X-VLA reference style: HTTP/1.1 ``POST /act``, JSON body with json_numpy-style
              arrays (base64 of the raw bytes + dtype + shape), reply ``{"action": [[...]]}``
              as plain JSON numbers; one request = one chunk. (The original runs FastAPI +
              uvicorn; this one runs aiohttp.)
* ``lerobot`` LeRobot async-inference style: gRPC without a .proto (generic handlers, raw
              bytes), the observation ``pickle``d and sent as a client stream of <= 2 MB
              pieces, actions fetched by a *polled* unary call that returns a pickled list
              of timestamped actions (empty when nothing is ready).
* ``zmq``     GR00T style: ZeroMQ REQ/REP, msgpack, arrays as ``.npy`` bytes inside a
              marker dict, ``{"endpoint": "get_action", "data": ...}`` requests.
"""

STYLES = ("http", "lerobot", "zmq")
