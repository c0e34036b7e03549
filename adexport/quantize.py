"""``adx export --quantize int8``: ONNX Runtime static quantization of the exported graph.

QDQ format (QuantizeLinear/DequantizeLinear pairs around each quantized op, which ONNX Runtime's CPU
provider fuses into integer kernels), int8 weights per output channel, uint8 activations with
ranges measured (ONNX Runtime's MinMax calibration) on training images preprocessed exactly as the
method does. Only the compute-heavy ops are quantized (convolutions and matrix products): the rest
(resizes, pooling, concatenations, the activation clips) stay in float32. A quantized bilinear Resize changed its
output size on ONNX Runtime 1.32 (31 instead of 32 rows), so Resize is never quantized. The
convolutions that read the input image (the stem) stay in float32 too: on the demo PatchCore backbone that
alone cut the mean feature error from 14% to 11% of the mean feature (max error 18% -> 14%).

The parity check of the bundle (torch float32 against the int8 runtime) decides whether it is
written; :func:`quantize_int8` only builds the graph and describes it.
"""

from __future__ import annotations

import contextlib
import io
import logging
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from adx_runtime.errors import DependencyError, ExportError
from adexport.data import image_tiles
from adx_runtime.preprocess import PreprocessConfig, load_image

QUANTIZE = ("int8",)
#: ONNX op types that are quantized; every other op type stays in float32.
INT8_OP_TYPES = ("Conv", "MatMul", "Gemm")
#: Training images the int8 activation ranges are measured on (``--quantize-images``). Not the
#: held-out images of the score thresholds (the manifest's ``calibration``): a different thing.
DEFAULT_QUANTIZE_IMAGES = 32
_QDQ = ("QuantizeLinear", "DequantizeLinear")


def quantize_image_subset(paths: Sequence[Path], n: int) -> list[Path]:
    """``n`` images spread evenly over ``paths`` (sorted), so the activation ranges see the whole set."""
    paths = sorted(paths)
    if n >= len(paths):
        return list(paths)
    return [paths[i] for i in np.linspace(0, len(paths) - 1, n).round().astype(int)]


def _import_quantization() -> Any:
    try:
        from onnxruntime import quantization  # noqa: PLC0415
    except ImportError as exc:
        raise DependencyError(f"int8 export needs ONNX Runtime's quantization tool ({exc}); it ships with "
                              "onnxruntime: pip install 'adexport[cpu,train]'") from None
    return quantization


def quantize_int8(float_graph: Path, out: Path, images: Sequence[Path], preprocess: PreprocessConfig,
                  input_name: str) -> dict[str, Any]:
    """Quantize ``float_graph`` into ``out``, activation ranges measured on ``images``; returns the
    manifest's ``quantization`` section (scheme, ``calibration``: how the ranges were measured, op types
    left in float). That key keeps ONNX Runtime's word: it sits inside ``quantization`` and existing
    bundles have it."""
    q = _import_quantization()
    if not images:
        raise ExportError("int8 activation ranges need training images, got none; pass --quantize-images N >= 1 "
                          "and keep the training data where `adx train` read it")

    class Reader(q.CalibrationDataReader):
        def __init__(self) -> None:
            self._items: Iterator[Path] = iter(images)

        def get_next(self) -> dict[str, np.ndarray] | None:
            path = next(self._items, None)
            if path is None:
                return None
            if preprocess.tiling is not None:  # a tiled graph sees tiles: ranges come from all of the image's tiles
                return {input_name: np.stack(image_tiles(path, preprocess))}
            return {input_name: load_image(path, preprocess)[None]}

    with tempfile.TemporaryDirectory(prefix="adx-int8-") as tmp, _quiet():
        prepared = Path(tmp) / "prepared.onnx"
        # Shape inference and constant folding first, as ONNX Runtime recommends before quantizing.
        q.shape_inference.quant_pre_process(str(float_graph), str(prepared), skip_symbolic_shape=True)
        kept = _input_convs(prepared, input_name)
        q.quantize_static(
            str(prepared), str(out), Reader(), quant_format=q.QuantFormat.QDQ, per_channel=True,
            activation_type=q.QuantType.QUInt8, weight_type=q.QuantType.QInt8,
            calibrate_method=q.CalibrationMethod.MinMax, op_types_to_quantize=list(INT8_OP_TYPES),
            nodes_to_exclude=kept,
        )
    quantized, left = _op_census(out)
    return {
        "dtype": "int8",
        "tool": "onnxruntime.quantization.quantize_static",
        "format": "QDQ",
        "weights": "int8, symmetric, per output channel",
        "activations": "uint8, asymmetric, per tensor",
        "calibration": {"method": "MinMax", "images": len(images), "image_names": [Path(p).name for p in images],
                        "preprocess": "the bundle's input contract (same code as inference)"},
        "op_types_quantized": quantized,
        "op_types_in_float": left,
        "nodes_in_float": kept,
    }


def _input_convs(path: Path, input_name: str) -> list[str]:
    """Names of the convolutions whose input comes from the graph input through no other
    convolution (the stem; padding or casts in between do not count)."""
    import onnx  # noqa: PLC0415

    from_input = {input_name}
    convs = []
    for node in onnx.load(str(path)).graph.node:  # ONNX lists nodes in topological order
        if not from_input.intersection(node.input):
            continue
        if node.op_type == "Conv":
            convs.append(node.name)
        else:
            from_input.update(node.output)
    return convs


def _op_census(path: Path) -> tuple[dict[str, int], dict[str, int]]:
    """Count op types that run on dequantized inputs (quantized) and those that do not (float)."""
    import onnx  # noqa: PLC0415

    model = onnx.load(str(path))
    made_by = {o: n.op_type for n in model.graph.node for o in n.output}
    quantized: Counter[str] = Counter()
    left: Counter[str] = Counter()
    for node in model.graph.node:
        if node.op_type in _QDQ:
            continue
        fed_int8 = any(made_by.get(i) == "DequantizeLinear" for i in node.input)
        (quantized if fed_int8 and node.op_type in INT8_OP_TYPES else left)[node.op_type] += 1
    return dict(sorted(quantized.items())), dict(sorted(left.items()))


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """The quantization tool logs and prints progress chatter that is not actionable for users."""
    logger = logging.getLogger()
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        logger.setLevel(level)
