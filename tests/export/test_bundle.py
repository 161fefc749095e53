"""The tiny preset's bundle: contents, schema, hashes, dynamic batch, CLI behaviour."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from tests.bundles import export_cache_dir
from xvla.core.manifest import BundleError, hash_bundle_files, validate_manifest
from xvla.export.cli import main
from xvla.export.policies.xvla.bundle_writer import BundleExportError, export_bundle, preset_model
from xvla.export.policies.xvla.graphs import GraphOptions, build_graph_specs
from xvla.export.policies.xvla.onnx_export import ort_session


def _manifest(bundle):
    return json.loads((bundle / "manifest.json").read_text())


def test_preset_tiny_bundle_is_complete_and_passed_parity(tiny_cli_bundle):
    m = _manifest(tiny_cli_bundle)
    validate_manifest(m)
    assert m["format_version"] == 2 and m["policy_kind"] == "xvla" and m["model_name"] == "tiny"
    assert m["source"] == {"kind": "preset", "preset": "tiny", "seed": 0}
    assert set(m["graphs"]) == {"vlm", "action"}
    for g in m["graphs"].values():
        assert (tiny_cli_bundle / g["file"]).is_file()
        assert all((tiny_cli_bundle / f).is_file() for f in g["external_data"])
    # every file is hashed, and the hashes are right
    assert m["files"] == hash_bundle_files(tiny_cli_bundle)
    assert {"vlm.onnx", "action.onnx", "tokenizer/vocab.json", "tokenizer/merges.txt"} <= set(m["files"])
    p = m["parity"]
    assert p["passed"] and p["backend"] == "onnxruntime-cpu" and p["steps"] == 10
    assert set(p["outputs"]) == {"vlm_features", "aux_visual_inputs", "actions"}
    assert p["outputs"]["actions"]["max_abs"] <= 1e-4 and p["outputs"]["actions"]["tolerance"] == 1e-4
    assert p["outputs"]["actions"]["cosine"] > 0.99999
    assert m["tensorrt"] is None and m["precision"] == "fp32" and m["max_batch"] == 8


def test_manifest_records_the_contract(tiny_cli_bundle):
    m = _manifest(tiny_cli_bundle)
    # the generic top level every policy kind shares
    assert m["action"] == {"dim": 20, "horizon": 30, "names": [], "gripper_dims": [9, 19]} and m["embodiment"] is None
    assert m["cameras"] == {"names": ["head", "left_wrist", "right_wrist"], "image_size": [224, 224], "needs_pose": False}
    assert m["proprio"] == {"dims": [20]}
    # X-VLA's own block
    a = m["policy"]["action_space"]
    assert (a["mode"], a["dim"], a["model_dim"], a["num_actions"]) == ("ee6d", 20, 20, 30)
    assert a["gripper_dims"] == a["sigmoid_dims"] == [9, 19] and a["idx_for_delta"] == []
    pre = m["policy"]["preprocess"]
    assert pre["image_size"] == [224, 224] and pre["num_views"] == 3
    assert pre["camera_names"] == ["head", "left_wrist", "right_wrist"]
    assert (pre["max_text_len"], pre["pad_token_id"], pre["resize_filter"]) == (50, 1, "bicubic")
    assert pre["geometry"] is None and pre["proprio"] == {"dim": 20}
    assert m["policy"]["denoising"] == {"default_steps": 10, "schedule": "x0_reflow"}
    assert m["skills"] == [] and m["tasks"] == [] and m["policy"]["domains"] == {"default": 0}
    cfg = m["policy"]["model_config"]
    assert cfg["hidden_size"] == 32 and cfg["florence_config"]["projection_dim"] == 32
    assert m["exporter"]["onnx_opset"] == 20 and m["exporter"]["torch"] == torch.__version__.split("+")[0]
    io = {name: ([i["name"] for i in g["inputs"]], [o["name"] for o in g["outputs"]])
          for name, g in m["graphs"].items()}
    assert io["vlm"] == (["image_input", "image_mask", "input_ids"], ["vlm_features", "aux_visual_inputs"])
    assert io["action"] == (["x_t", "t", "proprio", "vlm_features", "aux_visual_inputs", "domain_id"], ["action"])
    shapes = {i["name"]: (i["dtype"], i["shape"]) for g in m["graphs"].values() for i in g["inputs"] + g["outputs"]}
    assert shapes["image_input"] == ("float32", ["batch", 3, 3, 224, 224])
    assert shapes["image_mask"] == ("bool", ["batch", 3])
    assert shapes["t"] == ("float32", ["batch"]) and shapes["domain_id"] == ("int64", ["batch"])
    assert shapes["vlm_features"] == ("float32", ["batch", 100, 32])
    assert shapes["aux_visual_inputs"] == ("float32", ["batch", 100, 32])
    assert shapes["action"] == ("float32", ["batch", 30, 20])


@pytest.mark.parametrize("batch", [1, 3])
def test_one_graph_serves_every_batch(tiny_cli_bundle, batch):
    """The batch axis is really dynamic: batch 1 and 3 on the graphs exported at batch 2."""
    model = preset_model("tiny", 0).model
    specs = build_graph_specs(model, GraphOptions())
    for name in ("vlm", "action"):
        spec = specs[name]
        feeds = spec.example_inputs(batch=batch, seed=7)
        if name == "vlm":
            feeds["image_mask"][-1, 1] = False
        if name == "action":
            feeds["domain_id"] = np.arange(batch, dtype=np.int64) * 7  # several embodiments in one batch
        got = ort_session(tiny_cli_bundle / f"{name}.onnx").run(None, feeds)
        with torch.no_grad():
            ref = spec.module(*[torch.from_numpy(feeds[n]) for n in spec.input_names])
        ref = ref if isinstance(ref, tuple) else (ref,)
        for g, r in zip(got, ref):
            assert g.shape[0] == batch
            np.testing.assert_allclose(g, r.numpy(), rtol=0, atol=1e-4)


def test_tampered_file_is_detected_at_load(tiny_cli_bundle, tmp_path):
    from xvla.runtime.bundle import Bundle, BundleError

    Bundle.load(tiny_cli_bundle)  # intact: loads (schema + hashes)
    copy = tmp_path / "tampered"
    shutil.copytree(tiny_cli_bundle, copy)
    data = copy / "action.onnx.data"
    blob = bytearray(data.read_bytes())
    blob[len(blob) // 2] ^= 0x01  # one bit of one weight
    data.write_bytes(bytes(blob))
    with pytest.raises(BundleError, match="action.onnx.data"):
        Bundle.load(copy)


@pytest.mark.parametrize("mutate, field", [
    (lambda m: m["policy"]["action_space"].pop("dim"), "manifest.policy.action_space"),
    (lambda m: m["policy"]["preprocess"].update(resize_filter="magic"), "manifest.policy.preprocess.resize_filter"),
    (lambda m: m["cameras"].pop("names"), "manifest.cameras"),
    (lambda m: m["action"].update(horizon=0), "manifest.action.horizon"),
    (lambda m: m["graphs"]["action"]["inputs"][0].update(shape=[30, 20]), "manifest.graphs.action.inputs.0.shape"),
    (lambda m: m["files"].update({"vlm.onnx": "not-a-hash"}), "manifest.files.vlm.onnx"),
    (lambda m: m.update(precision="fp8"), "manifest.precision"),
    (lambda m: m.pop("policy"), "manifest"),
])
def test_schema_names_the_bad_field(tiny_cli_bundle, mutate, field):
    m = _manifest(tiny_cli_bundle)
    mutate(m)
    with pytest.raises(BundleError, match=field.replace(".", r"\.")):
        validate_manifest(m)


def test_tokenizer_in_the_bundle_encodes_instructions(tiny_cli_bundle):
    """The runtime's own tokenizer loader (no transformers) reads the bundle's tokenizer."""
    from xvla.runtime.policies.xvla.preprocess import InstructionTokenizer

    m = _manifest(tiny_cli_bundle)["policy"]
    assert m["tokenizer"]["dir"] == "tokenizer" and "vocab.json" in m["tokenizer"]["files"]
    tok = InstructionTokenizer(tiny_cli_bundle / "tokenizer", m["preprocess"]["max_text_len"],
                               m["preprocess"]["pad_token_id"])
    ids = tok("pick up the red cup")
    assert ids.shape == (50,) and ids[0] == m["preprocess"]["bos_token_id"] and ids[-1] == 1
    assert 2 < int(np.argmax(ids == m["preprocess"]["eos_token_id"])) < 49
    assert ids.max() < m["model_config"]["florence_config"]["text_config"]["vocab_size"]


def test_a_format_1_bundle_is_upgraded_on_read_and_an_unknown_format_says_how_to_re_export(tiny_cli_bundle, tmp_path):
    from xvla.core.manifest import upgrade_manifest
    from xvla.runtime.bundle import Bundle

    m2 = _manifest(tiny_cli_bundle)
    v1 = {k: v for k, v in m2.items() if k not in ("policy", "action", "cameras", "proprio", "embodiment")}
    v1.update(m2["policy"], format_version=1)  # the layout bundles had before policy kinds were plug-ins
    old = tmp_path / "old"
    shutil.copytree(tiny_cli_bundle, old)
    (old / "manifest.json").write_text(json.dumps(v1))
    loaded = Bundle.load(old)
    assert loaded.manifest == upgrade_manifest(m2) and (loaded.dim, loaded.horizon) == (20, 30)
    v1["format_version"] = 7
    (old / "manifest.json").write_text(json.dumps(v1))
    with pytest.raises(BundleError, match="format_version 7 .*re-export the bundle"):
        Bundle.load(old)


def test_cli_usage_errors_exit_2(tmp_path, capsys):
    assert main(["-o", str(tmp_path / "x")]) == 2
    assert main([str(tmp_path), "--preset", "tiny", "-o", str(tmp_path / "x")]) == 2
    assert main(["--preset", "no-such-preset", "-o", str(tmp_path / "x")]) == 2
    assert "unknown preset" in capsys.readouterr().err
    assert main([str(tmp_path / "missing"), "-o", str(tmp_path / "x"), "-q"]) == 2
    assert "not a folder" in capsys.readouterr().err


def test_trt_without_tensorrt_is_one_line_and_exit_2(tmp_path, capsys):
    import importlib.util

    if importlib.util.find_spec("tensorrt") is not None:
        pytest.skip("TensorRT is installed here")
    assert main(["--preset", "tiny", "-o", str(tmp_path / "b"), "--trt"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "pip install tensorrt" in err
    assert not (tmp_path / "b").exists()  # refused before any work


def test_parity_failure_exits_1_and_writes_no_bundle(tmp_path, capsys, monkeypatch):
    import xvla.export.policies.xvla.bundle_writer as bw

    real = bw.torch_chunk

    def off_by_a_bit(model, inputs, steps):
        ref = real(model, inputs, steps)
        ref["actions"] = ref["actions"] + 2e-4  # just beyond the fp32 tolerance
        return ref

    monkeypatch.setattr(bw, "torch_chunk", off_by_a_bit)
    out = tmp_path / "bad"
    code = main(["--preset", "tiny", "-o", str(out), "--cache-dir", str(export_cache_dir()), "-q"])
    err = capsys.readouterr().err
    assert code == 1
    assert "parity gate failed" in err and "actions" in err and "FAIL" in err and "2.0" in err
    assert not (out / "manifest.json").exists()
    report = json.loads((tmp_path / "bad.failed" / "parity_report.json").read_text())
    assert report["passed"] is False and report["outputs"]["actions"]["passed"] is False
    assert report["outputs"]["vlm_features"]["passed"] is True


def test_no_parity_is_recorded_as_not_run(tiny_cli_bundle, tmp_path, capsys):
    out = tmp_path / "unchecked"
    code = main(["--preset", "tiny", "--seed", "2", "-o", str(out), "--cache-dir", str(export_cache_dir()),
                 "--no-parity", "--max-batch", "2", "--camera-names", "front,left,right", "--domain", "aloha=3"])
    assert code == 0
    m = _manifest(out)
    assert m["parity"] is None and m["max_batch"] == 2 and m["source"]["seed"] == 2
    assert m["cameras"]["names"] == ["front", "left", "right"] and m["policy"]["domains"] == {"aloha": 3}
    assert "parity gate skipped" in capsys.readouterr().err


def test_template_cache_reuses_the_graph_with_new_weights(tiny_cli_bundle, tmp_path):
    """A second model of the same architecture reuses the traced graph; parity proves the weights."""
    out = export_bundle(preset_model("tiny", seed=1), tmp_path / "seed1", cache_dir=export_cache_dir())
    m0, m1 = _manifest(tiny_cli_bundle), _manifest(out)
    assert m1["parity"]["passed"] and m1["parity"]["outputs"]["actions"]["max_abs"] <= 1e-4
    assert m0["files"]["action.onnx.data"] != m1["files"]["action.onnx.data"]  # new weights inside


def test_refuses_to_replace_a_folder_that_is_not_a_bundle(tmp_path):
    (tmp_path / "precious.txt").write_text("keep me")
    with pytest.raises(BundleExportError, match="not a bundle"):
        export_bundle(preset_model("tiny", 0), tmp_path, cache_dir=export_cache_dir())
    assert (tmp_path / "precious.txt").read_text() == "keep me"
