"""`make setup`'s torch install: the CPU wheel index first on a machine without an NVIDIA GPU, the
default index only if that index cannot be reached (quickly), TORCH_INDEX for GPU users.

pip itself is replaced by a recorder (nothing is installed); the reachability check is real, against
an index served on 127.0.0.1, a closed port, and a port that accepts but never answers.
"""

from __future__ import annotations

import http.server
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tests.conftest import ROOT
from tests.project import free_port

SCRIPT = ROOT / "scripts" / "install_torch.sh"
SPEC = "torch==2.13.0"


@pytest.fixture
def fake(tmp_path):
    """A PATH holding only a python wrapper whose `-m pip install/config` is recorded, not run."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = tmp_path / "pip.log"
    py = bin_dir / "python"
    py.write_text(f"""#!/bin/sh
if [ "$1" = "-m" ] && [ "$2" = "pip" ]; then
    [ "$3" = "install" ] && echo "$*" >> "{log}"
    [ "$3" = "install" ] && exit 0
    exit 1
fi
exec "{sys.executable}" "$@"
""")
    py.chmod(0o755)

    def run(index: str = "", cpu_index: str | None = None, extra_env: dict | None = None):
        env = {"PATH": str(bin_dir), "HOME": str(tmp_path)}
        if cpu_index:
            env["NEAT_TORCH_CPU_INDEX"] = cpu_index
        env.update(extra_env or {})
        start = time.monotonic()
        proc = subprocess.run(["/bin/sh", str(SCRIPT), str(py), SPEC, index], env=env, capture_output=True,
                              text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr
        calls = log.read_text().splitlines() if log.exists() else []
        return proc.stdout, calls, time.monotonic() - start

    run.bin_dir = bin_dir
    return run


@pytest.fixture
def cpu_index(tmp_path):
    """A stand-in for https://download.pytorch.org/whl/cpu on a loopback port."""
    (tmp_path / "site" / "cpu" / "torch").mkdir(parents=True)
    (tmp_path / "site" / "cpu" / "torch" / "index.html").write_text("<html><a href='torch.whl'>torch</a></html>")
    handler = lambda *a: http.server.SimpleHTTPRequestHandler(*a, directory=str(tmp_path / "site"))  # noqa: E731
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/cpu"
    server.shutdown()


def test_without_gpu_the_cpu_index_is_asked_first_with_the_default_as_extra(fake, cpu_index):
    out, calls, _ = fake(cpu_index=cpu_index)
    assert calls == [f"-m pip install -q --timeout 10 --retries 0 {SPEC} --index-url {cpu_index} "
                     "--extra-index-url https://pypi.org/simple"]
    assert f"CPU wheel) from {cpu_index}" in out


def test_the_configured_default_index_is_the_extra_index(fake, cpu_index):
    _, calls, _ = fake(cpu_index=cpu_index, extra_env={"PIP_INDEX_URL": "https://mirror.example/simple"})
    assert calls[0].endswith("--extra-index-url https://mirror.example/simple")


def test_unreachable_cpu_index_falls_back_to_the_default_index_and_says_so(fake):
    out, calls, _ = fake(cpu_index=f"http://127.0.0.1:{free_port()}/cpu")  # nothing listens there
    assert calls == [f"-m pip install -q {SPEC}"]
    assert "could not be reached" in out and "from the default index" in out


def test_a_silent_cpu_index_costs_seconds_not_minutes(fake):
    with socket.socket() as sock:  # accepts connections, never answers
        sock.bind(("127.0.0.1", 0))
        sock.listen(8)
        out, calls, elapsed = fake(cpu_index=f"http://127.0.0.1:{sock.getsockname()[1]}/cpu")
    assert calls == [f"-m pip install -q {SPEC}"] and "could not be reached" in out
    assert elapsed < 30


def test_with_an_nvidia_gpu_the_default_index_is_used(fake, cpu_index):
    smi = fake.bin_dir / "nvidia-smi"
    smi.write_text("#!/bin/sh\nexit 0\n")
    smi.chmod(0o755)
    out, calls, _ = fake(cpu_index=cpu_index)
    assert calls == [f"-m pip install -q {SPEC}"] and "NVIDIA GPU" in out


def test_torch_index_overrides_everything(fake, cpu_index):
    out, calls, _ = fake(index="https://download.pytorch.org/whl/cu128", cpu_index=cpu_index)
    assert calls == [f"-m pip install -q {SPEC} --index-url https://download.pytorch.org/whl/cu128"]


def test_make_setup_installs_torch_through_the_script():
    proc = subprocess.run(["make", "-n", "-B", "setup", "VENV=/nonexistent-venv"], cwd=ROOT, capture_output=True,
                          text=True, env={**os.environ, "MAKEFLAGS": ""})
    assert proc.returncode == 0, proc.stderr
    torch_lines = [ln for ln in proc.stdout.splitlines() if "torch" in ln]
    assert torch_lines and all("scripts/install_torch.sh" in ln for ln in torch_lines), torch_lines
    assert Path(SCRIPT).is_file()
