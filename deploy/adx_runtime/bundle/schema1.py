"""Schema 1 (adexport 0.1.0): refused unless it is exactly what 0.1.0 wrote, then upgraded to the
schema-2 form in memory. The files on disk are never touched."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from adx_runtime.bundle.layout import shown as _shown
from adx_runtime.errors import BundleError

#: What each schema-1 method scored with, and how its image score was made.
_V1_METHODS = {
    "patchcore": ("knn", "scorer"),
    "spade": ("gallery", "scorer"),
    "padim": ("gaussian", "max"),
}

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


def check_schema1(m: dict[str, Any], path: Path) -> None:
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
