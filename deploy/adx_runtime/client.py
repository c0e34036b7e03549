"""A thin client for bundles served by Triton (``adx serve``, or the repository of ``adx export --format
triton`` in a Triton container): image files go as encoded bytes to ``NAME_image`` and come back as
:class:`~adx_runtime.predictor.FileResult` rows, like local inference (``adx infer --server URL``).

Needs only ``tritonclient`` (``pip install 'adexport[serve]'``, or ``pip install 'tritonclient[http,grpc]'``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable, Iterator
from urllib.parse import urlparse

import numpy as np

from adx_runtime.errors import AdxError, ConfigError, DependencyError
from adx_runtime.predictor import FileResult
from adx_runtime.triton_repo import IMAGE_BYTES

SCHEMES = ("http", "grpc")


class RemoteModel:
    """One served model. ``url``: ``http://HOST:PORT`` (default) or ``grpc://HOST:PORT``; ``name``: the
    float-input ensemble's name (files go to ``NAME_image``)."""

    def __init__(self, url: str, name: str, *, timeout: float = 60.0):
        parsed = urlparse(url if "://" in url else f"http://{url}")
        if parsed.scheme not in SCHEMES or not parsed.hostname or not parsed.port:
            raise ConfigError(f"server URL {url!r} must look like http://HOST:PORT or grpc://HOST:PORT")
        self.scheme, self.name, self.timeout = parsed.scheme, name, timeout
        try:
            if self.scheme == "http":
                import tritonclient.http as tc  # noqa: PLC0415
            else:
                import tritonclient.grpc as tc  # noqa: PLC0415
        except ImportError as exc:
            raise DependencyError(f"talking to a Triton server needs tritonclient ({exc}): pip install "
                                  "'adexport[serve]' or pip install 'tritonclient[http,grpc]'") from None
        self.tc = tc
        address = f"{parsed.hostname}:{parsed.port}"
        if self.scheme == "http":
            self.client = tc.InferenceServerClient(address, connection_timeout=timeout, network_timeout=timeout)
        else:
            self.client = tc.InferenceServerClient(address)
        try:
            ready = self.client.is_model_ready(f"{name}_image")
        except Exception as exc:  # tritonclient raises its own and the transport's exceptions
            raise AdxError(f"cannot reach the Triton server at {url} ({type(exc).__name__}: {exc}); is `adx serve` "
                           "running there?") from None
        if not ready:
            raise ConfigError(f"the server at {url} has no ready model {name}_image; `adx serve` prints the ready "
                              "models at startup (GET /v2/repository/index lists them)")
        self.has_map = any(o["name"] == "anomaly_map" for o in self._metadata()["outputs"])

    def _metadata(self) -> dict[str, Any]:
        meta = self.client.get_model_metadata(f"{self.name}_image")
        if isinstance(meta, dict):
            return meta
        return {"outputs": [{"name": o.name} for o in meta.outputs]}

    def infer_bytes(self, data: bytes, *, want_map: bool = False) -> dict[str, Any]:
        """One encoded image -> ``{"image_score", "normalized_score", "label"[, "anomaly_map" (H, W)]}``.
        Raises :class:`AdxError` with the server's reason when the request fails (a bad image)."""
        tensor = self.tc.InferInput(IMAGE_BYTES, [1, 1], "BYTES")
        tensor.set_data_from_numpy(np.array([[data]], dtype=np.object_))
        names = ["image_score", "normalized_score", "label"] + (["anomaly_map"] if want_map and self.has_map else [])
        outputs = [self.tc.InferRequestedOutput(n) for n in names]
        try:
            kwargs = {"client_timeout": self.timeout} if self.scheme == "grpc" else {}
            result = self.client.infer(f"{self.name}_image", [tensor], outputs=outputs, **kwargs)
        except self.tc.InferenceServerException as exc:
            raise AdxError(_reason(exc)) from None
        row: dict[str, Any] = {
            "image_score": float(result.as_numpy("image_score").reshape(-1)[0]),
            "normalized_score": float(result.as_numpy("normalized_score").reshape(-1)[0]),
            "label": bool(result.as_numpy("label").reshape(-1)[0]),
        }
        if "anomaly_map" in names:
            row["anomaly_map"] = result.as_numpy("anomaly_map")[0]
        return row

    def predict_files(self, paths: Iterable[str | Path], keep_maps: bool = False) -> Iterator[FileResult]:
        """One request per file, in order; a file the server cannot decode gets ``error`` and the rest go on."""
        for p in paths:
            try:
                data = Path(p).read_bytes()
            except OSError as exc:
                yield FileResult(path=str(p), error=f"cannot read the file ({exc.strerror})")
                continue
            try:
                row = self.infer_bytes(data, want_map=keep_maps)
            except AdxError as exc:
                yield FileResult(path=str(p), error=str(exc))
                continue
            yield FileResult(path=str(p), image_score=row["image_score"], normalized_score=row["normalized_score"],
                             label=row["label"], anomaly_map=row.get("anomaly_map"))

    def close(self) -> None:
        self.client.close()


def _reason(exc: Exception) -> str:
    """The server's message without tritonclient's wrapping (``[StatusCode.INTERNAL] ...``)."""
    text = exc.message() if hasattr(exc, "message") and callable(exc.message) else str(exc)
    return str(text).split("] ", 1)[-1].strip() if str(text).startswith("[") else str(text).strip()
