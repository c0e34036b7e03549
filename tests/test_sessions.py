"""Execution providers: the one asked for, or a refusal that says why; never a silent fallback."""

from __future__ import annotations

from pathlib import Path

import pytest

from adx_runtime import sessions
from adx_runtime.errors import DependencyError, ProviderError
from adx_runtime.predictor import Predictor


def test_cpu_session_runs_on_cpu(bundle: Path) -> None:
    assert Predictor.load(bundle, device="cpu").providers == ["CPUExecutionProvider"]


@pytest.mark.parametrize("device,provider", [("cuda", "CUDAExecutionProvider"), ("tensorrt", "TensorrtExecutionProvider")])
def test_missing_gpu_provider_is_refused(bundle: Path, device: str, provider: str) -> None:
    import onnxruntime as ort

    if provider in ort.get_available_providers():
        pytest.skip(f"{provider} is available here")
    extra = "gpu" if device == "cuda" else "gpu,tensorrt"
    with pytest.raises(ProviderError, match=f"--device {device} needs ONNX Runtime's {provider}.*adexport\\[{extra}\\]"):
        Predictor.load(bundle, device=device, bank_device="cpu")


def test_provider_dropped_by_onnxruntime_is_refused(bundle: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """ONNX Runtime lists CUDA but starts the session on the CPU (what happens when CUDA libraries
    fail to load): adexport refuses instead of running on the CPU."""
    import onnxruntime as ort

    class FallbackSession:
        def __init__(self, *args, **kwargs):
            pass

        def get_providers(self):
            return ["CPUExecutionProvider"]

    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    monkeypatch.setattr(ort, "InferenceSession", FallbackSession)
    with pytest.raises(ProviderError, match="asked for CUDAExecutionProvider but ONNX Runtime started the session on"):
        sessions.create_session(bundle / "model.onnx", "cuda")


def test_unknown_device(bundle: Path) -> None:
    with pytest.raises(ProviderError, match="device 'npu' is not known; valid: cpu, cuda, tensorrt"):
        Predictor.load(bundle, device="npu")


def test_faiss_gpu_requested_without_gpu_is_refused(bundle: Path) -> None:
    import faiss

    if hasattr(faiss, "get_num_gpus") and faiss.get_num_gpus() > 0:
        pytest.skip("a FAISS GPU is available here")
    with pytest.raises(ProviderError, match="FAISS GPU index was asked for.*--bank-device cpu"):
        Predictor.load(bundle, bank_device="cuda")


def test_auto_bank_device_on_cpu_searches_on_the_cpu(bundle: Path) -> None:
    assert Predictor.load(bundle).scorer.backend == "numpy (exact search of the FAISS Flat bank)"


def test_both_onnxruntime_packages_installed_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sessions, "installed_onnxruntime_dists", lambda: ["onnxruntime", "onnxruntime-gpu"])
    with pytest.raises(DependencyError, match="both onnxruntime and onnxruntime-gpu.*pip uninstall"):
        sessions.import_onnxruntime()


def test_missing_onnxruntime_names_the_extras(monkeypatch: pytest.MonkeyPatch) -> None:
    import builtins

    real_import = builtins.__import__
    monkeypatch.setattr(sessions, "installed_onnxruntime_dists", lambda: [])

    def fake_import(name, *args, **kwargs):
        if name == "onnxruntime":
            raise ImportError("No module named 'onnxruntime'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(sessions.importlib, "import_module",
                        lambda name: fake_import(name) if name == "onnxruntime" else real_import(name))
    with pytest.raises(DependencyError, match=r"adexport\[cpu\]'.*adexport\[gpu\]'"):
        sessions.import_onnxruntime()


@pytest.mark.gpu
def test_cuda_session_on_a_gpu_box(bundle: Path) -> None:
    """Runs where onnxruntime-gpu sees a GPU (skipped elsewhere)."""
    import onnxruntime as ort

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        pytest.skip("no CUDAExecutionProvider here")
    p = Predictor.load(bundle, device="cuda")
    assert p.providers[0] == "CUDAExecutionProvider"
