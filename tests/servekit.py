"""A serving environment for the Triton tests, installed the way a user installs it.

``adexport[serve]`` pulls nvidia-pytriton, which pins numpy < 2, so it does not go into the
development environment (``dev``): the tests build ``.venv-serve`` at the repository root instead,
``python -m venv`` from this interpreter's base Python and ``pip install -e '.[cpu,serve]'`` from
PyPI (about a minute; reused while pyproject.toml is unchanged). Where the current interpreter
already has nvidia-pytriton and tritonclient it is used as it is. Commands run in it through
:func:`run_py`; every server they start listens on 127.0.0.1.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
VENV = ROOT / ".venv-serve"


def _stamp() -> str:
    return hashlib.sha256((ROOT / "pyproject.toml").read_bytes() + sys.version.encode()).hexdigest()


def serve_python() -> Path:
    """The python of an environment with ``adexport[cpu,serve]``; skips the test where none can be made."""
    if sys.platform != "linux" or os.uname().machine != "x86_64":
        pytest.skip("nvidia-pytriton (Triton's server binary) exists for Linux x86_64 only")
    if importlib.util.find_spec("pytriton") and importlib.util.find_spec("tritonclient"):
        return Path(sys.executable)
    python = VENV / "bin" / "python"
    stamp = VENV / ".adx-stamp"
    if python.is_file() and stamp.is_file() and stamp.read_text() == _stamp():
        return python
    try:
        subprocess.run([sys.executable, "-m", "venv", "--clear", str(VENV)], check=True, capture_output=True, timeout=300)
        subprocess.run([str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check", "-e",
                        f"{ROOT}[cpu,serve]"], check=True, capture_output=True, text=True, timeout=1200)
    except subprocess.CalledProcessError as exc:
        pytest.skip(f"could not build the serving venv {VENV} (pip install -e '.[cpu,serve]'): "
                    f"{(exc.stderr or '').strip().splitlines()[-1:]}")
    stamp.write_text(_stamp())
    return python


def run_py(python: Path, code: str, *args: str, timeout: float = 300) -> dict:
    """Run ``code`` in the serving environment; it prints one JSON object last, which is returned."""
    proc = subprocess.run([str(python), "-c", code, *args], capture_output=True, text=True, timeout=timeout,
                          cwd=ROOT)
    if proc.returncode != 0:
        raise AssertionError(f"serving-venv script failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def free_ports(n: int) -> list[int]:
    socks = []
    for _ in range(n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


#: A script for the serve Python: every config.pbtxt under a repository parsed by tritonclient's
#: ModelConfig protobuf (Triton's model_config.proto), printed as JSON by model folder.
CONFIGS_AS_JSON = r"""
import json, sys
from pathlib import Path
from google.protobuf import json_format, text_format
from tritonclient.grpc import model_config_pb2
out = {}
for config in sorted(Path(sys.argv[1]).glob("*/config.pbtxt")):
    msg = text_format.Parse(config.read_text(), model_config_pb2.ModelConfig())
    out[config.parent.name] = json_format.MessageToDict(msg, preserving_proto_field_name=True)
print(json.dumps(out))
"""
