"""Triton Python-backend models that run adx_runtime's own code (see :mod:`adx_runtime.triton_repo`).

- :class:`DecodeModel`: encoded image bytes -> :func:`decode_image` + :func:`preprocess_image`;
- :class:`GraphModel`: the bundle's graph through the runtime's own graph runner
  (:func:`adx_runtime.runners.open_runner`; ``adx serve``, where the server has no onnxruntime backend);
- :class:`ScoreModel`: graph outputs -> :meth:`Predictor.score_outputs` (scorer, post-processing,
  calibration) on a bundle loaded with checksum verification;
- :class:`TiledImageModel` (tiled bundles): encoded image bytes -> :meth:`Predictor.predict_prepared`
  (tiles cut, scored per tile position, stitched at each image's size, calibrated), the graph run
  chunk by chunk on the repository's graph model through BLS (:class:`BlsGraphRunner`).

Triton hands ``execute`` every request its dynamic batcher gathered: the models stack them into one
batch, run it once and split the result back. A request that cannot be served (an image that does
not decode) gets its own error response; the others in the batch are answered.

``triton_python_backend_utils`` exists only inside Triton's Python-backend stub; it is imported in
``initialize``, so this module imports anywhere.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from adx_runtime.bundle import MANIFEST, load_manifest, sha256_file
from adx_runtime.errors import AdxError, BundleError, ConfigError, ImageDecodeError, ProviderError
from adx_runtime.runners import GraphRunner, TensorSpec


class _Model:
    kind = ""

    def initialize(self, args: dict[str, Any]) -> None:
        import triton_python_backend_utils as pb  # noqa: PLC0415 - provided by Triton's Python backend

        self.pb = pb
        self.config = json.loads(args["model_config"])
        self.params = {k: v["string_value"] for k, v in self.config.get("parameters", {}).items()}
        self.version_dir = Path(args["model_repository"]) / str(args["model_version"])
        self.name = args["model_name"]

    def _bundle(self) -> tuple[Path, dict[str, Any]]:
        """The bundle this model serves, verified (schema, every file's sha256) and matched against the
        manifest sha256 its config records: a model never scores with a bundle it did not check."""
        rel = Path(self.params["adx_bundle_dir"])
        root = rel if rel.is_absolute() else self.version_dir / rel
        manifest = load_manifest(root, verify=True)
        actual = sha256_file(root / MANIFEST)
        expected = self.params["adx_manifest_sha256"]
        if actual != expected:
            raise BundleError(f"model {self.name}: bundle {str(root)!r} has manifest sha256 {actual[:16]}..., its "
                              f"config.pbtxt records {expected[:16]}...; export the repository again")
        return root, manifest

    def _inputs(self, requests: list[Any], name: str) -> tuple[np.ndarray, list[int]]:
        arrays = [self.pb.get_input_tensor_by_name(r, name).as_numpy() for r in requests]
        return (arrays[0] if len(arrays) == 1 else np.concatenate(arrays)), [len(a) for a in arrays]

    def _error(self, message: str) -> Any:
        return self.pb.InferenceResponse(output_tensors=[], error=self.pb.TritonError(message))

    def _responses(self, requests: list[Any], sizes: list[int], outputs: dict[str, np.ndarray]) -> list[Any]:
        responses, start = [], 0
        for request, n in zip(requests, sizes):
            wanted = _requested(request, outputs)
            tensors = [self.pb.Tensor(k, np.ascontiguousarray(v[start:start + n])) for k, v in outputs.items()
                       if k in wanted]
            responses.append(self.pb.InferenceResponse(output_tensors=tensors))
            start += n
        return responses

    def finalize(self) -> None:
        pass


def _requested(request: Any, outputs: dict[str, np.ndarray]) -> set[str]:
    try:
        names = request.requested_output_names()
    except AttributeError:  # older Python backends
        names = None
    return set(names) if names else set(outputs)


class DecodeModel(_Model):
    """``image_bytes`` (BYTES, ``(B, 1)``) -> the graph's input ``(B, C, H, W)`` float32."""

    def initialize(self, args: dict[str, Any]) -> None:
        super().initialize(args)
        from adx_runtime.preprocess import PreprocessConfig  # noqa: PLC0415

        self.preprocess = PreprocessConfig.from_dict(json.loads(self.params["adx_input_contract"]))
        self.output = self.config["output"][0]["name"]

    def execute(self, requests: list[Any]) -> list[Any]:
        from adx_runtime.images import decode_image  # noqa: PLC0415
        from adx_runtime.preprocess import preprocess_image  # noqa: PLC0415

        responses = []
        for request in requests:
            items = self.pb.get_input_tensor_by_name(request, "image_bytes").as_numpy().reshape(-1)
            try:
                tensors = []
                for i, item in enumerate(items):
                    data = item if isinstance(item, bytes) else bytes(item)
                    try:
                        tensors.append(preprocess_image(decode_image(data), self.preprocess))
                    except ImageDecodeError as exc:
                        raise ImageDecodeError(f"image {i} of the request", exc.reason) from None
                batch = np.stack(tensors).astype(np.float32, copy=False)
            except AdxError as exc:
                responses.append(self._error(str(exc)))
                continue
            responses.append(self.pb.InferenceResponse(output_tensors=[self.pb.Tensor(self.output, batch)]))
        return responses


class GraphModel(_Model):
    """The bundle's graph on the runtime's ``cpu`` runner (ONNX Runtime's CPU provider), the batch of
    all queued requests at once."""

    def initialize(self, args: dict[str, Any]) -> None:
        super().initialize(args)
        from adx_runtime.runners import open_runner  # noqa: PLC0415

        root, manifest = self._bundle()
        self.runner = open_runner(root, manifest, "cpu", threads=int(self.params.get("adx_threads", "0")))

    def execute(self, requests: list[Any]) -> list[Any]:
        x, sizes = self._inputs(requests, self.runner.input_name)
        return self._responses(requests, sizes, self.runner.run(x))


class ScoreModel(_Model):
    """Graph outputs -> ``image_score``, ``normalized_score``, ``label`` ``(B, 1)`` and ``anomaly_map``
    ``(B, H, W)`` (methods with maps), by :meth:`Predictor.score_outputs`."""

    def initialize(self, args: dict[str, Any]) -> None:
        super().initialize(args)
        from adx_runtime.predictor import Predictor  # noqa: PLC0415

        root, _ = self._bundle()
        self.predictor = Predictor.load(root, graph=False, bank_device="cpu")
        self.input_names = [t["name"] for t in self.config["input"]]

    def execute(self, requests: list[Any]) -> list[Any]:
        sizes: list[int] = []
        outputs = {}
        for name in self.input_names:
            outputs[name], sizes = self._inputs(requests, name)
        try:
            pred = self.predictor.score_outputs(outputs)
        except AdxError as exc:
            return [self._error(f"model {self.name}: {exc}") for _ in requests]
        result = {"image_score": pred.image_scores.reshape(-1, 1), "normalized_score":
                  pred.normalized_scores.astype(np.float32).reshape(-1, 1), "label": pred.labels.reshape(-1, 1)}
        if pred.anomaly_maps is not None:
            result["anomaly_map"] = pred.anomaly_maps.astype(np.float32, copy=False)
        return self._responses(requests, sizes, result)


class BlsGraphRunner(GraphRunner):
    """The runtime's graph-runner interface over another model of the same Triton server: each
    ``run`` is one BLS request (Triton's business logic scripting) to ``model``, so the graph runs on
    whatever backend serves that model (onnxruntime or TensorRT on a GPU box, the Python backend in
    ``adx serve``)."""

    def __init__(self, pb: Any, model: str, manifest: dict[str, Any]):
        self.pb, self.model = pb, model
        graph = manifest["graph"]
        self.inputs = [TensorSpec(t["name"], tuple(t["shape"])) for t in graph["inputs"]]
        self.outputs = [TensorSpec(t["name"], tuple(t["shape"])) for t in graph["outputs"]]
        self.providers = [f"triton:{model}"]

    def run(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        pb = self.pb
        request = pb.InferenceRequest(model_name=self.model, requested_output_names=self.output_names,
                                      inputs=[pb.Tensor(self.input_name, np.ascontiguousarray(batch, np.float32))])
        response = request.exec()
        if response.has_error():
            message = " ".join(str(response.error().message()).split())  # one line: Triton's may hold several
            raise ProviderError(f"graph model {self.model} failed on {len(batch)} tiles: {message}")
        outputs = {}
        for name in self.output_names:
            tensor = pb.get_output_tensor_by_name(response, name)
            if tensor is None:
                raise ProviderError(f"graph model {self.model} returned no {name!r}; its config.pbtxt and the bundle "
                                    "do not match: export the repository again")
            outputs[name] = tensor.as_numpy()
        return outputs


class TiledImageModel(_Model):
    """``image_bytes`` (BYTES, ``(B, 1)``) of a tiled bundle -> ``image_score``, ``normalized_score``,
    ``label`` ``(B, 1)`` and ``anomaly_map`` ``(B, H, W)`` at the images' working size, by the runtime's
    own tiled scoring. Every request's images are scored in one call (their tiles share the graph's
    chunks); a request with an image that cannot be decoded (or is smaller than a tile) gets its own
    error response, and so does one that asks for ``anomaly_map`` with images of different sizes."""

    def initialize(self, args: dict[str, Any]) -> None:
        super().initialize(args)
        from adx_runtime.predictor import Predictor  # noqa: PLC0415

        root, manifest = self._bundle()
        self.predictor = Predictor.load(root, graph=False, bank_device="cpu")
        # The scorer is the bundle's; only the graph runs elsewhere (Predictor takes any GraphRunner).
        self.predictor.runner = BlsGraphRunner(self.pb, self.params["adx_graph_model"], manifest)
        # A chunk larger than the graph model's max_batch_size would be refused by Triton.
        self.predictor.tile_batch = min(self.predictor.tile_batch, int(self.params["adx_graph_max_batch"]))
        self.outputs = [t["name"] for t in self.config["output"]]

    def execute(self, requests: list[Any]) -> list[Any]:
        from adx_runtime.images import decode_image  # noqa: PLC0415

        responses: list[Any] = [None] * len(requests)
        prepared: list[np.ndarray] = []
        owners: list[tuple[int, int]] = []  # (request, images before it in `prepared`) of each request scored
        for r, request in enumerate(requests):
            items = self.pb.get_input_tensor_by_name(request, "image_bytes").as_numpy().reshape(-1)
            try:
                if len(items) == 0:
                    raise ConfigError("the request holds no image")
                mine = []
                for i, item in enumerate(items):
                    try:
                        mine.append(self.predictor.prepare(decode_image(item if isinstance(item, bytes) else bytes(item))))
                    except ImageDecodeError as exc:
                        raise ImageDecodeError(f"image {i} of the request", exc.reason) from None
                    except ConfigError as exc:  # smaller than a tile, or not the fixed working size
                        raise ConfigError(f"image {i} of the request: {exc}") from None
            except AdxError as exc:
                responses[r] = self._error(str(exc))
                continue
            owners.append((r, len(prepared)))
            prepared.extend(mine)
        if not prepared:
            return responses
        try:
            pred = self.predictor.predict_prepared(prepared)
        except AdxError as exc:
            for r, _ in owners:
                responses[r] = self._error(f"model {self.name}: {exc}")
            return responses
        ends = [start for _, start in owners[1:]] + [len(prepared)]
        for (r, start), end in zip(owners, ends):
            responses[r] = self._answer(requests[r], pred, start, end)
        return responses

    def _answer(self, request: Any, pred: Any, start: int, end: int) -> Any:
        scores = pred.image_scores[start:end]
        if not np.isfinite(scores).all():
            # A NaN score is below every threshold: answered, it would read as a confident "good".
            return self._error(f"model {self.name}: the model gave a non-finite score ({scores.tolist()}); "
                               "the request was not labelled")
        result = {"image_score": scores.astype(np.float32).reshape(-1, 1),
                  "normalized_score": pred.normalized_scores[start:end].astype(np.float32).reshape(-1, 1),
                  "label": pred.labels[start:end].reshape(-1, 1)}
        wanted = _requested(request, dict.fromkeys(self.outputs))
        if "anomaly_map" in wanted and pred.anomaly_maps is not None:
            maps = pred.anomaly_maps[start:end]
            if len({m.shape for m in maps}) > 1:
                return self._error(f"model {self.name}: the request's images have maps of different sizes "
                                   f"({', '.join(f'{m.shape[1]} x {m.shape[0]}' for m in maps)}), which one "
                                   "anomaly_map tensor cannot hold; send one image per request")
            result["anomaly_map"] = np.stack(maps).astype(np.float32, copy=False)
        tensors = [self.pb.Tensor(k, np.ascontiguousarray(v)) for k, v in result.items() if k in wanted]
        return self.pb.InferenceResponse(output_tensors=tensors)
