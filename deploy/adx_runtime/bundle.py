"""The bundle on disk: a folder with ``manifest.json``, ``model.onnx`` and scoring data.

Reading verifies the format, the schema version, the types of the fields the runtime reads, the
digest of the manifest's protected sections and the sha256 of every listed file before anything is
scored. Every file the runtime opens is reached through :func:`bundle_file`, which refuses a name
that is not listed in ``files``, lies outside the folder or fails its checksum.

Writing is atomic: a bundle is assembled in a hidden sibling folder and renamed into place, and a
manifest is replaced with ``os.replace``; a failure leaves nothing that looks like a bundle.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import math
import os
import re
import shutil
import stat
import tempfile
import time
from pathlib import Path, PurePosixPath
from typing import Any, Callable, Iterator

from adx_runtime.errors import BundleError

try:
    import fcntl
except ImportError:  # Windows: msvcrt locks instead
    fcntl = None  # type: ignore[assignment]

BUNDLE_FORMAT = "adexport-bundle"
#: Version 2 (this release): ``scoring.kind`` names the scorer; one typed ``postprocess`` section;
#: ``input.colour`` may be L (1 channel). Version 1 bundles (adexport 0.1.0) are read, only in the
#: exact form 0.1.0 wrote (:func:`_check_schema1`), by upgrading their manifest in memory
#: (:func:`upgrade_v1`); the files on disk are not touched.
SCHEMA_VERSION = 2
READABLE_SCHEMAS = (1, 2)
MANIFEST = "manifest.json"
#: Held (``flock``) around every read-modify-write of the manifest (``adx calibrate``).
LOCK_FILE = ".manifest.lock"
#: How long a second writer waits for the lock before giving up, seconds.
LOCK_TIMEOUT_S = 30.0

#: A real manifest is tens of kilobytes (calibration history grows it slowly); anything near this
#: is not one, and is refused before it is read into memory.
MAX_MANIFEST_BYTES = 16 * 1024 * 1024

#: The manifest sections that decide scores. Their digests are recorded in ``integrity`` at export
#: and checked at every load: a hand edit of any of them is refused. ``calibration`` (thresholds) is
#: deliberately not among them: ``adx calibrate`` changes it and records its own history.
PROTECTED_SECTIONS = ("input", "graph", "scoring", "postprocess", "files")
#: Protected too when present: a TensorRT bundle's engine folder, name prefix, profile and fp16 flag.
OPTIONAL_PROTECTED_SECTIONS = ("tensorrt",)

#: What each schema-1 method scored with, and how its image score was made.
_V1_METHODS = {
    "patchcore": ("knn", "scorer"),
    "spade": ("gallery", "scorer"),
    "padim": ("gaussian", "max"),
}

_SHA256 = re.compile(r"^[0-9a-f]{64}$")


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def file_entry(bundle_dir: str | Path, relpath: str, kind: str, **extra: Any) -> dict[str, Any]:
    """A ``files`` entry of the manifest for a file already written into ``bundle_dir``."""
    path = Path(bundle_dir) / relpath
    return {"path": relpath, "kind": kind, "bytes": path.stat().st_size, "sha256": sha256_file(path), **extra}


# ------------------------------------------------------------------------------------ integrity
def section_digest(value: Any) -> str:
    """sha256 of a section in a canonical JSON form (sorted keys, no spaces), so re-indenting or
    re-ordering the manifest does not change it but any change of a value does."""
    text = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)
    return hashlib.sha256(text.encode("ascii")).hexdigest()


def integrity_section(manifest: dict[str, Any]) -> dict[str, Any]:
    """The ``integrity`` section export records: one digest per protected section."""
    names = [*PROTECTED_SECTIONS, *(n for n in OPTIONAL_PROTECTED_SECTIONS if n in manifest)]
    return {"algorithm": "sha256 of canonical JSON (sorted keys, separators ',' ':')",
            "sections": {name: section_digest(manifest[name]) for name in names}}


def _check_integrity(manifest: dict[str, Any], path: Path) -> None:
    """The digests of a schema-2 manifest (schema 1 has none: :func:`_check_schema1` instead)."""
    integrity = manifest.get("integrity")
    if integrity is None:
        # A schema-2 manifest without a digest is refused rather than accepted with a warning:
        # accepting it would make deleting the section a way around the check.
        raise BundleError(
            f"{str(path)!r} has no integrity section (the digest of its input, graph, scoring, postprocess "
            "and files sections), so edits to them cannot be detected; it was written before adexport recorded "
            "one, or the section was removed. Re-export the bundle (`adx export MODEL_FOLDER --out BUNDLE`)."
        )
    sections = integrity.get("sections") if isinstance(integrity, dict) else None
    if not isinstance(sections, dict):
        raise BundleError(f"{str(path)!r}: the integrity section is malformed (no 'sections' object); re-export the bundle")
    changed = [name for name in PROTECTED_SECTIONS
               if name in manifest and sections.get(name) != section_digest(manifest[name])]
    changed += [name for name in OPTIONAL_PROTECTED_SECTIONS if (name in manifest or name in sections) and
                sections.get(name) != (section_digest(manifest[name]) if name in manifest else None)]
    if changed:
        raise BundleError(
            f"{str(path)!r}: the protected section{'s' if len(changed) > 1 else ''} {', '.join(changed)} "
            "changed after export (digest mismatch). These decide scores and may not be edited by hand; "
            "thresholds change only through `adx calibrate`. Restore the manifest or re-export the bundle."
        )


# ------------------------------------------------------------------------------------ schema 1
#: adexport 0.1.0 is the one release that wrote schema 1 (its export is commit 6a478b1 of this
#: repository; tests/fixtures/schema1_* are its output). A schema-1 manifest has no integrity digest,
#: so it is read only in exactly the form 0.1.0 wrote: otherwise relabelling a schema-2 bundle as
#: schema 1 (and deleting its digest) would switch the protection of its fields off.
_V1_RELEASE = "0.1.0"
_V1_TOP = frozenset({"format", "schema_version", "adexport_version", "method", "created_at", "input", "graph",
                     "files", "scoring", "calibration", "method_config", "backbone", "training", "provenance",
                     "parity", "export_seconds"})
_V1_INPUT = frozenset({"resize", "interpolation", "center_crop", "scale", "mean", "std", "colour", "layout", "dtype",
                       "input_size"})
#: 0.1.0 built every input contract with ``PreprocessConfig.square``: these fields had one value.
_V1_INPUT_FIXED = {"center_crop": None, "scale": 1.0 / 255.0, "colour": "RGB", "layout": "NCHW", "dtype": "float32"}
_V1_INTERPOLATIONS = ("nearest", "bilinear", "bicubic", "lanczos", "box", "hamming")
_V1_GRAPH = frozenset({"file", "opset", "inputs", "outputs", "dynamic_axes", "max_batch"})
_V1_TENSOR = frozenset({"name", "shape", "dtype"})
_V1_TENSORRT = frozenset({"engine_dir", "engine_prefix", "tensorrt_version", "compute_capability", "fp16", "profile",
                          "parity"})
#: A ``files`` entry's keys beyond path, kind, bytes and sha256, by kind.
_V1_FILE_EXTRA = {"onnx-graph": {"opset"}, "faiss-index": {"shape", "dtype"}, "npz": {"arrays"},
                  "tensorrt-engine": {"tensorrt_version", "compute_capability"}}
_ANY = object()  # a scoring field whose value 0.1.0 computed (checked against its copy, if any)
#: Per method: graph outputs, scoring keys (with the values 0.1.0 always wrote), the sub-section
#: that names the data files and its keys, and the file names that sub-section must give.
_V1_SPEC: dict[str, dict[str, Any]] = {
    "patchcore": {
        "outputs": ["patch_features"],
        "scoring": {"feature_output": "patch_features", "patch_grid": _ANY, "num_neighbors": _ANY, "blur_sigma": _ANY,
                    "image_score": "eq. 7 reweighted max patch distance", "bank": _ANY},
        "data": ("bank", frozenset({"file", "format", "index_type", "size", "dim", "exact"})),
    },
    "padim": {
        "outputs": ["embedding"],
        "scoring": {"embedding_output": "embedding", "patch_grid": _ANY, "blur_sigma": _ANY,
                    "image_score": "max of the smoothed Mahalanobis map", "gaussian": _ANY},
        "data": ("gaussian", frozenset({"file", "form", "dtype", "positions", "dim", "epsilon"})),
        "fixed": {"file": "gaussian.npz",
                  "form": "cholesky-of-inverse, packed lower triangle (numpy tril_indices order)"},
        "files": {"gaussian.npz": "npz"},
    },
    "spade": {
        "outputs": ["image_feature", "feature_map"],
        "scoring": {"image_output": "image_feature", "map_output": "feature_map", "patch_grid": _ANY,
                    "blur_sigma": _ANY, "k": _ANY, "image_score": "mean distance to the k nearest training images",
                    "gallery": _ANY},
        "data": ("gallery", frozenset({"images_file", "maps_file", "images", "image_dim", "map_dim", "dtype",
                                       "bytes_per_image"})),
        "fixed": {"images_file": "gallery_images.faiss", "maps_file": "gallery_maps.npz"},
        "files": {"gallery_images.faiss": "faiss-index", "gallery_maps.npz": "npz"},
    },
}
#: PatchCore's bank, by format: the fixed fields and the file it wrote.
_V1_BANKS = {
    "faiss": ({"file": "memory_bank.faiss"}, {"memory_bank.faiss": "faiss-index"}),
    "npz": ({"file": "memory_bank.npz", "index_type": "numpy-exact", "exact": True}, {"memory_bank.npz": "npz"}),
}


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _shown_field(where: str) -> str:
    """A field path for a message; a key from a hostile manifest may be long."""
    return where if len(where) <= 80 else where[:77] + "..."


def _v1_refusal(path: Path, what: str) -> BundleError:
    return BundleError(
        f"{str(path)!r} says schema 1 (adexport 0.1.0) but {what}. A schema-1 manifest has no integrity digest, so "
        "it is read only in the exact form 0.1.0 wrote: if a newer bundle was relabelled schema 1, restore its "
        "manifest; otherwise re-export it (`adx export MODEL_FOLDER --out BUNDLE`)"
    )


def _v1_object(path: Path, field: str, obj: Any) -> dict[str, Any]:
    if not isinstance(obj, dict):
        raise _v1_refusal(path, f"{field} is {_shown(obj)}, where adexport 0.1.0 wrote an object")
    return obj


def _v1_keys(path: Path, field: str, obj: Any, expected: frozenset[str] | set[str],
             optional: frozenset[str] = frozenset()) -> dict[str, Any]:
    _v1_object(path, field or "the manifest", obj)
    name = (lambda key: f"the section {key!r}") if not field else (lambda key: f"{field}.{key}")
    extra = sorted(set(obj) - set(expected) - optional, key=str)
    if extra:
        raise _v1_refusal(path, f"it has {name(extra[0])}, which adexport 0.1.0 never wrote")
    missing = sorted(set(expected) - set(obj))
    if missing:
        raise _v1_refusal(path, f"it lacks {name(missing[0])}, which adexport 0.1.0 always wrote")
    return obj


def _v1_value(path: Path, field: str, value: Any, allowed: tuple[Any, ...]) -> None:
    # Same type as well as equal: True is not 1, and 0.1.0 wrote each of these with one type.
    if not any(type(value) is type(a) and value == a for a in allowed):
        valid = " or ".join(_shown(a) for a in allowed[:6])
        raise _v1_refusal(path, f"{field} is {_shown(value)}, which adexport 0.1.0 never wrote (it wrote {valid})")


def _v1_copy(path: Path, field: str, value: Any, source: str, expected: Any) -> None:
    """``field`` must equal its copy ``source``, as 0.1.0 wrote both from one value."""
    if value != expected or type(value) is not type(expected):
        raise BundleError(
            f"{str(path)!r} (schema 1, adexport 0.1.0): {field} is {_shown(value)} but {source} is "
            f"{_shown(expected)}; adexport 0.1.0 wrote them equal, so the manifest was edited after export. A "
            "schema-1 manifest has no integrity digest to tell more: restore the manifest from a copy, or re-export "
            "the bundle (`adx export MODEL_FOLDER --out BUNDLE`)"
        )


def _check_schema1(m: dict[str, Any], path: Path) -> None:
    """Refuse a schema-1 manifest unless it has exactly the sections, keys and fixed values
    adexport 0.1.0 wrote for its method, and the fields that decide scores agree with the copies
    0.1.0 wrote of them in ``method_config`` and ``backbone``.

    This is no digest: a consistent edit of both copies passes (SECURITY.md says so). What it
    stops is a schema-2 bundle read as schema 1 with anything 0.1.0 did not have (a postprocess
    section, a grey input, search parameters, other methods), and a one-field edit.
    """
    _v1_keys(path, "", m, _V1_TOP, frozenset({"tensorrt"}))
    _v1_value(path, "adexport_version", m["adexport_version"], (_V1_RELEASE,))
    _v1_value(path, "method", m["method"], tuple(_V1_SPEC))
    spec = _V1_SPEC[m["method"]]
    inp = _v1_keys(path, "input", m["input"], _V1_INPUT)
    for key, value in _V1_INPUT_FIXED.items():
        _v1_value(path, f"input.{key}", inp[key], (value,))
    _v1_value(path, "input.interpolation", inp["interpolation"], _V1_INTERPOLATIONS)

    graph = _v1_keys(path, "graph", m["graph"], _V1_GRAPH)
    _v1_value(path, "graph.file", graph["file"], ("model.onnx",))
    for key, names in (("inputs", ["image"]), ("outputs", spec["outputs"])):
        tensors = graph[key] if isinstance(graph[key], list) else []
        got = [t.get("name") if isinstance(t, dict) else None for t in tensors]
        if got != names:
            raise _v1_refusal(path, f"graph.{key} are {_shown(got)}, where adexport 0.1.0 wrote {names} for "
                                    f"{m['method']}")
        for i, t in enumerate(tensors):
            _v1_keys(path, f"graph.{key}[{i}]", t, _V1_TENSOR)
            _v1_value(path, f"graph.{key}[{i}].dtype", t["dtype"], ("float32",))
            shape = t["shape"]
            _v1_value(path, f"graph.{key}[{i}].shape[0]", shape[0] if isinstance(shape, list) and shape else shape,
                      ("batch",))
    axes = {name: {"0": "batch"} for name in ["image", *spec["outputs"]]}
    if graph["dynamic_axes"] != axes:
        raise _v1_refusal(path, f"graph.dynamic_axes is {_shown(graph['dynamic_axes'])}, which adexport 0.1.0 "
                                f"never wrote (it wrote {_shown(axes)})")
    trt = "tensorrt" in m
    if trt:
        _v1_keys(path, "tensorrt", m["tensorrt"], _V1_TENSORRT)
        _v1_value(path, "tensorrt.engine_dir", m["tensorrt"]["engine_dir"], ("engines",))
    elif graph["max_batch"] is not None:
        raise _v1_refusal(path, f"graph.max_batch is {_shown(graph['max_batch'])} without a tensorrt section, "
                                "which adexport 0.1.0 never wrote (it wrote None)")

    scoring = _v1_keys(path, "scoring", m["scoring"], frozenset(spec["scoring"]))
    for key, value in spec["scoring"].items():
        if value is not _ANY:
            _v1_value(path, f"scoring.{key}", scoring[key], (value,))
    data_key, data_keys = spec["data"]
    data = _v1_keys(path, f"scoring.{data_key}", scoring[data_key], data_keys)
    fixed, expected_files = spec.get("fixed", {}), spec.get("files", {})
    if m["method"] == "patchcore":
        _v1_value(path, "scoring.bank.format", data["format"], tuple(_V1_BANKS))
        fixed, expected_files = _V1_BANKS[data["format"]]
        if data["format"] == "faiss":
            index_type = data["index_type"]
            exact = isinstance(index_type, str) and index_type.replace(" ", "") in ("Flat", "IDMap,Flat")
            _v1_copy(path, "scoring.bank.exact", data["exact"], "what scoring.bank.index_type implies", exact)
    for key, value in fixed.items():
        _v1_value(path, f"scoring.{data_key}.{key}", data[key], (value,))

    files = m["files"] if isinstance(m["files"], list) else []
    expected = {"model.onnx": "onnx-graph", **expected_files}
    seen: set[str] = set()
    for i, entry in enumerate(files):
        rel = entry.get("path") if isinstance(entry, dict) else None
        if not isinstance(rel, str):
            raise _v1_refusal(path, f"files[{i}] is {_shown(entry)}, where adexport 0.1.0 wrote a path and checksum")
        kind = expected.get(rel)
        if kind is None and trt and rel.startswith("engines/"):
            kind = "tensorrt-engine"
        if kind is None or rel in seen:
            raise _v1_refusal(path, f"files lists {_shown(rel)}{' twice' if rel in seen else ''}, which adexport 0.1.0 "
                                    f"never wrote for a {m['method']} bundle")
        seen.add(rel)
        _v1_keys(path, f"files[{i}]", entry, {"path", "kind", "bytes", "sha256", *_V1_FILE_EXTRA[kind]})
        _v1_value(path, f"files[{i}].kind", entry["kind"], (kind,))
    missing = sorted(set(expected) - seen)
    if missing or (trt and not any(rel.startswith("engines/") for rel in seen)):
        raise _v1_refusal(path, f"files does not list {_shown(missing[0]) if missing else 'an engine'}, which "
                                "adexport 0.1.0 always wrote")

    # The copies: 0.1.0 wrote each of these fields twice, from one value.
    backbone = _v1_object(path, "backbone", m["backbone"])
    config = _v1_object(path, "method_config", m["method_config"])
    _v1_copy(path, "input.mean", inp["mean"], "backbone.mean", backbone.get("mean"))
    _v1_copy(path, "input.std", inp["std"], "backbone.std", backbone.get("std"))
    _v1_copy(path, "input.interpolation", inp["interpolation"], "method_config.interpolation",
             config.get("interpolation"))
    size = config.get("image_size")
    if type(size) is not int or size < 8:
        raise _v1_refusal(path, f"method_config.image_size is {_shown(size)}, where adexport 0.1.0 wrote an integer")
    for key in ("resize", "input_size"):
        _v1_copy(path, f"input.{key}", inp[key], "[method_config.image_size] * 2", [size, size])
    _v1_copy(path, "graph.inputs[0].shape", graph["inputs"][0]["shape"], "[batch, 3, *input.input_size]",
             ["batch", 3, size, size])
    _v1_copy(path, "scoring.blur_sigma", scoring["blur_sigma"], "method_config.blur_sigma", config.get("blur_sigma"))
    # The patch grid: the input size over the first stage's stride (SPADE: over its map stride).
    stride_field = "method_config.map_stride" if m["method"] == "spade" else "backbone.strides[0]"
    strides = backbone.get("strides")
    stride = config.get("map_stride") if m["method"] == "spade" else (
        strides[0] if isinstance(strides, list) and strides else None)
    if type(stride) is not int or stride < 1:
        raise _v1_refusal(path, f"{stride_field} is {_shown(stride)}, where adexport 0.1.0 wrote a positive integer")
    grid = [size // stride, size // stride]
    _v1_copy(path, "scoring.patch_grid", scoring["patch_grid"], f"the input size // {stride_field}", grid)
    positions = grid[0] * grid[1]
    map_output = graph["outputs"][-1]["shape"]
    _v1_copy(path, f"graph.outputs[{len(spec['outputs']) - 1}].shape[1]",
             map_output[1] if isinstance(map_output, list) and len(map_output) > 1 else None,
             "the positions of scoring.patch_grid", positions)
    if m["method"] == "patchcore":
        _v1_copy(path, "scoring.num_neighbors", scoring["num_neighbors"], "method_config.num_neighbors",
                 config.get("num_neighbors"))
    elif m["method"] == "padim":
        _v1_copy(path, "scoring.gaussian.positions", data["positions"], "the positions of scoring.patch_grid",
                 positions)
        _v1_copy(path, "scoring.gaussian.dim", data["dim"], "method_config.n_features", config.get("n_features"))
        _v1_copy(path, "scoring.gaussian.epsilon", data["epsilon"], "method_config.epsilon", config.get("epsilon"))
        _v1_copy(path, "scoring.gaussian.dtype", data["dtype"], "method_config.store_dtype", config.get("store_dtype"))
    else:
        k, images = config.get("k"), data["images"]
        _v1_copy(path, "scoring.k", scoring["k"], "min(method_config.k, scoring.gallery.images)",
                 min(k, images) if type(k) is int and type(images) is int else None)
        _v1_copy(path, "scoring.gallery.dtype", data["dtype"], "method_config.store_dtype", config.get("store_dtype"))


# ------------------------------------------------------------------------------------ validation
def _is_number(value: Any) -> bool:
    """A finite number that float32 (the scores' type) can hold."""
    return (isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
            and abs(value) < 3.0e38)


def _require(ok: bool, path: Path, field: str, value: Any, expected: str) -> None:
    if not ok:
        shown = repr(value)
        shown = shown if len(shown) <= 60 else shown[:57] + "..."
        raise BundleError(f"{str(path)!r}: {field} must be {expected}, got {shown}; re-export the bundle")


def _validate_types(manifest: dict[str, Any], path: Path) -> None:
    """Check the types of every field the runtime reads, so a malformed manifest is a one-line
    BundleError at load and never a KeyError or TypeError in the middle of scoring."""
    for key in ("input", "graph", "scoring", "postprocess"):
        _require(isinstance(manifest[key], dict), path, key, manifest[key], "an object")
    files = manifest["files"]
    _require(isinstance(files, list) and len(files) > 0, path, "files", files, "a non-empty list of file entries")
    for i, entry in enumerate(files):
        _require(isinstance(entry, dict), path, f"files[{i}]", entry, "an object with path and sha256")
        _require(isinstance(entry.get("path"), str) and entry["path"] != "", path, f"files[{i}].path",
                 entry.get("path"), "a file name inside the bundle")
        _require(isinstance(entry.get("sha256"), str) and bool(_SHA256.match(entry["sha256"])), path,
                 f"files[{i}].sha256", entry.get("sha256"), "64 lower-case hex digits")
    graph = manifest["graph"]
    _require(isinstance(graph.get("file"), str), path, "graph.file", graph.get("file"), "a file name")
    for key in ("inputs", "outputs"):
        values = graph.get(key)
        _require(isinstance(values, list) and len(values) > 0, path, f"graph.{key}", values, "a non-empty list")
        for i, v in enumerate(values):
            _require(isinstance(v, dict) and isinstance(v.get("name"), str), path, f"graph.{key}[{i}]", v,
                     "an object with a name")
            _require(isinstance(v.get("shape"), list), path, f"graph.{key}[{i}].shape", v.get("shape"), "a list")
    _require(graph.get("max_batch") is None or (type(graph["max_batch"]) is int and graph["max_batch"] > 0), path,
             "graph.max_batch", graph.get("max_batch"), "null or a positive integer")
    _require(isinstance(manifest["scoring"].get("kind"), str), path, "scoring.kind",
             manifest["scoring"].get("kind"), "a string")
    outputs = [o["name"] for o in graph["outputs"]]
    for key, value in manifest["scoring"].items():
        if key.endswith("_output") and not (key == "image_output" and value is None):  # optional for kind map
            _require(isinstance(value, str) and value in outputs, path, f"scoring.{key}", value,
                     f"one of the graph's outputs ({', '.join(outputs)})")
    grid = manifest["postprocess"].get("patch_grid")
    _require(grid is None or (isinstance(grid, list) and len(grid) == 2
                              and all(type(v) is int and v > 0 for v in grid)),
             path, "postprocess.patch_grid", grid, "null or two positive integers [h, w]")
    cal = manifest.get("calibration")
    _require(isinstance(cal, dict) and isinstance(cal.get("image"), dict), path, "calibration.image",
             None if not isinstance(cal, dict) else cal.get("image"), "an object with threshold and scale")
    image = cal["image"]
    _require(_is_number(image.get("threshold")), path, "calibration.image.threshold", image.get("threshold"),
             "a finite number")
    _require(_is_number(image.get("scale")) and image["scale"] > 0, path, "calibration.image.scale",
             image.get("scale"), "a positive finite number")
    pixel = cal.get("pixel")
    _require(pixel is None or isinstance(pixel, dict), path, "calibration.pixel", pixel, "null or an object")
    if pixel:
        _require(pixel.get("threshold") is None or _is_number(pixel["threshold"]), path,
                 "calibration.pixel.threshold", pixel.get("threshold"), "null or a finite number")
        _require(pixel.get("scale") is None or (_is_number(pixel["scale"]) and pixel["scale"] > 0), path,
                 "calibration.pixel.scale", pixel.get("scale"), "null or a positive finite number")


def _parse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _first_non_finite(value: Any) -> tuple[str, float] | None:
    """The field path and value of the first infinite number in parsed JSON, or None.

    JSON has no infinity, but ``json.loads`` reads a literal too large for a float (``1e999``) as
    one; nothing adexport writes holds such a number, and one left in would surface as a
    ValueError in the digest or an overflow in scoring. Walked with a stack, not recursion: a
    manifest that nests deeply but parsed must not fail here instead.
    """
    stack: list[tuple[str, Any]] = [("", value)]
    while stack:
        where, v = stack.pop()
        if isinstance(v, float) and not math.isfinite(v):
            return where, v
        if isinstance(v, dict):
            stack.extend((f"{where}.{k}" if where else str(k), item) for k, item in reversed(list(v.items())))
        elif isinstance(v, list):
            stack.extend((f"{where}[{i}]", item) for i, item in reversed(list(enumerate(v))))
    return None


def _link_target(path: Path) -> str:
    try:
        return os.readlink(path)
    except OSError:
        return "?"


def _read_manifest_bytes(root: Path, path: Path) -> bytes:
    """The manifest's bytes, refusing a symbolic link (wherever it points, even inside the folder:
    export never writes one, and following it would read a file no listing covers) and anything
    that is not a regular file, before and while opening it."""
    if path.is_symlink():
        raise BundleError(f"{str(path)!r} is a symbolic link (to {_link_target(path)!r}), not the manifest export "
                          "wrote; refusing to follow it. Copy the real manifest.json into the bundle folder, or "
                          "re-export the bundle")
    if not path.is_file():
        raise BundleError(
            f"{str(root)!r} is not a bundle: it has no {MANIFEST}. Create one with `adx export`."
        )
    # O_NOFOLLOW: a link swapped in after the check above fails to open (ELOOP) instead of being
    # followed; O_NONBLOCK: a pipe swapped in does not block the open.
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0)
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        raise BundleError(f"cannot open {str(path)!r} ({exc.strerror}); it must be a readable regular file, "
                          "not a link") from None
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(f.fileno())
        if not stat.S_ISREG(st.st_mode):
            raise BundleError(f"{str(path)!r} is not a regular file; re-export the bundle")
        if st.st_size > MAX_MANIFEST_BYTES:
            raise BundleError(f"{str(path)!r} is {st.st_size:,} bytes, more than a manifest can be "
                              f"({MAX_MANIFEST_BYTES:,}); it is not an adexport manifest: re-export the bundle")
        return f.read(MAX_MANIFEST_BYTES + 1)


def read_manifest(bundle_dir: str | Path, *, export_in_progress: bool = False) -> dict[str, Any]:
    """Parse the manifest and check its format, schema version, field types, the digest of its
    protected sections (schema 1: its form, see :func:`_check_schema1`) and that the export's
    parity check completed (no checksums; see verify). ``manifest.json`` must be a regular file,
    not a symbolic link, and hold no infinite number.

    ``export_in_progress`` is for export's own parity check, which loads the bundle before its
    parity section exists; nothing else may pass it.
    """
    root = Path(bundle_dir)
    if not root.is_dir():
        raise BundleError(f"bundle {str(root)!r} does not exist or is not a folder")
    path = root / MANIFEST
    data = _read_manifest_bytes(root, path)
    if len(data) > MAX_MANIFEST_BYTES:  # grew since the size check
        raise BundleError(f"{str(path)!r} is more than a manifest can be ({MAX_MANIFEST_BYTES:,} bytes); "
                          "it is not an adexport manifest: re-export the bundle")
    try:
        manifest = json.loads(data.decode("utf-8"), parse_constant=_parse_constant)
    except (json.JSONDecodeError, UnicodeDecodeError, ValueError) as exc:
        raise BundleError(f"{str(path)!r} is not valid JSON ({exc}); re-export the bundle") from None
    except RecursionError:
        raise BundleError(f"{str(path)!r} nests too deeply to be an adexport manifest; re-export the bundle") from None
    bad = _first_non_finite(manifest)
    if bad is not None:
        raise BundleError(f"{str(path)!r}: {_shown_field(bad[0])} is {bad[1]}, not a finite number (a JSON number "
                          "too large for a float, such as 1e999); adexport never writes one. Restore the manifest "
                          "or re-export the bundle")
    if not isinstance(manifest, dict) or manifest.get("format") != BUNDLE_FORMAT:
        raise BundleError(f"{str(path)!r} is not an adexport manifest (format field is not {BUNDLE_FORMAT!r})")
    version = manifest.get("schema_version")
    if type(version) is not int or version not in READABLE_SCHEMAS:
        hint = (
            "upgrade adexport on this machine" if type(version) is int and version > SCHEMA_VERSION
            else "re-export it with this adexport version (`adx export MODEL_FOLDER --out BUNDLE`)"
        )
        raise BundleError(
            f"bundle {str(root)!r} has manifest schema version {version!r} (written by adexport "
            f"{manifest.get('adexport_version', '?')}); this runtime reads versions "
            f"{', '.join(map(str, READABLE_SCHEMAS))}: {hint}"
        )
    for key in ("method", "input", "graph", "files", "scoring"):
        if key not in manifest:
            raise BundleError(f"{str(path)!r} lacks the required section {key!r}; re-export the bundle")
    if version == 2 and ("postprocess" not in manifest or not isinstance(manifest["scoring"], dict)
                         or "kind" not in manifest["scoring"]):
        raise BundleError(f"{str(path)!r} lacks scoring.kind or the postprocess section; re-export the bundle")
    # On the manifest as written, before the in-memory upgrade: schema 2 by its digests, schema 1
    # (which has none) by being exactly what adexport 0.1.0 wrote.
    if version == 1:
        _check_schema1(manifest, path)
    else:
        _check_integrity(manifest, path)
    if not export_in_progress:
        parity = manifest.get("parity")
        if not isinstance(parity, dict) or parity.get("passed") is not True:
            raise BundleError(
                f"{str(path)!r} has no completed parity check (its export stopped before the check passed, "
                "e.g. a killed `adx export`); it is not a finished bundle. Re-export it."
            )
    if version == 1:
        if not isinstance(manifest["scoring"], dict):
            raise BundleError(f"{str(path)!r}: scoring must be an object; re-export the bundle")
        manifest = upgrade_v1(manifest, root)
    _validate_types(manifest, path)
    return manifest


def upgrade_v1(manifest: dict[str, Any], root: Path) -> dict[str, Any]:
    """A schema-1 manifest -> the schema-2 form, in memory. Schema 1 dispatched on the method name
    and kept ``blur_sigma`` and ``patch_grid`` in ``scoring``; everything else reads as it was."""
    method = manifest.get("method")
    if not isinstance(method, str) or method not in _V1_METHODS:
        raise BundleError(
            f"bundle {str(root)!r} is schema 1 with method {method!r}, which schema 1 never had; "
            "re-export it with this adexport version (`adx export MODEL_FOLDER --out BUNDLE`)"
        )
    kind, rule = _V1_METHODS[method]
    scoring = dict(manifest["scoring"])
    try:
        grid = tuple(int(v) for v in scoring["patch_grid"])
        sigma = float(scoring["blur_sigma"])
    except (KeyError, TypeError, ValueError):
        raise BundleError(
            f"bundle {str(root)!r} (schema 1) lacks scoring.patch_grid or scoring.blur_sigma; re-export it with "
            "this adexport version (`adx export MODEL_FOLDER --out BUNDLE`)"
        ) from None
    scoring["kind"] = kind
    upgraded = dict(manifest, scoring=scoring)
    upgraded["postprocess"] = {
        "map": True, "patch_grid": list(grid), "upsample": "bilinear (half-pixel centres) to the input size",
        "smoothing": {"type": "gaussian", "sigma": sigma} if sigma > 0 else {"type": "none"},
        "image_score": {"rule": rule},
    }
    upgraded["upgraded_from_schema"] = 1
    return upgraded


# ------------------------------------------------------------------------------------ files
def _confined(root: Path, rel: Any, what: str) -> Path:
    """``root / rel`` as a real path, refusing absolute names, ``..`` and symlinks that leave ``root``."""
    if not isinstance(rel, str) or not rel:
        raise BundleError(f"bundle {str(root)!r}: {what} must be a file name inside the bundle, got {rel!r}")
    pure = PurePosixPath(rel.replace("\\", "/"))
    if pure.is_absolute() or ".." in pure.parts or re.match(r"^[A-Za-z]:", rel):
        raise BundleError(f"bundle {str(root)!r}: {what} {rel!r} lies outside the bundle folder "
                          "(absolute path or '..'); refusing it")
    real_root = root.resolve()
    path = (root / pure).resolve()
    if path != real_root and real_root not in path.parents:
        raise BundleError(f"bundle {str(root)!r}: {what} {rel!r} lies outside the bundle folder "
                          f"(a symbolic link to {str(path)!r}); refusing it")
    return path


def _checked_sha256(path: Path) -> str:
    """The file's sha256, computed now, every time.

    No cache: one keyed on size, mtime and inode trusted a file edited in place with its mtime put
    back (``os.utime``), and a long-running process (``adx serve``, a watcher) would have scored
    with the edited bank on its next load. The cost is hashing each file twice per load (once in
    :func:`verify_files`, once when it is opened), about 1.4 s per GB on one core.
    """
    return sha256_file(path)


def bundle_file(bundle_dir: str | Path, manifest: dict[str, Any], name: Any, *, what: str = "file") -> Path:
    """The verified path of the bundle file ``name``: the one way the runtime opens a bundle file.

    Refuses a name that is absolute, contains ``..``, leads (through a symlink) outside the folder,
    is not listed in ``files``, is not a regular file, or whose sha256 differs from the manifest's.
    """
    root = Path(bundle_dir)
    path = _confined(root, name, what)
    entries = {e.get("path"): e for e in manifest["files"] if isinstance(e, dict)}
    entry = entries.get(name)
    if entry is None:
        raise BundleError(
            f"bundle {str(root)!r}: {what} {name!r} is not listed in the manifest's files, so it has no checksum; "
            "refusing to load an unverified file. Re-export the bundle."
        )
    if not path.is_file():
        raise BundleError(f"bundle {str(root)!r} is missing {name!r}, which its manifest lists; re-export it")
    actual = _checked_sha256(path)
    if actual != entry["sha256"]:
        raise BundleError(
            f"{name!r} in bundle {str(root)!r} failed its checksum: manifest sha256 {str(entry['sha256'])[:16]}..., "
            f"file sha256 {actual[:16]}.... The file was modified or corrupted after export; "
            "copy the bundle again or re-export it."
        )
    return path


def bundle_folder(bundle_dir: str | Path, name: Any, *, what: str = "folder") -> Path:
    """A sub-folder of the bundle (the TensorRT engine cache), confined like :func:`bundle_file`."""
    path = _confined(Path(bundle_dir), name, what)
    if not path.is_dir():
        raise BundleError(f"bundle {str(bundle_dir)!r} is missing its {what} {name!r}; re-export it")
    return path


def verify_files(bundle_dir: str | Path, manifest: dict[str, Any]) -> None:
    """Check that every file the manifest lists exists inside the bundle and has the recorded sha256."""
    root = Path(bundle_dir)
    listed = {entry["path"] for entry in manifest["files"]}
    if manifest["graph"]["file"] not in listed:
        raise BundleError(f"manifest of {str(root)!r} does not list its graph file {manifest['graph']['file']!r}")
    for entry in manifest["files"]:
        bundle_file(root, manifest, entry["path"])


def load_manifest(bundle_dir: str | Path, *, verify: bool = True, export_in_progress: bool = False) -> dict[str, Any]:
    manifest = read_manifest(bundle_dir, export_in_progress=export_in_progress)
    if verify:
        verify_files(bundle_dir, manifest)
    return manifest


# ------------------------------------------------------------------------------------ writing
def current_umask() -> int:
    """The process umask (Linux reads it without changing it; elsewhere set-and-restore)."""
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def write_json_atomic(path: str | Path, data: Any) -> None:
    """Write JSON next to ``path`` and rename it over ``path`` (readers see old or new, never half).

    The new file keeps the mode of the one it replaces, or gets what the umask allows for a new
    file (``mkstemp`` would leave it 0600). NaN and infinity are refused: they are not JSON.
    """
    path = Path(path)
    try:
        mode = stat.S_IMODE(path.stat().st_mode)
    except FileNotFoundError:
        mode = 0o666 & ~current_umask()
    text = json.dumps(data, indent=2, sort_keys=False, allow_nan=False) + "\n"
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            if hasattr(os, "fchmod"):
                os.fchmod(f.fileno(), mode)
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def manifest_lock(bundle_dir: str | Path, timeout: float | None = None) -> Iterator[None]:
    """Hold an exclusive ``flock`` on the bundle's ``.manifest.lock`` around a read-modify-write of
    the manifest; a second writer waits up to ``timeout`` seconds (default :data:`LOCK_TIMEOUT_S`),
    then fails with a message instead of overwriting the first one's change."""
    timeout = LOCK_TIMEOUT_S if timeout is None else timeout
    path = Path(bundle_dir) / LOCK_FILE
    # A symbolic link is refused, dangling or not: O_CREAT would follow it and create (or lock) a
    # file wherever it points, outside the bundle. The check names the problem; O_NOFOLLOW closes
    # the gap between it and the open (where the platform has it).
    if path.is_symlink():
        raise BundleError(f"the lock file {str(path)!r} is a symbolic link (to {_link_target(path)!r}), which adexport "
                          "never makes; refusing to follow it out of the bundle. Remove the link and run again")
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o666 & ~current_umask())
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise BundleError(f"the lock file {str(path)!r} is a symbolic link, which adexport never makes; refusing "
                              "to follow it out of the bundle. Remove the link and run again") from None
        raise BundleError(f"cannot create the lock file {str(path)!r} ({exc.strerror}); the bundle folder must be "
                          "writable to change its manifest") from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise BundleError(f"the lock file {str(path)!r} is not a regular file (a pipe or device?); remove it and run "
                          "again")
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                if fcntl is not None:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                else:
                    import msvcrt  # noqa: PLC0415

                    msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
                break
            except OSError as exc:
                if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES, getattr(errno, "EDEADLK", -1)):
                    raise
                if time.monotonic() >= deadline:
                    raise BundleError(
                        f"another process is changing the manifest of {str(bundle_dir)!r} (it holds {LOCK_FILE}); "
                        f"waited {timeout:g} s. Try again when it has finished."
                    ) from None
                time.sleep(0.05)
        yield
    finally:
        os.close(fd)  # closing releases the lock


# ------------------------------------------------------------------------------------ folders
def _pid_alive(pid: int) -> bool:
    if os.name == "nt":
        return True  # os.kill(pid, 0) would terminate the process there; never clean up
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    return True


_PARTIAL = re.compile(r"^\.(?P<name>.+)\.pid(?P<pid>\d+)\.[^.]+\.partial$")

#: Written by :func:`atomic_dir` into every temporary folder it makes, naming the writing process
#: and the destination; removed just before the rename, so a finished bundle never holds it. A
#: folder's name alone proves nothing (a user's folder, or one copied from another machine, can look
#: like a partial export), so :func:`clean_stale_partials` removes only folders that carry it.
PARTIAL_MARKER = ".adx-partial"


def _partial_marker(pid: int, dest: Path) -> str:
    return json.dumps({"format": "adexport-partial", "pid": pid, "dest": dest.name}, sort_keys=True)


def _made_by_atomic_dir(folder: Path, pid: int, dest: Path) -> bool:
    """Whether ``folder`` holds the marker :func:`atomic_dir` wrote for process ``pid`` and ``dest``."""
    marker = folder / PARTIAL_MARKER
    try:
        st = marker.lstat()
        if not stat.S_ISREG(st.st_mode) or st.st_size > 4096:
            return False
        return marker.read_text(encoding="utf-8") == _partial_marker(pid, dest)
    except (OSError, UnicodeDecodeError):
        return False


def clean_stale_partials(dest: Path) -> list[Path]:
    """Remove ``.NAME.pidPID.XXXX.partial`` siblings of ``dest`` that :func:`atomic_dir` made (they
    carry its marker) and whose writing process is gone (killed during an export or a save);
    returns what was removed. Anything else with such a name is left alone."""
    removed: list[Path] = []
    if not dest.parent.is_dir():
        return removed
    for p in dest.parent.iterdir():
        m = _PARTIAL.match(p.name)
        if (m and m["name"] == dest.name and p.is_dir() and not p.is_symlink() and not _pid_alive(int(m["pid"]))
                and _made_by_atomic_dir(p, int(m["pid"]), dest)):
            shutil.rmtree(p, ignore_errors=True)
            removed.append(p)
    return removed


def _manifest_listing(path: Path) -> tuple[dict[str, str], str | None]:
    """``{relative path: sha256}`` of the files ``path``'s manifest lists, or the reason it is not
    an adexport manifest. Read without :func:`read_manifest`'s checks: a bundle that no longer
    loads (tampered, or from another version) may still be replaced, if every file is export's."""
    manifest = path / MANIFEST
    try:
        st = manifest.lstat()
    except FileNotFoundError:
        return {}, f"it has no {MANIFEST}"
    except OSError as exc:
        return {}, f"its {MANIFEST} cannot be read ({exc.strerror})"
    if not stat.S_ISREG(st.st_mode):
        return {}, f"its {MANIFEST} is not a regular file"
    if st.st_size > MAX_MANIFEST_BYTES:
        return {}, f"its {MANIFEST} is {st.st_size:,} bytes, more than an adexport manifest can be"
    try:
        data = json.loads(manifest.read_bytes().decode("utf-8"))
    except (ValueError, UnicodeDecodeError, RecursionError):
        return {}, f"its {MANIFEST} is not valid JSON"
    except OSError as exc:
        return {}, f"its {MANIFEST} cannot be read ({exc.strerror})"
    if not isinstance(data, dict) or data.get("format") != BUNDLE_FORMAT:
        return {}, f"its {MANIFEST} is not an adexport manifest"
    files = data.get("files")
    if type(data.get("schema_version")) is not int or not isinstance(files, list):
        return {}, f"its {MANIFEST} has no schema_version or no files list, so its files cannot be verified"
    listed: dict[str, str] = {}
    for entry in files:
        ok = (isinstance(entry, dict) and isinstance(entry.get("path"), str)
              and isinstance(entry.get("sha256"), str) and _SHA256.match(entry["sha256"]) is not None)
        if not ok:
            return {}, f"its {MANIFEST} lists a file without a path and a sha256 ({str(entry)[:80]}), so it cannot be verified"
        listed[entry["path"]] = entry["sha256"]
    return listed, None


def _unexpected_in_tree(path: Path, listed: dict[str, str]) -> tuple[list[tuple[str, Path]], str | None]:
    """Walk ``path`` (never following links) and return the listed files found, or the first
    thing export did not write: an unlisted file or folder, a link, a device or pipe."""
    folders = {str(parent) for rel in listed for parent in PurePosixPath(rel).parents if str(parent) != "."}
    found: list[tuple[str, Path]] = []

    def walk(folder: Path, prefix: str) -> str | None:
        try:
            entries = sorted(os.scandir(folder), key=lambda e: e.name)
        except OSError as exc:
            return f"the folder {prefix or '.'} cannot be listed ({exc.strerror})"
        for e in entries:
            rel = prefix + e.name
            if e.is_symlink():
                return f"it holds a symbolic link, which export never writes ({rel})"
            if e.is_dir(follow_symlinks=False):
                if rel not in folders:
                    return f"it holds a folder that is not part of the bundle ({rel}/)"
                problem = walk(Path(e.path), rel + "/")
                if problem is not None:
                    return problem
            elif not e.is_file(follow_symlinks=False):
                return f"it holds something that is not a regular file ({rel}: a device, pipe or socket)"
            elif rel == MANIFEST:
                continue
            elif rel == LOCK_FILE:
                # manifest_lock creates it empty and never writes it: anything in it is not ours.
                if e.stat(follow_symlinks=False).st_size != 0:
                    return f"its {LOCK_FILE} is not empty, so it is not the lock file `adx calibrate` leaves"
            elif rel not in listed:
                return f"it holds files that are not part of the bundle ({rel})"
            else:
                found.append((rel, Path(e.path)))
        return None

    return found, walk(path, "")


def is_bundle_folder(path: Path) -> str | None:
    """None if ``path`` is a bundle this tool wrote, unchanged, so ``--overwrite`` may delete it;
    else the reason it is not, naming the first path that is not export's.

    Every entry of the folder tree (recursively, ``engines/`` too) must be the manifest, the empty
    lock file, or a file its ``files`` lists with the recorded sha256; no links, no other folders.
    A file that is listed but changed is the user's now, and is not deleted either. Listed files
    that are missing are no obstacle: replacing them deletes nothing. Names are checked before
    anything is hashed, so a large folder that is not a bundle is refused quickly."""
    listed, reason = _manifest_listing(path)
    if reason is not None:
        return reason
    found, reason = _unexpected_in_tree(path, listed)
    if reason is not None:
        return reason
    for rel, file in found:
        actual = _checked_sha256(file)
        if actual != listed[rel]:
            return (f"{rel} changed since export (sha256 {actual[:12]}..., the manifest records "
                    f"{listed[rel][:12]}...)")
    return None


def check_replaceable(dest: str | Path, overwrite: bool, *,
                      replaceable: Callable[[Path], str | None] = is_bundle_folder, what: str = "bundle") -> None:
    """Refuse an existing ``dest`` unless ``overwrite`` and ``replaceable(dest)`` says it is a
    ``what`` this tool wrote (it returns None, or the reason it is not; see :func:`atomic_dir`)."""
    dest = Path(dest)
    if not (dest.exists() or dest.is_symlink()):
        return
    if not overwrite:
        raise BundleError(f"{str(dest)!r} already exists; choose another path or pass --overwrite")
    if dest.is_symlink() or not dest.is_dir():
        raise BundleError(f"{str(dest)!r} exists and is not a folder; --overwrite replaces only a {what} folder. "
                          "Choose another path or remove it yourself.")
    reason = replaceable(dest)
    if reason is not None:
        raise BundleError(f"refusing to overwrite {str(dest)!r}: it is not a {what} ({reason}); --overwrite replaces "
                          f"only a {what} this tool wrote, unchanged, and never deletes anything else. Remove it "
                          "yourself or choose another --out.")


@contextlib.contextmanager
def atomic_dir(dest: str | Path, *, overwrite: bool = False,
               replaceable: Callable[[Path], str | None] = is_bundle_folder, what: str = "bundle") -> Iterator[Path]:
    """Yield a hidden temporary sibling of ``dest``; on success it is renamed to ``dest``.

    With ``overwrite`` an existing ``dest`` is replaced only if ``replaceable(dest)`` says it is a
    ``what`` this tool wrote (it returns None, or the reason it is not); anything else is refused.
    The check runs again just before the swap, so a file added to ``dest`` while the body ran is
    not deleted with it (nor is a ``dest`` that appeared meanwhile replaced without ``overwrite``).
    The old folder is moved to ``.NAME.old`` until the new one is in place, then removed. On any
    exception the temporary folder is removed and ``dest`` is left as it was. The temporary folder's
    name records this process id and it holds :data:`PARTIAL_MARKER` (removed before the rename), so
    one left by a killed process is removed at the next write to ``dest``, and nothing else is.
    """
    dest = Path(dest)
    check_replaceable(dest, overwrite, replaceable=replaceable, what=what)
    dest.parent.mkdir(parents=True, exist_ok=True)
    clean_stale_partials(dest)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.pid{os.getpid()}.", suffix=".partial", dir=dest.parent))
    try:
        (tmp / PARTIAL_MARKER).write_text(_partial_marker(os.getpid(), dest), encoding="utf-8")
        yield tmp
        (tmp / PARTIAL_MARKER).unlink(missing_ok=True)  # a finished bundle never holds it
        os.chmod(tmp, 0o777 & ~current_umask())  # mkdtemp makes it 0700
        # Again, now: the body may have run for minutes, and only what is verified now is deleted.
        check_replaceable(dest, overwrite, replaceable=replaceable, what=what)
        if dest.exists():
            # Swap: move the old one aside first so a crash never leaves no bundle at all.
            old = dest.with_name(f".{dest.name}.old")
            if old.exists() or old.is_symlink():
                reason = "it is not a folder" if old.is_symlink() or not old.is_dir() else replaceable(old)
                if reason is not None:
                    raise BundleError(f"{str(old)!r} is in the way of replacing {str(dest)!r} and is not an old "
                                      f"{what} ({reason}); move it away and run again")
                shutil.rmtree(old)
            os.replace(dest, old)
            try:
                os.replace(tmp, dest)
            except BaseException:
                os.replace(old, dest)  # put the old one back: a failure here loses nothing
                raise
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
