"""``Predictor.load(bundle)`` then ``predict(images)``: the torch-free scoring path.

image files -> decode + preprocess -> graph runner (:mod:`adx_runtime.runners`: ONNX Runtime on
the CPU, CUDA or TensorRT) -> scorer (picked by the manifest's scoring kind) -> post-processing
(the manifest's ``postprocess`` section: upsample, smoothing, image-score rule) -> raw and
normalised scores and maps, labels from the threshold.

Maps are optional: a method that scores whole images only has ``anomaly_maps = None``.
Maps come at the model's input size; :func:`adx_runtime.preprocess.map_to_original` brings one
back onto the image as it was sent (``FileResult.size``).

A tiled bundle (``input.tiling``) scores each image at its working size, tile by tile, and stitches
the tiles' maps (:mod:`adx_runtime.tiling`): its maps are at the working size, one array per image
(images may differ in size), and :meth:`Predictor.predict_tensor` scores tiles as images.
"""

from __future__ import annotations

import math
import time
from collections import defaultdict, deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence, Sized

import numpy as np
from PIL import Image
from threadpoolctl import ThreadpoolController

from adx_runtime import calibration
from adx_runtime.bundle import load_manifest
from adx_runtime.errors import BundleError, ConfigError, ImageDecodeError
from adx_runtime.images import decode_image
from adx_runtime.postprocess import MapPostprocessor, PostprocessSpec, image_scores_from_maps
from adx_runtime.preprocess import PreprocessConfig, normalise_pixels, preprocess_image, stack, working_array
from adx_runtime.runners import GraphRunner, open_runner, require_device
from adx_runtime.scorers import create_scorer
from adx_runtime.tiling import Stitcher, TileMaps, coarse_map, smooth, tile_layout

#: Tiles per graph call for a tiled bundle whose graph has a dynamic batch axis.
TILE_BATCH = 16

STAGES = ("preprocess", "graph", "scoring", "postprocess")


@dataclass
class Prediction:
    """Scores of a batch of ``B`` images; maps are at the model's input size ``(H, W)``."""

    image_scores: np.ndarray  # (B,) raw
    #: (B, H, W) raw; None for image-level-only methods; a tiled bundle gives a list of (H_i, W_i)
    anomaly_maps: np.ndarray | list[np.ndarray] | None
    normalized_scores: np.ndarray  # (B,) in [0, 1], threshold at 0.5
    labels: np.ndarray  # (B,) bool: True = anomalous (raw score >= threshold)
    threshold: float  # the raw image threshold used

    def __len__(self) -> int:
        return len(self.image_scores)


@dataclass
class FileResult:
    """One file of :meth:`Predictor.predict_files`: either a score or the reason it failed."""

    path: str
    image_score: float | None = None
    normalized_score: float | None = None
    label: bool | None = None
    anomaly_map: np.ndarray | None = None  # (H, W) raw, at the model's input size (tiled: the working size)
    size: tuple[int, int] | None = None  # (width, height) of the decoded image as sent
    error: str | None = None
    note: str | None = None  # something the user should know about a scored file (e.g. first frame only)

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclass
class StageTimer:
    """Accumulates seconds per stage per batch when enabled (``adx bench``)."""

    enabled: bool = False
    records: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))

    def add(self, stage: str, seconds: float) -> None:
        if self.enabled:
            self.records[stage].append(seconds)


class Predictor:
    """Scores images from a bundle. Build with :meth:`load`."""

    def __init__(self, bundle_dir: Path, manifest: dict[str, Any], runner: GraphRunner | None, scorer: Any,
                 threshold: float | None, device: str):
        self.bundle_dir = bundle_dir
        self.manifest = manifest
        #: runs the graph (None: opened with ``graph=False``, for outputs computed elsewhere)
        self.runner = runner
        self.scorer = scorer
        self.device = device
        self.preprocess = PreprocessConfig.from_dict(manifest["input"])
        graph = manifest["graph"]
        self.input_name = graph["inputs"][0]["name"]
        self.output_names = [o["name"] for o in graph["outputs"]]
        self.postprocess = PostprocessSpec.from_dict(manifest["postprocess"])
        self.postprocessor = (MapPostprocessor(self.postprocess, self.preprocess.input_size)
                              if self.postprocess.has_map else None)
        cal = calibration.read(manifest)
        self.calibration = cal
        self.image_threshold = float(cal["image"]["threshold"]) if threshold is None else float(threshold)
        self.image_scale = float(cal["image"]["scale"])
        pixel = cal.get("pixel") or {}
        self.pixel_threshold = pixel.get("threshold")
        self.pixel_scale = pixel.get("scale")
        self.max_batch = int(graph.get("max_batch") or 0) or None
        self.tiled = self.preprocess.tiling is not None
        #: tiles per graph call (tiled bundles): the graph's batch limit, else TILE_BATCH
        self.tile_batch = self.max_batch or TILE_BATCH
        self.tile_maps = (TileMaps(self.postprocess, self.preprocess.input_size)
                          if self.tiled and self.postprocess.has_map else None)
        #: an image-level-only method under tiling: its tile scores make a coarse map (:func:`coarse_map`)
        self.coarse_maps = self.tiled and not self.postprocess.has_map
        #: tiles scored so far (tiled bundles), for `adx bench`'s tiles per second
        self.tiles_scored = 0
        self.timer = StageTimer()
        #: files :meth:`predict_files` decodes ahead in a background thread (None: one batch; 0: none)
        self.decode_ahead: int | None = None
        self._blas = ThreadpoolController()

    def _one_blas_thread(self) -> Any:
        """The map matmuls are small; letting numpy's OpenBLAS wake its threads for them leaves those
        threads spinning while FAISS searches the next batch (measured on 2 cores, batch 1: 67 ms
        per image with them, 37 ms without)."""
        return self._blas.limit(limits=1, user_api="blas")

    @classmethod
    def load(
        cls,
        bundle: str | Path,
        *,
        device: str = "cpu",
        bank_device: str = "auto",
        threshold: float | None = None,
        threads: int = 0,
        export_in_progress: bool = False,
        graph: bool = True,
        search_params: dict[str, float] | None = None,
    ) -> "Predictor":
        """Verify and open a bundle.

        Args:
            graph: open the graph too; ``False`` gives a scorer-only predictor (:meth:`score_outputs`),
                as Triton's scorer model uses it while the graph runs elsewhere.
            device: the runtime target that runs the graph, a row of
                :data:`adx_runtime.runners.RUNNERS` (ONNX Runtime's ``cpu``, ``cuda`` or ``tensorrt``
                provider); refused if this machine cannot run it.
            bank_device: where FAISS searches: ``cpu``, ``cuda`` or ``auto`` (``cuda`` when the graph
                runs on a GPU and FAISS has GPU support, else ``cpu``).
            threshold: raw image threshold overriding the calibrated one; must be a finite number.
            export_in_progress: only for export's parity check, which loads the bundle before its
                parity section exists.
            search_params: FAISS search parameters (``nprobe``, ``efSearch``) overriding the
                manifest's, for bundles with an approximate index.
        """
        root = Path(bundle)
        if threshold is not None and not math.isfinite(threshold):
            raise ConfigError(f"--threshold must be a finite number, got {threshold}; give a raw image-score threshold "
                              "such as the one `adx calibrate` prints, or leave it out to use the bundle's")
        runner_cls = require_device(device)  # before the bundle is read: a missing provider is the first error
        manifest = load_manifest(root, verify=True, export_in_progress=export_in_progress)
        if bank_device == "auto":
            bank_device = "cuda" if runner_cls.uses_gpu(device) and _faiss_has_gpu() else "cpu"
        try:
            runner = open_runner(root, manifest, device, threads=threads, runner_cls=runner_cls) if graph else None
            scorer = create_scorer(root, manifest, bank_device, search_params)
            return cls(root, manifest, runner, scorer, threshold, device)
        except (KeyError, TypeError, ValueError, IndexError, AttributeError) as exc:
            # The types the runtime reads are checked in read_manifest; this is the net under that
            # check, so a manifest malformed in a way it does not foresee is still one line.
            what = f"lacks {exc.args[0]!r}" if isinstance(exc, KeyError) else f"is malformed ({exc})"
            raise BundleError(f"the manifest of bundle {str(root)!r} {what}; re-export the bundle") from None

    # ------------------------------------------------------------------ describe
    @property
    def providers(self) -> list[str]:
        """What runs the graph, most preferred first (ONNX Runtime's provider names); [] without a graph."""
        return list(self.runner.providers) if self.runner is not None else []

    @property
    def method(self) -> str:
        return str(self.manifest["method"])

    @property
    def has_map(self) -> bool:
        """Whether this bundle produces anomaly maps (False: image-level scores only; a tiled
        image-level bundle gives the coarse map of its tile scores)."""
        return self.postprocessor is not None or self.coarse_maps

    # ------------------------------------------------------------------ scoring
    @staticmethod
    def _rgb(item: Any) -> Image.Image:
        """A path, bytes, PIL image or uint8 array (``(H, W, 3)`` RGB or ``(H, W)`` grey) -> RGB image."""
        if isinstance(item, Image.Image):
            return item if item.mode == "RGB" else item.convert("RGB")
        if isinstance(item, np.ndarray):
            if item.dtype != np.uint8 or not (item.ndim == 2 or (item.ndim == 3 and item.shape[2] == 3)):
                raise ConfigError(f"array images must be (H, W, 3) uint8 RGB or (H, W) uint8 grey, "
                                  f"got {item.shape} {item.dtype}")
            return Image.fromarray(item, mode="RGB" if item.ndim == 3 else "L").convert("RGB")
        return decode_image(item)

    def prepare(self, img: Image.Image) -> np.ndarray:
        """The first step of scoring one RGB image: the graph input ``(C, H, W)`` float32, or for a
        tiled bundle the working image ``(H, W, C)`` uint8 the tiles are cut from."""
        return working_array(img, self.preprocess) if self.tiled else preprocess_image(img, self.preprocess)

    def to_tensor(self, images: Sequence[Any]) -> np.ndarray:
        """Paths, bytes, PIL images or uint8 arrays (``(H, W, 3)`` RGB or ``(H, W)`` grey) ->
        ``(B, C, H, W)`` float32 (a tiled bundle: each image resized whole to one tile, which is not
        how it scores images; :meth:`predict` tiles them)."""
        return stack([preprocess_image(self._rgb(item), self.preprocess) for item in images])

    def predict(self, images: Sequence[Any]) -> Prediction:
        """Score a batch. Raises :class:`ImageDecodeError` on the first bad file; use
        :meth:`predict_files` to report bad files and score the rest."""
        t0 = time.perf_counter()
        prepared = [self.prepare(self._rgb(item)) for item in images]
        self.timer.add("preprocess", time.perf_counter() - t0)
        return self.predict_prepared(prepared)

    def predict_prepared(self, prepared: Sequence[np.ndarray]) -> Prediction:
        """Score what :meth:`prepare` gave for each image."""
        return self.predict_tiled(prepared) if self.tiled else self.predict_tensor(stack(prepared))

    def predict_tensor(self, x: np.ndarray, tiles: np.ndarray | None = None) -> Prediction:
        """Score preprocessed input ``(B, C, H, W)`` float32 (a tiled bundle: tiles, each scored as an
        image, as export's parity check compares them with the torch model; ``tiles``: each one's tile
        position, which scoring data kept per tile position needs)."""
        expected = (self.preprocess.channels, *self.preprocess.input_size)
        if x.ndim != 4 or tuple(x.shape[1:]) != expected:
            raise ConfigError(f"input must be (B, {', '.join(map(str, expected))}), got {x.shape}")
        if self.runner is None:
            raise ConfigError("this predictor was opened without its graph (graph=False); it scores graph outputs "
                              "only (score_outputs)")
        step = self.max_batch or len(x)
        preds = []
        for i in (range(0, len(x), step) if self.max_batch else [0]):
            t0 = time.perf_counter()
            outputs = self.runner.run(x[i : i + step])
            self.timer.add("graph", time.perf_counter() - t0)
            preds.append(self.score_outputs(outputs, None if tiles is None else np.asarray(tiles)[i : i + step]))
        if len(preds) == 1:
            return preds[0]
        maps = [p.anomaly_maps for p in preds if p.anomaly_maps is not None]
        image_scores = np.concatenate([p.image_scores for p in preds])
        return Prediction(
            image_scores=image_scores,
            anomaly_maps=np.concatenate(maps) if maps else None,
            normalized_scores=np.concatenate([p.normalized_scores for p in preds]),
            labels=np.concatenate([p.labels for p in preds]),
            threshold=self.image_threshold,
        )

    def score_outputs(self, outputs: dict[str, np.ndarray], tiles: np.ndarray | None = None) -> Prediction:
        """The graph's outputs (by name, batch ``B`` first) -> scorer -> post-processing -> scores and
        labels: everything after the graph, shared by :meth:`predict_tensor` and Triton's scorer model."""
        t1 = time.perf_counter()
        out = self.scorer(outputs, tiles)
        t2 = time.perf_counter()
        full = None
        if self.postprocessor is not None:
            if out.patch_maps is None:
                raise BundleError("the manifest promises a map but the scorer gave none; re-export the bundle")
            with self._one_blas_thread():
                full = self.postprocessor(out.patch_maps)
        if self.postprocess.image_score == "scorer":
            if out.image_scores is None:
                raise BundleError("the manifest's image-score rule is 'scorer' but the scorer gave no image "
                                  "scores; re-export the bundle")
            image = out.image_scores
        else:
            image = image_scores_from_maps(full, self.postprocess)  # type: ignore[arg-type]
        t3 = time.perf_counter()
        self.timer.add("scoring", t2 - t1)
        self.timer.add("postprocess", t3 - t2)
        image_scores = np.asarray(image, np.float32)
        return Prediction(
            image_scores=image_scores,
            anomaly_maps=full,
            normalized_scores=calibration.normalise_scores(image_scores, self.image_threshold, self.image_scale),
            labels=image_scores >= self.image_threshold,
            threshold=self.image_threshold,
        )

    def predict_tiled(self, images: Sequence[np.ndarray]) -> Prediction:
        """Score working images ``(H_i, W_i, C)`` uint8 of a tiled bundle: their tiles go through the
        graph and the scorer in chunks of :attr:`tile_batch` (tiles of consecutive images share a
        chunk), each image's tile maps are stitched, smoothed and scored as soon as its last tile is
        done, so only the images whose tiles are in flight hold a canvas."""
        if self.runner is None:
            raise ConfigError("this predictor was opened without its graph (graph=False); it scores graph outputs "
                              "only (score_outputs)")
        cfg = self.preprocess
        th, tw = cfg.input_size
        n = len(images)
        scores = np.zeros(n, np.float32)
        maps: list[np.ndarray] = [np.zeros((0, 0), np.float32)] * n
        layouts = [tile_layout(img.shape[:2], cfg) for img in images]
        stitchers: dict[int, Stitcher] = {}
        tile_scores = [np.full(layout.count, -np.inf, np.float32) for layout in layouts]
        done = [0] * n
        buf: list[np.ndarray] = []
        owners: list[tuple[int, int]] = []

        def finish(i: int) -> None:
            t0 = time.perf_counter()
            if self.tile_maps is not None:
                with self._one_blas_thread():
                    maps[i] = smooth(stitchers.pop(i).result(), self.postprocess)
            if self.coarse_maps:
                maps[i] = coarse_map(layouts[i], tile_scores[i])
            if self.postprocess.image_score == "scorer":
                scores[i] = float(tile_scores[i].max())  # the image's score is its most anomalous tile's
            else:
                scores[i] = float(image_scores_from_maps(maps[i][None], self.postprocess)[0])
            self.timer.add("postprocess", time.perf_counter() - t0)

        def run_chunk() -> None:
            t0 = time.perf_counter()
            outputs = self.runner.run(stack(buf))  # type: ignore[union-attr]
            t1 = time.perf_counter()
            out = self.scorer(outputs, np.array([j for _, j in owners]))
            t2 = time.perf_counter()
            self.timer.add("graph", t1 - t0)
            self.timer.add("scoring", t2 - t1)
            if self.postprocess.image_score == "scorer":
                if out.image_scores is None:
                    raise BundleError("the manifest's image-score rule is 'scorer' but the scorer gave no image "
                                      "scores; re-export the bundle")
                for (i, j), v in zip(owners, np.asarray(out.image_scores, np.float32)):
                    tile_scores[i][j] = v
            if self.tile_maps is not None:
                if out.patch_maps is None:
                    raise BundleError("the manifest promises a map but the scorer gave none; re-export the bundle")
                with self._one_blas_thread():
                    tiles = self.tile_maps(out.patch_maps)
                for (i, j), tile in zip(owners, tiles):
                    if i not in stitchers:
                        stitchers[i] = Stitcher(layouts[i])
                    stitchers[i].add(j, tile)
            self.timer.add("postprocess", time.perf_counter() - t2)
            self.tiles_scored += len(buf)
            for i, _ in owners:
                done[i] += 1
            for i in sorted({i for i, _ in owners}):
                if done[i] == layouts[i].count:
                    finish(i)
            buf.clear()
            owners.clear()

        for i, (img, layout) in enumerate(zip(images, layouts)):
            for j, (y, x) in enumerate(layout.offsets()):
                t0 = time.perf_counter()
                buf.append(normalise_pixels(img[y:y + th, x:x + tw], cfg))
                owners.append((i, j))
                self.timer.add("preprocess", time.perf_counter() - t0)
                if len(buf) == self.tile_batch:
                    run_chunk()
        if buf:
            run_chunk()
        return Prediction(
            image_scores=scores,
            anomaly_maps=maps if self.tile_maps is not None or self.coarse_maps else None,
            normalized_scores=calibration.normalise_scores(scores, self.image_threshold, self.image_scale),
            labels=scores >= self.image_threshold,
            threshold=self.image_threshold,
        )

    def normalized_maps(self, maps: np.ndarray) -> np.ndarray:
        """Raw maps -> ``[0, 1]`` with the pixel threshold at 0.5."""
        if self.pixel_threshold is None:
            raise BundleError("this bundle has no pixel calibration (calibration.pixel): "
                              + ("its method scores images only, without maps" if not self.has_map else "re-export it"))
        return calibration.normalise_scores(maps, float(self.pixel_threshold), float(self.pixel_scale))

    def _decode_one(self, p: str | Path) -> tuple[str, np.ndarray | None, str | None, tuple[int, int] | None, str | None]:
        t0 = time.perf_counter()
        size = note = None
        try:
            img = decode_image(p)
            size = img.size
            note = img.info.get("adx_note")
            tensor: np.ndarray | None = self.prepare(img)
            error = None
        except ImageDecodeError as exc:
            tensor, error = None, exc.reason
        except ConfigError as exc:  # a tiled bundle and an image smaller than a tile: this image only
            tensor, error = None, str(exc)
        self.timer.add("preprocess", time.perf_counter() - t0)
        return str(p), tensor, error, size, note

    def _decoded(self, paths: Iterable[str | Path], ahead: int) -> Iterator[tuple[Any, ...]]:
        """Decoded and preprocessed files in input order; with ``ahead > 0`` one worker thread
        decodes up to ``ahead`` files beyond the one being scored (Pillow and numpy release the
        GIL while they work), so decoding overlaps the graph and the scorer."""
        if ahead < 1:
            yield from (self._decode_one(p) for p in paths)
            return
        pool = ThreadPoolExecutor(1, thread_name_prefix="adx-decode")
        queue: deque[Future[tuple[Any, ...]]] = deque()
        try:
            for p in paths:
                queue.append(pool.submit(self._decode_one, p))
                if len(queue) > ahead:
                    yield queue.popleft().result()
            while queue:
                yield queue.popleft().result()
        finally:
            for f in queue:
                f.cancel()
            pool.shutdown(wait=True)

    def predict_files(self, paths: Iterable[str | Path], batch_size: int = 8,
                      keep_maps: bool = False, decode_ahead: int | None = None) -> Iterator[FileResult]:
        """Score files in batches; a file that fails to decode yields a result with ``error`` set
        and the rest of its batch is still scored. Results come in input order.

        ``decode_ahead``: files decoded in a background thread while the current batch is scored
        (``None``: the predictor's ``decode_ahead``, by default one batch ahead; 0: decode on the
        calling thread). Decoding ahead overlaps Pillow's decode with the graph and the scoring, which
        pays most at small batches, where decoding is a large part of each batch's time."""
        if batch_size < 1:
            raise ConfigError(f"batch size must be >= 1, got {batch_size}")
        if decode_ahead is None:
            decode_ahead = self.decode_ahead
        ahead = batch_size if decode_ahead is None else int(decode_ahead)
        if isinstance(paths, Sized) and len(paths) <= batch_size:
            ahead = 0  # one batch: nothing to overlap with, so no thread
        pending: list[tuple[str, np.ndarray | None, str | None, tuple[int, int] | None, str | None]] = []

        def flush() -> Iterator[FileResult]:
            good = [t for _, t, _, _, _ in pending if t is not None]
            pred = self.predict_prepared(good) if good else None
            j = 0
            for path, tensor, error, size, note in pending:
                if tensor is None:
                    yield FileResult(path=path, error=error)
                    continue
                assert pred is not None
                if not math.isfinite(float(pred.image_scores[j])):
                    yield FileResult(path=path, size=size, error=f"the model gave a non-finite score "
                                     f"({float(pred.image_scores[j])}) for this image; it was not labelled")
                    j += 1
                    continue
                yield FileResult(
                    path=path,
                    image_score=float(pred.image_scores[j]),
                    normalized_score=float(pred.normalized_scores[j]),
                    label=bool(pred.labels[j]),
                    anomaly_map=pred.anomaly_maps[j] if keep_maps and pred.anomaly_maps is not None else None,
                    size=size,
                    note=note,
                )
                j += 1
            pending.clear()

        for item in self._decoded(paths, ahead):
            pending.append(item)
            if len(pending) >= batch_size:
                yield from flush()
        if pending:
            yield from flush()


def _faiss_has_gpu() -> bool:
    try:
        import faiss  # noqa: PLC0415 - optional, only to decide 'auto'
    except ImportError:
        return False
    return hasattr(faiss, "get_num_gpus") and faiss.get_num_gpus() > 0

