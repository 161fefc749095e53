"""manifest.json, the contract between export and runtime: hashing, schema validation, format upgrades.

The writer (xvla.export) and the reader (xvla.runtime) both validate against the same schemas, kept
here as data: ``schemas/manifest_v2.json`` for the generic top level every policy kind shares, and
``schemas/policy_<kind>.json`` for the kind-specific ``policy`` block. A bundle written in format 1
(before policy kinds were plug-ins) is upgraded on read; an unknown format is refused with a message
that says how to re-export.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
from importlib import resources
from pathlib import Path
from typing import Any, Mapping

log = logging.getLogger(__name__)

FORMAT_VERSION = 2
SUPPORTED_FORMAT_VERSIONS = (1, 2)
MANIFEST_NAME = "manifest.json"


class BundleError(ValueError):
    """The bundle is missing, malformed, tampered with or incompatible with this runtime (names the field)."""


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def hash_bundle_files(root: Path) -> dict[str, str]:
    """sha256 of every file under ``root`` except manifest.json, keyed by POSIX relative path."""
    root = Path(root)
    return {p.relative_to(root).as_posix(): sha256_file(p) for p in sorted(root.rglob("*"))
            if p.is_file() and p.relative_to(root).as_posix() != MANIFEST_NAME}


def verify_files(root: Path, files: Mapping[str, str]) -> None:
    """Every listed file must exist and hash to its recorded sha256."""
    for rel, expected in sorted(files.items()):
        path = Path(root) / rel
        if not path.is_file():
            raise BundleError(f"bundle file missing: {rel} (listed in manifest.files)")
        got = sha256_file(path)
        if got != expected:
            raise BundleError(
                f"bundle file tampered or corrupt: {rel} has sha256 {got[:16]}..., manifest.files says {expected[:16]}...")


def schema_path(name: str) -> Path:
    return Path(str(resources.files("xvla.core").joinpath("schemas", name)))


def load_schema(name: str) -> dict[str, Any] | None:
    """A schema by file name (``manifest_v2.json``, ``policy_xvla.json``); None when there is none."""
    path = schema_path(name)
    return json.loads(path.read_text()) if path.is_file() else None


def _check(document: Mapping[str, Any], schema: Mapping[str, Any], prefix: str) -> None:
    import jsonschema

    validator = jsonschema.Draft202012Validator(schema)
    errors = sorted(validator.iter_errors(document), key=lambda e: [str(p) for p in e.absolute_path])
    if errors:
        first = errors[0]
        where = ".".join(str(p) for p in first.absolute_path)
        more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
        raise BundleError(f"{prefix}{'.' + where if where else ''}: {first.message}{more}")


def validate_manifest(manifest: Mapping[str, Any], policy_schema: Mapping[str, Any] | None = None) -> None:
    """Validates a format-2 manifest: the generic schema, then the ``policy`` block against the kind's schema.

    ``policy_schema`` defaults to ``schemas/policy_<kind>.json`` when core ships one (a plug-in kind
    passes its own). The error names the offending field (``manifest.policy.preprocess.image_size: ...``).
    """
    fmt = manifest.get("format_version")
    if fmt != FORMAT_VERSION:
        raise BundleError(f"manifest.format_version {fmt!r}: expected {FORMAT_VERSION} (upgrade_manifest reads older ones)")
    _check(manifest, load_schema(f"manifest_v{FORMAT_VERSION}.json") or {}, "manifest")
    kind = str(manifest["policy_kind"])
    schema = policy_schema if policy_schema is not None else load_schema(f"policy_{kind}.json")
    if schema is not None:
        _check(manifest["policy"], schema, "manifest.policy")


def upgrade_manifest(manifest: Mapping[str, Any]) -> dict[str, Any]:
    """Any supported format -> format 2 (a copy). Format 1 was X-VLA only; its kind-specific fields move
    into the ``policy`` block and the generic ones are derived from them."""
    fmt = manifest.get("format_version")
    if fmt not in SUPPORTED_FORMAT_VERSIONS:
        raise BundleError(
            f"manifest.format_version {fmt!r} is not supported by this runtime (supports {SUPPORTED_FORMAT_VERSIONS}); "
            "re-export the bundle with this version's xvla-export, or upgrade xvla-runtime")
    m = copy.deepcopy(dict(manifest))
    if fmt == FORMAT_VERSION:
        return m
    log.info("manifest format 1 upgraded on read (re-export to write format %d)", FORMAT_VERSION)
    return _upgrade_v1(m)


_V1_POLICY_KEYS = ("model_config", "action_space", "preprocess", "denoising", "domains", "tokenizer")


def _upgrade_v1(m: dict[str, Any]) -> dict[str, Any]:
    from xvla.core.embodiments import r1pro

    for key in ("action_space", "preprocess", "graphs"):
        if not isinstance(m.get(key), dict):
            raise BundleError(f"manifest.{key}: required in a format-1 manifest (re-export the bundle)")
    space, pre = m["action_space"], m["preprocess"]
    proprio = pre.get("proprio") or {}
    dim = int(space.get("dim", 0))
    embodiment = r1pro.NAME if proprio.get("r1pro_raw_dim") else None
    grippers = [int(i) for i in space.get("gripper_dims", []) if int(i) < dim]
    if not grippers and embodiment == r1pro.NAME and dim == r1pro.R1PRO_ACTION_DIM:
        grippers = list(r1pro.R1PRO_GRIPPER_DIMS)  # auto mode does not list them; they are never blended
    policy = {k: m.pop(k) for k in _V1_POLICY_KEYS if k in m}
    out: dict[str, Any] = {
        "format_version": FORMAT_VERSION,
        "policy_kind": m.pop("policy_kind", "xvla"),
        "embodiment": embodiment,
        "action": {"dim": dim, "horizon": int(space.get("num_actions", 1)),
                   "names": [str(n) for n in space.get("names", []) or []], "gripper_dims": grippers},
        "cameras": {"names": list(pre.get("camera_names", [])),
                    "image_size": list(pre.get("image_size", [224, 224])),
                    "needs_pose": "geometry" in m["graphs"]},
        "proprio": {"dims": [int(proprio.get("dim", dim))] + ([int(proprio["r1pro_raw_dim"])]
                                                              if proprio.get("r1pro_raw_dim") else [])},
    }
    out.update(m)  # exporter, model_name, source, skills, tasks, graphs, precision, max_batch, files, parity, ...
    out["format_version"] = FORMAT_VERSION
    out["policy"] = policy
    return out


def write_manifest(root: Path, manifest: dict[str, Any], policy_schema: Mapping[str, Any] | None = None) -> Path:
    """Hash every file, validate, write ``manifest.json`` atomically (the files section is always recomputed)."""
    manifest["files"] = hash_bundle_files(root)
    validate_manifest(manifest, policy_schema)
    path = Path(root) / MANIFEST_NAME
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(manifest, indent=2) + "\n")
    tmp.replace(path)
    return path


def read_manifest(root: Path) -> dict[str, Any]:
    """The raw document (any format); ``upgrade_manifest`` brings it to the current one."""
    path = Path(root) / MANIFEST_NAME
    if not path.is_file():
        raise BundleError(f"not a bundle: {path} not found (export one with: xvla-export --preset tiny -o DIR)")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise BundleError(f"{path}: invalid JSON: {exc}") from exc
