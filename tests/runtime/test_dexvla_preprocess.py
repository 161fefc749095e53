"""DexVLA preprocessing without torch, against the official processor outputs (``prompt.*``, ``train.*``,
``vlm.position_ids`` / ``vlm.rope_deltas``) of every DexVLA conformance set found."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file

from tests.conformance.dexvla_goldens import dexvla_sets
from tests.conftest import conformance_root
from xvla.runtime.policies.dexvla.preprocess import (
    DexVLAPreprocessor,
    ImageConfig,
    image_patches,
    mrope_position_ids,
    render_prompt,
    smart_resize,
)

_SETS = dexvla_sets(conformance_root()) if conformance_root().is_dir() else []
SETS = [pytest.param(p, id=p.name) for p in _SETS] or [
    pytest.param(None, marks=pytest.mark.skip(reason="no DexVLA goldens under XVLA_CONFORMANCE_DIR"))]


@pytest.fixture(scope="module", params=SETS)
def golden(request):
    root: Path = request.param
    meta = json.loads((root / "meta.json").read_text())
    return root, meta, load_file(str(root / "goldens.safetensors"))


def _views(g: dict, i: int) -> list[np.ndarray]:
    """input.images_uint8 (views, B, C, H, W) -> sample i's views as (H, W, C)."""
    return [np.ascontiguousarray(v[i].transpose(1, 2, 0)) for v in g["input.images_uint8"]]


@pytest.fixture(scope="module")
def processed(golden):
    root, meta, g = golden
    pre = DexVLAPreprocessor.from_folder(root / "tiny_model")
    tasks = meta["configs"]["set"]["tasks"]
    samples = [pre.sample(_views(g, i), tasks[i]) for i in range(len(tasks))]
    return pre, samples, pre.batch(samples)


def test_prompt_text_is_the_chat_template_output(golden):
    _, meta, g = golden
    n_views = g["input.images_uint8"].shape[0]
    assert [render_prompt(n_views, t) for t in meta["configs"]["set"]["tasks"]] == meta["prompt_text"]


def test_chat_template_file_renders_the_same(golden):
    jinja2 = pytest.importorskip("jinja2")
    root, meta, g = golden
    template = json.loads((root / "tiny_model" / "chat_template.json").read_text())["chat_template"]
    n_views = g["input.images_uint8"].shape[0]
    task = meta["configs"]["set"]["tasks"][0]
    content = [{"type": "image", "image": None}] * n_views + [{"type": "text", "text": task}]
    messages = [{"role": "user", "content": content}]
    text = jinja2.Environment().from_string(template).render(messages=messages, add_generation_prompt=True)
    assert text == render_prompt(n_views, task)


def test_token_ids_mask_and_grid(golden, processed):
    _, _, g = golden
    _, _, batch = processed
    np.testing.assert_array_equal(batch.input_ids, g["prompt.input_ids"])
    np.testing.assert_array_equal(batch.attention_mask, g["prompt.attention_mask"])
    np.testing.assert_array_equal(batch.image_grid_thw, g["prompt.image_grid_thw"])
    assert batch.input_ids.dtype == np.int64 and batch.image_grid_thw.dtype == np.int64


def test_pixel_values_bit_exact(golden, processed):
    _, _, g = golden
    _, _, batch = processed
    assert batch.pixel_values.dtype == np.float32
    np.testing.assert_array_equal(batch.pixel_values, g["prompt.pixel_values"])


def test_mrope_positions_and_deltas(golden, processed):
    _, _, g = golden
    _, _, batch = processed
    np.testing.assert_array_equal(batch.position_ids, g["vlm.position_ids"])
    np.testing.assert_array_equal(batch.rope_deltas, g["vlm.rope_deltas"])


def test_training_ids_labels_mask(golden, processed):
    """Prompt + ``reasoning + " Next action:<|im_end|>"``, left-padded (labels -100 on pad and prompt)."""
    _, meta, g = golden
    pre, samples, _ = processed
    rows = []
    for s, reasoning in zip(samples, meta["configs"]["set"]["reasonings"]):
        ans = pre.answer_ids(reasoning)
        rows.append((np.concatenate([s.input_ids, ans]), np.concatenate([np.full(len(s.input_ids), -100), ans])))
    seq = max(len(r[0]) for r in rows)
    ids = np.stack([np.pad(r[0], (seq - len(r[0]), 0), constant_values=pre.tokens.pad) for r in rows])
    labels = np.stack([np.pad(r[1], (seq - len(r[1]), 0), constant_values=-100) for r in rows])
    np.testing.assert_array_equal(ids, g["train.input_ids"])
    np.testing.assert_array_equal(labels, g["train.labels"])
    np.testing.assert_array_equal((ids != pre.tokens.pad).astype(np.int64), g["train.attention_mask"])


def test_smart_resize_rules():
    assert smart_resize(56, 84, 28, 3136, 28 * 28 * 16384) == (56, 84)
    assert smart_resize(240, 320, 28, 3136, 28 * 28 * 16384) == (252, 308)  # the official eval size
    h, w = smart_resize(10, 10, 28, 3136, 10**7)
    assert (h, w) == (56, 56)
    h, w = smart_resize(4000, 6000, 28, 3136, 1000 * 784)
    assert h % 28 == 0 and w % 28 == 0 and h * w <= 1000 * 784
    with pytest.raises(ValueError, match="aspect ratio"):
        smart_resize(10, 2100, 28, 3136, 10**7)


def test_resized_image_grid_and_patch_order():
    """A non-multiple-of-28 image is resized; patch rows follow the (h/2, w/2, 2, 2) merge windows."""
    img = np.random.default_rng(0).integers(0, 256, (60, 90, 3), dtype=np.uint8)
    patches, grid = image_patches(img, ImageConfig())
    assert grid == (1, 4, 6) and patches.shape == (24, 3 * 2 * 14 * 14)
    ramp = np.zeros((56, 56, 3), dtype=np.uint8)
    ramp[:28, 28:] = 255  # only merge window (0, 1) is bright
    p, g2 = image_patches(ramp, ImageConfig())
    assert g2 == (1, 4, 4)
    bright = p.mean(axis=1) > 1.0
    assert bright.tolist() == [False] * 4 + [True] * 4 + [False] * 8
    # the two temporal copies of a still image are identical
    q = p.reshape(16, 3, 2, 14, 14)
    np.testing.assert_array_equal(q[:, :, 0], q[:, :, 1])


def test_mrope_text_only_and_left_pad():
    ids = np.array([[0, 0, 5, 6, 7]])
    pos, d = mrope_position_ids(ids, np.array([[0, 0, 1, 1, 1]]), np.zeros((0, 3), np.int64), 99, 98, 2)
    assert pos[:, 0].tolist() == [[1, 1, 0, 1, 2]] * 3 and d.tolist() == [[3 - 5]]


def test_preprocess_imports_neither_torch_nor_transformers():
    code = ("import sys, xvla.runtime.policies.dexvla.preprocess; "
            "bad = [m for m in ('torch', 'transformers') if m in sys.modules]; assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)
