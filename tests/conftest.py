"""Shared fixtures: a small generated dataset, a tiny PatchCore fitted on it, and its bundles.

Everything is seeded, 64 px, with timm's ``test_efficientnet`` (82k parameters, random weights),
so the whole suite runs in about a minute on two CPU cores.
"""

from __future__ import annotations

import contextlib
import io
import os
import warnings
from pathlib import Path

import pytest

# timm must never reach for the network in tests (it would hang where there is none).
os.environ.setdefault("HF_HUB_OFFLINE", "1")

def onnx_bytes(graph, example, output_names: list[str] | None = None) -> bytes:
    """``graph`` traced to ONNX (opset 17, TorchScript exporter) at ``example``, batch axis dynamic
    on the input and on every named output; the tracer's chatter silenced."""
    import torch

    axes = {"image": {0: "batch"}, **{name: {0: "batch"} for name in output_names or []}}
    buf = io.BytesIO()
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        torch.onnx.export(graph, (example,), buf, input_names=["image"], output_names=output_names,
                          dynamic_axes=axes, opset_version=17, do_constant_folding=True, dynamo=False)
    return buf.getvalue()


CATEGORY = "weave"
#: The tiny backbone setting of the bank methods (PatchCore's test options); tests that need one
#: bank fit use it directly.
TINY = {"backbone": "test_efficientnet", "weights": "random", "image_size": 64}


def __getattr__(name: str) -> dict:
    """``TEST_OPTIONS`` (every registered method's tiny settings, from its registry entry) and
    ``TINY_TRAINED`` (those of the trained methods), computed on first use: importing the registry
    loads torch and timm, which the torch-free tests in this suite do not need."""
    if name in ("TEST_OPTIONS", "TINY_TRAINED"):
        from adexport.methods import METHODS

        options = {m: dict(e.test_options) for m, e in METHODS.items()}
        if name == "TINY_TRAINED":
            return {m: o for m, o in options.items() if METHODS[m].trained}
        return options
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


@pytest.fixture(scope="session")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from adx_synth import generate_demo_dataset

    root = tmp_path_factory.mktemp("data")
    generate_demo_dataset(root, [CATEGORY], n_train=16, n_test_good=4, n_test_per_defect=2, image_size=64, seed=0)
    return root


@pytest.fixture(scope="session")
def fitted(dataset: Path):
    from adexport.fit_pipeline import train

    return train(dataset, CATEGORY, "patchcore", options=TINY, holdout=0.25)


@pytest.fixture(scope="session")
def model_dir(fitted, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from adexport.fitted import save_fitted

    return save_fitted(fitted, tmp_path_factory.mktemp("models") / "tiny")


@pytest.fixture(scope="session")
def bundle(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A FAISS-bank bundle, exported from the saved folder (so save/load is on the path)."""
    from adexport.export import export_bundle

    out = tmp_path_factory.mktemp("bundles") / "faiss"
    export_bundle(model_dir, out)
    return out


@pytest.fixture(scope="session")
def npz_bundle(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from adexport.export import export_bundle

    out = tmp_path_factory.mktemp("bundles") / "npz"
    export_bundle(model_dir, out, bank="npz")
    return out


@pytest.fixture
def bundle_copy(bundle: Path, tmp_path: Path) -> Path:
    """A private copy of the bundle that a test may tamper with."""
    import shutil

    dst = tmp_path / "bundle"
    shutil.copytree(bundle, dst)
    return dst


def list_test_images(dataset: Path) -> list[Path]:
    return sorted((dataset / CATEGORY / "test").glob("*/*.png"))


@pytest.fixture(scope="session")
def padim_bundle(dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny PaDiM bundle (the ``gaussian`` scoring kind), next to the PatchCore one (``knn``)."""
    from adexport.export import export_bundle
    from adexport.fit_pipeline import train

    fitted = train(dataset, CATEGORY, "padim", options={**TINY, "n_features": 40}, holdout=0.25)
    out = tmp_path_factory.mktemp("bundles") / "padim"
    export_bundle(fitted, out)
    return out


@pytest.fixture(scope="session", autouse=True)
def written_manifests_meet_the_schema():
    """Every finished manifest that ``export_bundle`` writes in this test process is validated
    against the shipped ``manifest.schema.json`` (with the ``jsonschema`` package of the ``dev``
    extra; without it nothing is checked), so the schema is tested on every bundle the suite
    writes, of every method and option. The manifest written before the parity check is not yet a
    bundle and is not checked; hand-edited manifests are the tests' own business."""
    try:
        import jsonschema
    except ImportError:
        yield
        return
    import json
    from importlib import resources

    import adexport.export as export_mod
    from adx_runtime.bundle import MANIFEST

    schema = json.loads(resources.files("adx_runtime.bundle").joinpath("manifest.schema.json").read_text())
    validator = jsonschema.Draft202012Validator(schema)
    original = export_mod._write_manifest

    def checked(bundle_dir: Path, manifest: dict) -> None:
        original(bundle_dir, manifest)
        if isinstance(manifest.get("parity"), dict):
            written = json.loads((Path(bundle_dir) / MANIFEST).read_text())
            error = jsonschema.exceptions.best_match(validator.iter_errors(written))
            if error is not None:
                raise AssertionError(f"manifest written for {manifest.get('method')} does not meet "
                                     f"manifest.schema.json at {error.json_path}: {error.message}")

    export_mod._write_manifest = checked
    yield
    export_mod._write_manifest = original
