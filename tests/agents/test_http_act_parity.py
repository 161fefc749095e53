"""The HTTP ``/act`` bridge gives the actions of the X-VLA model itself, for what official clients post.

Reference: the project's own PyTorch X-VLA (``xvla.export.policies.xvla.model``) of the same seeded checkpoint
(the bundle is exported from ``preset_model("tiny-r1pro", 0)``), fed the way the official server
feeds it: the images present packed into views in order, each resized with pillow BICUBIC to
224x224, ImageNet-normalised; JPEG bytes decoded with OpenCV (RGB by default; BGR with
``--official-bgr-jpeg``, as the official server does); the same noise. The bridge path is the real
one: ``/act`` -> gRPC ``Infer`` -> ``xvla-serve`` (ONNX Runtime) in its own process.
"""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from tests.agents.helpers import LoopThread
from tests.support.serve import xvla_serve
from xvla.agents.bridges.codecs import json_numpy_dumps
from xvla.agents.bridges.core import BridgeConfig
from xvla.agents.bridges.http_act import HttpActBridge
from xvla.agents.client import ClientConfig

pytestmark = pytest.mark.timeout(300)
torch = pytest.importorskip("torch")
cv2 = pytest.importorskip("cv2")

PRESET, SEED, DOMAIN, STEPS = "tiny-r1pro", 0, 19, 10
MEAN = np.array([0.485, 0.456, 0.406], np.float32)
STD = np.array([0.229, 0.224, 0.225], np.float32)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    bundles = pytest.importorskip("tests.bundles")
    from xvla.export.policies.xvla.bundle_writer import preset_model
    from xvla.export.policies.xvla.tokenizer import load_tokenizer

    root = tmp_path_factory.mktemp("act-parity")
    bundle = Path(bundles.make_tiny_bundle(root / "cache", preset=PRESET, seed=SEED, parity=False))
    model = preset_model(PRESET, SEED).model.eval()
    tok = load_tokenizer(bundle / "tokenizer")
    with xvla_serve(["--bundle", str(bundle)], root / "serve.log") as (target, _), LoopThread() as lt:
        bridges = {}
        for bgr in (False, True):
            b = HttpActBridge(ClientConfig([target]), BridgeConfig(host="127.0.0.1", port=0), bgr_jpeg=bgr)
            lt.run(b.start())
            bridges[bgr] = b
        try:
            yield model, tok, bridges
        finally:
            for b in bridges.values():
                lt.run(b.stop())


def _reference(model, tok, images: list[np.ndarray], proprio: np.ndarray, noise: np.ndarray, text: str) -> np.ndarray:
    from PIL import Image

    from xvla.export.policies.xvla.tokenizer import tokenize

    x = np.zeros((1, 3, 3, 224, 224), np.float32)
    mask = np.zeros((1, 3), bool)
    for v, img in enumerate(images):  # packed in the order present
        r = np.asarray(Image.fromarray(img).resize((224, 224), Image.Resampling.BICUBIC)).astype(np.float32) / 255.0
        x[0, v] = ((r - MEAN) / STD).transpose(2, 0, 1)
        mask[0, v] = True
    with torch.no_grad():
        out = model.generate_actions(torch.from_numpy(tokenize(tok, [text])), torch.from_numpy(x), torch.from_numpy(mask),
                                     torch.tensor([DOMAIN]), torch.from_numpy(proprio[None]), steps=STEPS,
                                     noise=torch.from_numpy(noise[None]))
    return out[0].numpy()


def _post(port: int, payload: dict) -> tuple[int, dict]:
    req = urllib.request.Request(f"http://127.0.0.1:{port}/act", data=json.dumps(payload).encode(),
                                 headers={"Content-Type": "application/json"}, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=120) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


CASES = {  # name: (image sizes by key, which keys are JPEG)
    "224-one-view": ({"image0": 224}, ()),
    "256-one-view": ({"image0": 256}, ()),
    "256-three-views": ({"image0": 256, "image1": 256, "image2": 256}, ()),
    "subset-image0-image2": ({"image0": 256, "image2": 240}, ()),
    "subset-image1-only": ({"image1": 300}, ()),
    "jpeg-two-views": ({"image0": 256, "image1": 224}, ("image0",)),
}


@pytest.mark.parametrize("case,bgr", [(c, False) for c in CASES] + [("jpeg-two-views", True)],
                         ids=list(CASES) + ["jpeg-two-views-official-bgr"])
def test_act_bridge_matches_the_pytorch_model(setup, case, bgr):
    model, tok, bridges = setup
    sizes, jpeg_keys = CASES[case]
    rng = np.random.default_rng(abs(hash(case)) % 2**32)
    proprio = (rng.standard_normal(23) * 0.1).astype(np.float32)
    noise = rng.standard_normal((30, 23)).astype(np.float32)
    payload = {"proprio": json_numpy_dumps(proprio), "language_instruction": "pick up the cup", "domain_id": DOMAIN,
               "steps": STEPS, "noise": json_numpy_dumps(noise)}
    ref_images = []
    for key, s in sizes.items():
        yy, xx = np.mgrid[0:s, 0:s]
        img = np.stack([(xx * 255 // s), (yy * 255 // s), rng.integers(0, 256, (s, s))], -1).astype(np.uint8)
        if key in jpeg_keys:
            ok, enc = cv2.imencode(".jpg", img[:, :, ::-1])
            assert ok
            payload[key] = json_numpy_dumps(enc.reshape(-1))
            dec = cv2.imdecode(enc, cv2.IMREAD_COLOR)  # what both servers decode: BGR
            ref_images.append(dec if bgr else cv2.cvtColor(dec, cv2.COLOR_BGR2RGB))
        else:
            payload[key] = json_numpy_dumps(img)
            ref_images.append(img)
    status, out = _post(bridges[bgr].port, payload)
    assert status == 200, out
    got = np.array(out["action"], np.float32)
    ref = _reference(model, tok, ref_images, proprio, noise, "pick up the cup")
    assert got.shape == ref.shape == (30, 23)
    err = float(np.abs(got - ref).max())
    print(f"/act {case} bgr={bgr}: max abs {err:.2e}")
    assert err <= 1e-4


def test_act_bridge_status_codes_like_the_official_server(setup):
    _, _, bridges = setup
    port = bridges[False].port
    base = {"proprio": json_numpy_dumps(np.zeros(23, np.float32)), "language_instruction": "x",
            "image0": json_numpy_dumps(np.zeros((64, 64, 3), np.uint8))}
    assert _post(port, base)[0] == 400  # missing domain_id
    code, out = _post(port, dict(base, domain_id=99))  # out of range: the client's fault, not an outage
    assert code == 400 and "domain_id" in out["error"]
    code, out = _post(port, dict(base, domain_id=DOMAIN, steps=0))  # max(1, steps)
    assert code == 200 and np.array(out["action"]).shape == (30, 23)
