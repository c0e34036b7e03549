"""ONNX Runtime sessions on the device the user asked for, and nothing else.

ONNX Runtime silently falls back to the CPU when a GPU provider fails to load (missing CUDA
libraries, no GPU). adexport refuses instead: the provider that actually runs the first node
must be the one requested. The rest of the runtime reaches these sessions only through
:class:`adx_runtime.runners.OnnxRuntimeRunner`.
"""

from __future__ import annotations

import importlib
import importlib.metadata
from pathlib import Path
from typing import Any

from adx_runtime.errors import DependencyError, ProviderError

DEVICES = {
    "cpu": "CPUExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
}

_ORT_DISTS = ("onnxruntime", "onnxruntime-gpu")


def installed_onnxruntime_dists() -> list[str]:
    found = []
    for dist in _ORT_DISTS:
        try:
            importlib.metadata.version(dist)
            found.append(dist)
        except importlib.metadata.PackageNotFoundError:
            pass
    return found


def import_onnxruntime() -> Any:
    """Import onnxruntime, or explain which extra to install (and refuse a double install)."""
    dists = installed_onnxruntime_dists()
    if len(dists) > 1:
        raise DependencyError(
            "both onnxruntime and onnxruntime-gpu are installed; they write the same 'onnxruntime' "
            "module over each other, so which one you get is an accident. Fix: "
            "pip uninstall -y onnxruntime onnxruntime-gpu, then pip install 'adexport[cpu]' (CPU) "
            "or 'adexport[gpu]' (NVIDIA GPU)."
        )
    try:
        return importlib.import_module("onnxruntime")
    except ImportError as exc:
        raise DependencyError(
            f"ONNX Runtime is not installed ({exc}). Install the runtime extra for this machine: "
            "pip install 'adexport[cpu]' on a CPU machine, or 'adexport[gpu]' on an NVIDIA GPU box."
        ) from None


def check_device(device: str) -> str:
    if device not in DEVICES:
        raise ProviderError(f"device {device!r} is not known; valid: {', '.join(DEVICES)}")
    return DEVICES[device]


def require_provider(device: str) -> str:
    """The provider name for ``device``, refusing one this ONNX Runtime build does not have."""
    ort = import_onnxruntime()
    provider = check_device(device)
    available = ort.get_available_providers()
    if provider not in available:
        extra = {"cpu": "adexport[cpu]", "cuda": "adexport[gpu] (onnxruntime-gpu, CUDA 13)"}.get(
            device, "adexport[gpu,tensorrt] (onnxruntime-gpu and TensorRT 10, CUDA 13)")
        raise ProviderError(
            f"--device {device} needs ONNX Runtime's {provider}, which this ONNX Runtime build lacks "
            f"(available: {', '.join(available)}). Install {extra}, or choose --device "
            f"{' / '.join(d for d, p in DEVICES.items() if p in available) or 'cpu'}."
        )
    return provider


def available_devices() -> list[str]:
    ort = import_onnxruntime()
    have = set(ort.get_available_providers())
    return [d for d, p in DEVICES.items() if p in have]


def create_session(
    onnx_path: str | Path,
    device: str = "cpu",
    *,
    threads: int = 0,
    trt_options: dict[str, Any] | None = None,
) -> Any:
    """An ``onnxruntime.InferenceSession`` whose first provider is the requested one.

    Args:
        device: ``cpu``, ``cuda`` or ``tensorrt``.
        threads: intra-op threads (0 = ONNX Runtime's default, all cores).
        trt_options: TensorRT provider options (engine cache path, fp16, shape profiles).

    Raises:
        ProviderError: the provider is not in this ONNX Runtime build, or it failed to load.
    """
    ort = import_onnxruntime()
    provider = require_provider(device)
    providers: list[Any]
    if device == "tensorrt":
        providers = [(provider, dict(trt_options or {})), "CUDAExecutionProvider", "CPUExecutionProvider"]
    elif device == "cuda":
        providers = [provider, "CPUExecutionProvider"]
    else:
        providers = [provider]
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = threads
    options.log_severity_level = 3  # the fallback warning is replaced by our own check below
    # ONNX Runtime's idle threads spin for a while after each run; FAISS's OpenMP threads then
    # fight them for the cores. Measured on 2 cores, batch 1: graph + kNN 68 ms spinning, 34 ms not.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.add_session_config_entry("session.inter_op.allow_spinning", "0")
    try:
        session = ort.InferenceSession(str(onnx_path), sess_options=options, providers=providers)
    except Exception as exc:  # ORT raises its own exception classes (Fail, InvalidGraph, ...)
        raise ProviderError(f"ONNX Runtime could not open {str(onnx_path)!r} on {device}: {exc}") from None
    active = session.get_providers()
    if not active or active[0] != provider:
        raise ProviderError(
            f"asked for {provider} but ONNX Runtime started the session on {active} instead "
            "(the GPU provider failed to load: check the NVIDIA driver, CUDA 13 and cuDNN libraries, "
            "e.g. with `python -c \"import onnxruntime as o; o.preload_dlls()\"`). Refusing to run on "
            "a device you did not ask for."
        )
    return session


def tensorrt_provider_options(engine_dir: str | Path, profile: dict[str, str], *, fp16: bool,
                              prefix: str) -> dict[str, Any]:
    """Options of ONNX Runtime's TensorRT provider that build (at export) and read (at load) the
    engines cached in ``engine_dir`` under ``prefix``, for the shape ``profile`` (min/opt/max)."""
    return {
        "trt_engine_cache_enable": True,
        "trt_engine_cache_path": str(engine_dir),
        "trt_engine_cache_prefix": prefix,
        "trt_fp16_enable": fp16,
        "trt_profile_min_shapes": profile["min"],
        "trt_profile_opt_shapes": profile["opt"],
        "trt_profile_max_shapes": profile["max"],
    }
