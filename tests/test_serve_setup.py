"""`adx serve` set-up without a server: the missing extra, the Python-backend stub's libpython trap, and
client options that cannot work. Fast; no process is started."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from adx_cli.app import app
from adx_runtime import serve
from adx_runtime.client import RemoteModel
from adx_runtime.errors import ConfigError, DependencyError

runner = CliRunner()


@pytest.mark.skipif(importlib.util.find_spec("pytriton") is not None, reason="nvidia-pytriton is installed here")
def test_serve_without_the_extra_says_which_to_install(bundle: Path) -> None:
    result = runner.invoke(app, ["serve", str(bundle)])
    assert result.exit_code == 1
    message = result.output.strip()
    assert message.count("\n") == 0 and "pip install 'adexport[serve]'" in message and "Traceback" not in message


@pytest.fixture
def install(tmp_path: Path) -> serve.TritonInstall:
    minor = f"{sys.version_info.major}.{sys.version_info.minor}"
    stub = tmp_path / "tritonserver" / "python_backend_stubs" / minor / "triton_python_backend_stub"
    stub.parent.mkdir(parents=True)
    stub.write_bytes(b"")
    return serve.TritonInstall(tmp_path / "tritonserver", tmp_path / "libs")


def _fake_system(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, version: str | None) -> Path:
    minor = f"{sys.version_info.major}.{sys.version_info.minor}"
    lib = Path(f"/usr/lib/x86_64-linux-gnu/libpython{minor}.so.1.0")
    python = tmp_path / "bin" / f"python{minor}"
    if version is not None:
        python.parent.mkdir(parents=True, exist_ok=True)
        python.write_text("")
    monkeypatch.setattr(serve, "linked_libpython", lambda stub: (lib.name, lib))
    monkeypatch.setattr(serve, "system_python_for", lambda lib, minor: python)
    monkeypatch.setattr(serve, "python_version_of", lambda exe: version)
    return python


def test_a_python_other_than_the_stubs_libpython_without_a_system_python_is_refused_in_one_line(
        install: serve.TritonInstall, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    _fake_system(monkeypatch, tmp_path, None)
    with pytest.raises(DependencyError) as err:
        serve.stub_environment(install, tmp_path / "work")
    message = str(err.value)
    assert "\n" not in message and sys.version.split()[0] in message and "libpython" in message
    assert "_recursion_count" in message and "-m venv" in message and "adexport[cpu,serve]" in message


def test_the_same_python_as_the_stubs_runs_the_models_in_this_environment(
        install: serve.TritonInstall, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    _fake_system(monkeypatch, tmp_path, sys.version)
    env = serve.stub_environment(install, tmp_path / "work")
    assert env.bin_dir == Path(sys.prefix) / "bin" and env.note is None


def test_another_build_of_the_same_python_runs_the_models_on_the_system_python(
        install: serve.TritonInstall, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    python = _fake_system(monkeypatch, tmp_path, "3.11.0 (main) [GCC]")
    made = []
    monkeypatch.setattr(serve, "_bridge", lambda exe, path: made.append((exe, path)) or path / "bin")
    env = serve.stub_environment(install, tmp_path / "work")
    assert made == [(python, tmp_path / "work" / "stub-python")] and env.bin_dir == tmp_path / "work" / "stub-python" / "bin"
    assert sys.version.split()[0] in env.note and "3.11.0" in env.note and str(python) in env.note


def test_bridge_environment_reaches_this_environments_packages(tmp_path: Path) -> None:
    """The system interpreter with the bridge's .pth imports adx_runtime and numpy from here."""
    minor = f"{sys.version_info.major}.{sys.version_info.minor}"
    system = Path(f"/usr/bin/python{minor}")
    if not system.is_file():
        pytest.skip(f"no {system} on this machine")
    import subprocess

    bin_dir = serve._bridge(system, tmp_path / "bridge")
    out = subprocess.run([str(bin_dir / "python3"), "-c", "import sys, adx_runtime, numpy; print(sys.prefix)"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == str(tmp_path / "bridge")


def test_infer_server_refuses_options_that_act_locally(bundle: Path, dataset: Path) -> None:
    image = next((dataset / "weave" / "test" / "good").glob("*.png"))
    result = runner.invoke(app, ["infer", str(bundle), str(image), "--server", "http://127.0.0.1:9", "--threshold", "1"])
    assert result.exit_code == 1 and "--threshold act on local inference" in result.output


def test_a_server_url_must_be_http_or_grpc_with_a_port() -> None:
    with pytest.raises(ConfigError, match="http://HOST:PORT or grpc://HOST:PORT"):
        RemoteModel("ftp://127.0.0.1:8000", "m")
