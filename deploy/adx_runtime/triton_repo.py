"""A Triton Inference Server model repository from a bundle (``adx export --format triton``).

For a bundle whose manifest names it ``N`` (``METHOD_CATEGORY``), five models, each versioned:

| model | backend | what it does |
| --- | --- | --- |
| ``N_graph`` | ``onnxruntime`` (the bundle's ``model.onnx``) | the ONNX graph; ``adx serve`` puts it on the Python backend |
| ``N_score`` | ``python`` | the runtime's own scorer and post-processing on the bundle's scoring data |
| ``N_decode`` | ``python`` | encoded image bytes -> the runtime's decoder and preprocessing -> the graph's input |
| ``N`` | ensemble | preprocessed float input -> ``N_graph`` -> ``N_score`` |
| ``N_image`` | ensemble | encoded image bytes -> ``N_decode`` -> ``N_graph`` -> ``N_score`` |

A tiled bundle (``input.tiling``) becomes two models: its images keep their own resolution, so no
fixed-size tensor passes between models and the float-input ensemble ``N`` is not written.

| model | backend | what it does |
| --- | --- | --- |
| ``N_graph`` | as above | the ONNX graph, its batch axis the tiles of a chunk (fixed tile size) |
| ``N_image`` | ``python`` | encoded image bytes -> the runtime's tiled scoring, tiles sent to ``N_graph`` (BLS) |

``N_image`` (:class:`adx_runtime.triton_models.TiledImageModel`) runs :meth:`Predictor.predict_prepared`
(cut, score per tile, stitch, calibrate) with each chunk of tiles sent to ``N_graph`` through Triton's
BLS; its ``anomaly_map`` is at each image's working size (dims ``-1, -1``).

Every model has ``max_batch_size`` and dynamic batching; its ``parameters`` carry the manifest's
sha256. The Python-backend models import :mod:`adx_runtime.triton_models`: the scorer is the
runtime's, not a second implementation, and it loads its bundle copy with checksum verification.
A new export of the same model (same name, another manifest) becomes the next version folder.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from adx_runtime.bundle import MANIFEST, atomic_dir, load_manifest, sha256_file
from adx_runtime.errors import BundleError, ConfigError
from adx_runtime.postprocess import PostprocessSpec
from adx_runtime.preprocess import PreprocessConfig

#: Output tensors of the scorer model and of both ensembles; ``anomaly_map`` only for methods with maps.
OUTPUTS = ("image_score", "normalized_score", "label", "anomaly_map")
IMAGE_BYTES = "image_bytes"
GRAPH_BACKENDS = ("onnxruntime", "python")
#: Versions this exporter and ``adx serve`` were run with (README of the generated repository).
TESTED = {
    "tritonserver": "2.51.0, the build in nvidia-pytriton 0.7.0 (Python backend only): the scorer and decoder "
                    "models of this repository loaded and served; ensembles served by `adx serve`, and a tiled "
                    "bundle's `NAME_image` with its BLS requests to the Python-backend `NAME_graph`",
    "tritonclient": "2.73.0: every config.pbtxt parsed with its model_config.proto (ModelConfig)",
    "onnxruntime": "1.32.0, in the Python backend (`adx serve`) and in-process",
    "not run here": "the official container and its onnxruntime backend (no container runtime on the test "
                    "machine); 24.10 is the container of Triton 2.51",
}

_DTYPES = {"float32": "TYPE_FP32", "float16": "TYPE_FP16", "int64": "TYPE_INT64", "int32": "TYPE_INT32"}


def model_name(manifest: dict[str, Any]) -> str:
    """``METHOD_CATEGORY`` from the manifest, in the characters Triton accepts in a model name."""
    category = (manifest.get("training") or {}).get("category")
    raw = f"{manifest['method']}_{category}" if category else str(manifest["method"])
    return re.sub(r"[^A-Za-z0-9_-]", "_", raw)


@dataclass
class RepositoryEntry:
    """What one bundle became in the repository."""

    name: str  # the float-input ensemble; the bytes one is NAME_image
    version: int
    models: list[str]
    manifest_sha256: str
    reused: bool = False  # the latest version already held this very manifest
    notes: list[str] = field(default_factory=list)

    def format(self, root: Path) -> str:
        state = "already there as" if self.reused else "wrote"
        return (f"{state} {self.name} version {self.version} in {root}: models {', '.join(self.models)} "
                f"(manifest sha256 {self.manifest_sha256[:12]}...)")


def _dims(shape: list[Any]) -> list[int]:
    """Manifest shape with its batch axis first -> Triton dims without it (-1 for a named axis)."""
    return [int(d) if isinstance(d, int) else -1 for d in shape[1:]]


def _tensor(name: str, dtype: str, dims: list[int]) -> str:
    return f'  {{ name: "{name}" data_type: {dtype} dims: [ {", ".join(str(d) for d in dims)} ] }}'


def _params(params: dict[str, str]) -> str:
    items = ",\n".join(f'  {{ key: "{k}" value: {{ string_value: {json.dumps(v)} }} }}' for k, v in params.items())
    return f"parameters [\n{items}\n]"


def _block(kind: str, tensors: list[str]) -> str:
    return f"{kind} [\n" + ",\n".join(tensors) + "\n]"


def _batching(max_batch: int, delay_us: int, instances: int) -> str:
    text = f"max_batch_size: {max_batch}\n"
    if max_batch > 1:
        text += f"dynamic_batching {{ max_queue_delay_microseconds: {delay_us} }}\n"
    return text + f"instance_group [ {{ count: {instances} kind: KIND_CPU }} ]"


def _graph_tensors(manifest: dict[str, Any]) -> tuple[list[tuple[str, str, list[int]]], list[tuple[str, str, list[int]]]]:
    graph = manifest["graph"]

    def one(t: dict[str, Any]) -> tuple[str, str, list[int]]:
        dtype = _DTYPES.get(str(t.get("dtype", "float32")))
        if dtype is None:
            raise BundleError(f"graph tensor {t['name']!r} has dtype {t.get('dtype')!r}, which this exporter does "
                              f"not map to Triton; known: {', '.join(_DTYPES)}")
        return str(t["name"]), dtype, _dims(list(t["shape"]))

    return [one(t) for t in graph["inputs"]], [one(t) for t in graph["outputs"]]


def is_tiled(manifest: dict[str, Any]) -> bool:
    """Whether the bundle scores images tile by tile (``input.tiling``)."""
    return manifest["input"].get("tiling") is not None


def score_outputs(manifest: dict[str, Any]) -> list[tuple[str, str, list[int]]]:
    pre = PreprocessConfig.from_dict(manifest["input"])
    outs = [("image_score", "TYPE_FP32", [1]), ("normalized_score", "TYPE_FP32", [1]), ("label", "TYPE_BOOL", [1])]
    if pre.tiling is not None:
        # Stitched at each image's working size; an image-level-only method gives its coarse tile map.
        outs.append(("anomaly_map", "TYPE_FP32", [-1, -1]))
    elif PostprocessSpec.from_dict(manifest["postprocess"]).has_map:
        outs.append(("anomaly_map", "TYPE_FP32", list(pre.input_size)))
    return outs


def model_configs(manifest: dict[str, Any], name: str, *, manifest_sha256: str, bundle_dir: str,
                  graph_backend: str = "onnxruntime", max_batch: int = 16, delay_us: int = 0,
                  instances: int = 1, threads: int = 0) -> dict[str, str]:
    """``{model name: config.pbtxt text}`` for the five models of one bundle (a tiled bundle: ``N_graph``
    and the Python-backend ``N_image``).

    ``bundle_dir``: where the Python-backend models find the bundle, relative to their version folder
    (``bundle``, a copy) or absolute (``adx serve`` points at the bundle as given).
    """
    if graph_backend not in GRAPH_BACKENDS:
        raise ConfigError(f"graph backend {graph_backend!r} is not known; valid: {', '.join(GRAPH_BACKENDS)}")
    if max_batch < 1 or delay_us < 0 or instances < 1:
        raise ConfigError(f"max batch must be >= 1, queue delay >= 0 us and instances >= 1; got {max_batch}, "
                          f"{delay_us}, {instances}")
    inputs, outputs = _graph_tensors(manifest)
    if len(inputs) != 1:
        raise BundleError(f"the graph has {len(inputs)} inputs; the Triton export handles graphs with one image input")
    (in_name, in_type, in_dims), scored = inputs[0], score_outputs(manifest)
    common = {"adx_manifest_sha256": manifest_sha256, "adx_method": str(manifest["method"]),
              "adx_adexport_version": str(manifest.get("adexport_version", "?"))}
    batching = _batching(max_batch, delay_us, instances)
    graph_io = (_block("input", [_tensor(in_name, in_type, in_dims)]) + "\n"
                + _block("output", [_tensor(n, t, d) for n, t, d in outputs]))
    if graph_backend == "onnxruntime":
        graph_head = f'name: "{name}_graph"\nplatform: "onnxruntime_onnx"\nbackend: "onnxruntime"'
        graph_params = {**common, "adx_graph_sha256": _graph_sha(manifest)}
    else:
        graph_head = f'name: "{name}_graph"\nbackend: "python"'
        graph_params = {**common, "adx_model": "graph", "adx_bundle_dir": bundle_dir, "adx_threads": str(threads)}
    graph_config = f"{graph_head}\n{batching}\n{graph_io}\n{_params(graph_params)}\n"
    if is_tiled(manifest):
        # One request per image in practice (maps differ in size); the dynamic batcher still gathers
        # several, whose tiles then share the graph's chunks.
        image_config = (
            f'name: "{name}_image"\nbackend: "python"\n{batching}\n'
            + _block("input", [_tensor(IMAGE_BYTES, "TYPE_STRING", [1])]) + "\n"
            + _block("output", [_tensor(n, t, d) for n, t, d in scored]) + "\n"
            + _params({**common, "adx_model": "tiled_image", "adx_bundle_dir": bundle_dir,
                       "adx_graph_model": f"{name}_graph", "adx_graph_max_batch": str(max_batch)}) + "\n")
        return {f"{name}_graph": graph_config, f"{name}_image": image_config}
    configs = {
        f"{name}_graph": graph_config,
        f"{name}_score": (
            f'name: "{name}_score"\nbackend: "python"\n{batching}\n'
            + _block("input", [_tensor(n, t, d) for n, t, d in outputs]) + "\n"
            + _block("output", [_tensor(n, t, d) for n, t, d in scored]) + "\n"
            + _params({**common, "adx_model": "score", "adx_bundle_dir": bundle_dir}) + "\n"),
        f"{name}_decode": (
            f'name: "{name}_decode"\nbackend: "python"\n{batching}\n'
            + _block("input", [_tensor(IMAGE_BYTES, "TYPE_STRING", [1])]) + "\n"
            + _block("output", [_tensor(in_name, in_type, in_dims)]) + "\n"
            + _params({**common, "adx_model": "decode", "adx_input_contract": json.dumps(manifest["input"], sort_keys=True)}) + "\n"),
    }
    graph_out = [n for n, _, _ in outputs]
    score_step = _step(f"{name}_score", {n: n for n in graph_out}, {n: n for n, _, _ in scored})
    graph_step = _step(f"{name}_graph", {in_name: in_name}, {n: n for n in graph_out})
    out_block = _block("output", [_tensor(n, t, d) for n, t, d in scored])
    ens_params = _params({**common, "adx_entry": "float"})
    configs[name] = (
        f'name: "{name}"\nplatform: "ensemble"\nmax_batch_size: {max_batch}\n'
        + _block("input", [_tensor(in_name, in_type, in_dims)]) + f"\n{out_block}\n"
        + f"ensemble_scheduling {{\n  step [\n{graph_step},\n{score_step}\n  ]\n}}\n{ens_params}\n")
    decode_step = _step(f"{name}_decode", {IMAGE_BYTES: IMAGE_BYTES}, {in_name: in_name})
    configs[f"{name}_image"] = (
        f'name: "{name}_image"\nplatform: "ensemble"\nmax_batch_size: {max_batch}\n'
        + _block("input", [_tensor(IMAGE_BYTES, "TYPE_STRING", [1])]) + f"\n{out_block}\n"
        + f"ensemble_scheduling {{\n  step [\n{decode_step},\n{graph_step},\n{score_step}\n  ]\n}}\n"
        + _params({**common, "adx_entry": "encoded image bytes"}) + "\n")
    return configs


def _step(model: str, inputs: dict[str, str], outputs: dict[str, str]) -> str:
    imap = " ".join(f'input_map {{ key: "{k}" value: "{v}" }}' for k, v in inputs.items())
    omap = " ".join(f'output_map {{ key: "{k}" value: "{v}" }}' for k, v in outputs.items())
    return f'    {{ model_name: "{model}" model_version: -1 {imap} {omap} }}'


def _graph_sha(manifest: dict[str, Any]) -> str:
    graph_file = manifest["graph"]["file"]
    for entry in manifest["files"]:
        if entry["path"] == graph_file:
            return str(entry["sha256"])
    raise BundleError(f"the manifest does not list its graph file {graph_file!r}; re-export the bundle")


MODEL_PY = '''"""Generated by adexport: Triton Python-backend model ({kind}) of bundle {name}.

It runs adx_runtime's own code (pip install 'adexport[cpu]' into the Python backend's environment).
"""
from adx_runtime.triton_models import {cls} as TritonPythonModel  # noqa: F401
'''
_CLASSES = {"graph": "GraphModel", "score": "ScoreModel", "decode": "DecodeModel", "tiled_image": "TiledImageModel"}


def _versions(model_dir: Path) -> list[int]:
    if not model_dir.is_dir():
        return []
    return sorted(int(p.name) for p in model_dir.iterdir() if p.is_dir() and p.name.isdigit())


def _write_text_atomic(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, path)


def write_repository(bundle: str | Path, out: str | Path, *, name: str | None = None, graph_backend: str = "onnxruntime",
                     copy_bundle: bool = True, max_batch: int = 16, delay_us: int = 0, instances: int = 1,
                     threads: int = 0) -> RepositoryEntry:
    """Add ``bundle`` to the Triton model repository ``out`` (created if missing) as the next version.

    The bundle is verified first (checksums, schema). With ``copy_bundle`` the Python-backend models
    get a copy of the bundle in their version folder (a repository that travels); without it they
    point at ``bundle`` itself (``adx serve`` on this machine).
    """
    src = Path(bundle)
    manifest = load_manifest(src, verify=True)
    tiled = is_tiled(manifest)
    sha = sha256_file(src / MANIFEST)
    name = name or model_name(manifest)
    if not re.fullmatch(r"[A-Za-z0-9_-]+", name):
        raise ConfigError(f"model name {name!r} may hold only letters, digits, '_' and '-'")
    root = Path(out)
    models = ([f"{name}_image", f"{name}_graph"] if tiled
              else [name, f"{name}_image", f"{name}_graph", f"{name}_score", f"{name}_decode"])
    marker = claim_repository(root, name, models)  # before anything is written: refuses a folder not ours
    if tiled and (root / name).is_dir():
        # The untiled export's ensemble and scorer would stay loaded and pair its scorer with this
        # graph (their steps take the latest version): a wrong score, so refused.
        raise ConfigError(f"{str(root)!r} holds an untiled export of {name!r} (models {name}, {name}_score, "
                          f"{name}_decode); a tiled bundle under that name would leave them running on its graph. "
                          "Give another --name, or write into a new folder")
    primary = root / (f"{name}_image" if tiled else name)  # the model whose config is the entry point
    existing = _versions(primary)
    if existing and _recorded_sha(primary) == sha:
        return RepositoryEntry(name, existing[-1], models, sha, reused=True)
    root.mkdir(parents=True, exist_ok=True)
    marker["models"][name] = models
    _write_marker(root, marker)  # the folders are claimed before they are written
    version = (max(v for m in models for v in _versions(root / m) or [0])) + 1
    bundle_dir = "bundle" if copy_bundle else str(src.resolve())
    configs = model_configs(manifest, name, manifest_sha256=sha, bundle_dir=bundle_dir, graph_backend=graph_backend,
                            max_batch=max_batch, delay_us=delay_us, instances=instances, threads=threads)
    for model, config in configs.items():
        model_dir = root / model
        model_dir.mkdir(exist_ok=True)
        with atomic_dir(model_dir / str(version)) as vdir:
            kind = model.rsplit("_", 1)[-1] if model != name and model != f"{name}_image" else None
            if tiled and model == f"{name}_image":
                kind = "tiled_image"
            if kind == "graph" and graph_backend == "onnxruntime":
                shutil.copy2(src / manifest["graph"]["file"], vdir / "model.onnx")
            elif kind in _CLASSES:
                (vdir / "model.py").write_text(MODEL_PY.format(kind=kind, name=name, cls=_CLASSES[kind]),
                                               encoding="utf-8")
                if copy_bundle and kind in ("score", "graph", "tiled_image"):
                    _copy_bundle(src, manifest, vdir / "bundle")
        _write_text_atomic(model_dir / "config.pbtxt", config)
        marker["files"][f"{model}/config.pbtxt"] = sha256_file(model_dir / "config.pbtxt")
        _write_marker(root, marker)
    write_readme(root, marker)
    marker["files"][REPOSITORY_README] = sha256_file(root / REPOSITORY_README)
    _write_marker(root, marker)
    return RepositoryEntry(name, version, models, sha)


def _copy_bundle(src: Path, manifest: dict[str, Any], dst: Path) -> None:
    """The bundle's manifest and every file it lists (the model verifies them all before it loads);
    hard links where the file system allows."""
    dst.mkdir(parents=True)
    shutil.copy2(src / MANIFEST, dst / MANIFEST)
    for entry in manifest["files"]:
        target = dst / entry["path"]
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(src / entry["path"], target)
        except OSError:
            shutil.copy2(src / entry["path"], target)


def _recorded_sha(model_dir: Path) -> str | None:
    config = model_dir / "config.pbtxt"
    if not config.is_file():
        return None
    m = re.search(r'key: "adx_manifest_sha256" value: \{ string_value: "([0-9a-f]{64})" \}', config.read_text("utf-8"))
    return m.group(1) if m else None


#: What ``write_repository`` leaves at the top of a repository: the README it generates and the
#: marker listing every model folder and top-level file it wrote, with sha256 (the files a user may
#: edit). A folder without the marker is not written into unless it is empty (or a repository of
#: adexport 0.1.0, which had none): a user's README.md or model folder is never overwritten.
REPOSITORY_README = "README.md"
REPOSITORY_MARKER = "adexport-repository.json"
_README_TITLE = "# Triton model repository (generated by adexport)"


def _read_marker(root: Path) -> dict[str, Any] | None:
    path = root / REPOSITORY_MARKER
    if not path.exists():
        return None
    try:
        marker = json.loads(path.read_text("utf-8"))
        ok = (isinstance(marker, dict) and marker.get("written_by") == "adexport"
              and isinstance(marker.get("models"), dict) and isinstance(marker.get("files"), dict))
    except (OSError, UnicodeDecodeError, ValueError):
        ok = False
    if not ok:
        raise ConfigError(f"{str(path)!r} is not a repository record written by adx (unreadable, or not its JSON); "
                          "restore it, or write the Triton repository into a new folder")
    return marker


def _write_marker(root: Path, marker: dict[str, Any]) -> None:
    _write_text_atomic(root / REPOSITORY_MARKER, json.dumps(marker, indent=2, sort_keys=True) + "\n")


def _legacy_models(root: Path, entries: list[Path]) -> dict[str, list[str]] | None:
    """A repository written before the marker existed: only model folders whose config carries
    adexport's ``adx_manifest_sha256`` parameter, its generated README and its temporary files.
    Returns its model folders (as if recorded), or None when anything else is there."""
    models: list[str] = []
    for entry in entries:
        if entry.name == REPOSITORY_README and entry.is_file():
            if not entry.read_text("utf-8", errors="replace").startswith(_README_TITLE):
                return None
        elif entry.name.startswith((f".{REPOSITORY_README}.", f".{REPOSITORY_MARKER}.")):
            continue  # a temporary file of an interrupted write
        elif entry.is_dir() and not entry.is_symlink() and (entry / "config.pbtxt").is_file():
            if "adx_manifest_sha256" not in (entry / "config.pbtxt").read_text("utf-8", errors="replace"):
                return None
            models.append(entry.name)
        else:
            return None
    return {m: [m] for m in models}


def claim_repository(root: Path, name: str, models: list[str]) -> dict[str, Any]:
    """Check that ``root`` may receive ``models``; return its marker (a new one for a new folder).

    Refused, before anything is written: a folder that is neither empty nor a repository adx wrote,
    a model folder of that name that adx did not write, and a README.md or config.pbtxt edited
    since adx wrote it (writing would destroy the edit).
    """
    fresh: dict[str, Any] = {"written_by": "adexport", "models": {}, "files": {}}
    if root.is_symlink() and not root.exists() or root.exists() and not root.is_dir():
        raise ConfigError(f"--out {str(root)!r} is not a folder; give a folder for the Triton model repository")
    if not root.exists():
        return fresh
    marker = _read_marker(root)
    if marker is None:
        entries = sorted(root.iterdir())
        legacy = _legacy_models(root, entries)
        if legacy is None:
            shown = ", ".join(p.name for p in entries[:5]) + (", ..." if len(entries) > 5 else "")
            raise ConfigError(f"--out {str(root)!r} is not empty and is not a Triton model repository written by adx "
                              f"(it holds {shown}); writing there could overwrite your files. Give a new or empty "
                              "folder (copy the model folders into another repository afterwards if you want)")
        marker = {**fresh, "models": legacy}
        if (root / REPOSITORY_README).is_file():
            marker["files"][REPOSITORY_README] = sha256_file(root / REPOSITORY_README)
        for model in legacy:
            marker["files"][f"{model}/config.pbtxt"] = sha256_file(root / model / "config.pbtxt")
    ours = {m for group in marker["models"].values() for m in group}
    for model in models:
        if (root / model).exists() or (root / model).is_symlink():
            if model not in ours:
                raise ConfigError(f"{str(root / model)!r} exists and was not written by adx; model {name!r} needs that "
                                  "folder. Move it away, or choose another name with --name")
    tracked = [REPOSITORY_README, *(f"{m}/config.pbtxt" for m in models)]
    for rel in tracked:
        path = root / rel
        if not path.exists():
            continue
        recorded = marker["files"].get(rel)
        if recorded is None or not path.is_file() or sha256_file(path) != recorded:
            raise ConfigError(f"{str(path)!r} was changed since adx wrote it (or adx did not write it); writing the "
                              f"repository would replace it. Move your version away (adx writes a new one), or "
                              "write into a new folder")
    return marker


def write_readme(root: Path, marker: dict[str, Any] | None = None) -> None:
    """The repository's README.md, listing the models adx wrote there (``marker``; without one, every
    ensemble folder)."""
    def text(path: Path) -> str:
        return path.read_text("utf-8") if path.is_file() else ""

    if marker is not None:
        bases = set(marker["models"])
    else:
        folders = [p.name for p in root.iterdir()]
        bases = set(folders) | {n[: -len("_image")] for n in folders if n.endswith("_image")}
    names = sorted(n for n in bases if 'platform: "ensemble"' in text(root / n / "config.pbtxt")
                   and not n.endswith("_image"))
    tiled = sorted(n for n in bases if '"tiled_image"' in text(root / f"{n}_image" / "config.pbtxt"))
    lines = [f"- `{n}` (float input) and `{n}_image` (encoded image bytes); parts `{n}_graph`, `{n}_score`, "
             f"`{n}_decode`" for n in names]
    lines += [f"- `{n}_image` (encoded image bytes, tiled: maps at each image's size); part `{n}_graph`"
              for n in tiled]
    # The examples name a model that exists: an untiled one's float ensemble, else a tiled one's N_image,
    # which reaches its graph through BLS: Triton does not load that graph for it (an ensemble's steps it does).
    first = names[0] if names else f"{tiled[0]}_image" if tiled else "NAME"
    load = [first, f"{first}_image"] if names or not tiled else [first, f"{tiled[0]}_graph"]
    _write_text_atomic(root / REPOSITORY_README, README.format(
        models="\n".join(lines) or "- (none)", first=first,
        first_k8s=(names[0] if names else tiled[0] if tiled else "name").lower().replace("_", "-"),
        load_models=", ".join(f'"--load-model={m}"' for m in load),
        tested="\n".join(f"- {k}: {v}" for k, v in TESTED.items())))


README = _README_TITLE + """

Written by `adx export BUNDLE --format triton --out THIS_FOLDER`; each new export of a model is a new
version folder, and every `config.pbtxt` records the bundle manifest's sha256 (`adx_manifest_sha256`).
`adexport-repository.json` lists what adx wrote here; adx refuses to replace this README or a
`config.pbtxt` you changed (move your version away first).

{models}

## Contract

- `NAME` takes the preprocessed tensor the bundle's manifest describes (`input`: resize, crop, mean/std,
  colour; NCHW float32), batch first, and returns `image_score` (raw), `normalized_score` (threshold at
  0.5), `label` (true = anomalous) and, for methods with maps, `anomaly_map` (raw, at the model's input size).
  Request only the outputs you need: a client that leaves out `anomaly_map` does not receive it.
- `NAME_image` takes `image_bytes` (BYTES, one encoded PNG/JPEG/BMP/TIFF per batch row), decoded and
  preprocessed on the server by adx_runtime's own decoder, so a thin client needs only `tritonclient`.
  A file that cannot be decoded fails its request with the reason; other requests are not affected.
- `NAME_graph` runs the ONNX graph on Triton's `onnxruntime` backend; `NAME_score` and `NAME_decode` run on
  the Python backend with adx_runtime's scorer and decoder. `NAME_score` verifies the bundle copy in its
  version folder (sha256 of every file, and the manifest's against its config) before it loads;
  `NAME_decode` reads the input contract from its config.
- A tiled bundle (manifest `input.tiling`) keeps each image at its own resolution and scores it tile by
  tile, so it has no float-input `NAME` (no fixed-size tensor describes its images) and no
  `NAME_score`/`NAME_decode`: its `NAME_image` is one Python-backend model that runs adx_runtime's tiled
  scoring (cut, score, stitch, calibrate) and sends each chunk of tiles to `NAME_graph` (BLS). Its
  `anomaly_map` is `(1, H, W)` at the image's working size; send one image per request (a request whose
  images differ in size cannot return one map tensor, and fails when it asks for `anomaly_map`).

## Run it with the official Triton container

The Python-backend models import `adx_runtime`, so the container's Python needs adexport's runtime:

```dockerfile
FROM nvcr.io/nvidia/tritonserver:24.10-py3
RUN pip install --no-cache-dir 'adexport[cpu]'
```

```sh
docker build -t adx-triton .
docker run --rm -p 8000:8000 -p 8001:8001 -p 8002:8002 --shm-size=1g \\
  -v "$PWD":/models adx-triton tritonserver --model-repository=/models
curl -s localhost:8000/v2/models/{first}/ready -o /dev/null -w '%{{http_code}}\\n'   # 200 once loaded
```

## Kubernetes: one Deployment per model, scaled horizontally

```yaml
apiVersion: apps/v1
kind: Deployment
metadata: {{ name: {first_k8s} }}
spec:
  replicas: 2
  selector: {{ matchLabels: {{ app: {first_k8s} }} }}
  template:
    metadata: {{ labels: {{ app: {first_k8s} }} }}
    spec:
      containers:
        - name: triton
          image: adx-triton            # the image above, pushed to your registry
          args: ["tritonserver", "--model-repository=/models", "--model-control-mode=explicit",
                 {load_models}]
          ports: [{{ containerPort: 8000 }}, {{ containerPort: 8001 }}, {{ containerPort: 8002 }}]
          readinessProbe: {{ httpGet: {{ path: /v2/health/ready, port: 8000 }} }}
          livenessProbe: {{ httpGet: {{ path: /v2/health/live, port: 8000 }} }}
          resources: {{ requests: {{ cpu: "2", memory: 2Gi }} }}
          volumeMounts: [{{ name: models, mountPath: /models }}, {{ name: shm, mountPath: /dev/shm }}]
      volumes:
        - {{ name: models, persistentVolumeClaim: {{ claimName: adx-models }} }}
        - {{ name: shm, emptyDir: {{ medium: Memory, sizeLimit: 1Gi }} }}
---
apiVersion: v1
kind: Service
metadata: {{ name: {first_k8s} }}
spec: {{ selector: {{ app: {first_k8s} }}, ports: [{{ name: http, port: 8000 }}, {{ name: grpc, port: 8001 }}] }}
---
apiVersion: autoscaling/v2
kind: HorizontalPodAutoscaler
metadata: {{ name: {first_k8s} }}
spec:
  scaleTargetRef: {{ apiVersion: apps/v1, kind: Deployment, name: {first_k8s} }}
  minReplicas: 1
  maxReplicas: 8
  metrics: [{{ type: Resource, resource: {{ name: cpu, target: {{ type: Utilization, averageUtilization: 70 }} }} }}]
```

Loading only one model per Deployment (`--model-control-mode=explicit`) lets each model scale on its own.

## Tested with

{tested}
"""
