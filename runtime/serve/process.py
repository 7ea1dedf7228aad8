"""`ServerProcess`: `python -m runtime.serve` in a child process, for tests, benchmarks and scripts.

    with ServerProcess(["--engines", "engines/synth"]) as server:
        client = SegmentationClient(server.http_url)

The server runs in its own process group on loopback ports picked free, under the serving
environment's interpreter (`serve_python`: PyTriton pins numpy < 2, so it usually lives in its
own virtual environment, `.venv-serve`). Leaving the block stops it (SIGTERM, then SIGKILL of
the whole group, which holds `tritonserver` too); `kill()` is the crash a failover test needs.
Standard library only.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SERVE_PYTHON_ENV = "DIFFSEG_SERVE_PYTHON"


def serve_python() -> str:
    """The interpreter that has PyTriton: $DIFFSEG_SERVE_PYTHON, else .venv-serve's, else this one."""
    if os.environ.get(SERVE_PYTHON_ENV):
        return os.environ[SERVE_PYTHON_ENV]
    candidate = REPO / ".venv-serve" / "bin" / "python"
    return str(candidate) if candidate.is_file() else sys.executable


def free_ports(count: int) -> list[int]:
    """`count` distinct loopback ports that were free a moment ago."""
    sockets = []
    try:
        for _ in range(count):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            sockets.append(s)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def answers(url: str) -> bool:
    """Whether GET `url` answers 200."""
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


def wait_until(ready, timeout_s: float, process: subprocess.Popen, what: str) -> None:
    """Polls `ready()` until it is true; RuntimeError when `process` exits first or time runs out."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{what} exited with {process.returncode} before it was ready")
        if ready():
            return
        time.sleep(0.3)
    raise RuntimeError(f"{what} was not ready after {timeout_s:.0f} s")


def group_members(group: int) -> list[int]:
    """Live (not zombie) processes of a process group."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == group and fields[0] != "Z":  # fields: state, ppid, pgrp, ...
            found.append(int(entry.name))
    return found


def _kill_group(group: int, timeout_s: float = 10) -> None:
    """SIGKILL to a process group, then waits until its members are gone (their ports free)."""
    try:
        os.killpg(group, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        return
    deadline = time.monotonic() + timeout_s
    while group_members(group) and time.monotonic() < deadline:
        time.sleep(0.05)


class ServerProcess:
    """One server. Args: `args` for `python -m runtime.serve` (no ports: they are picked here)."""

    def __init__(self, args: Sequence[str], python: str | None = None, log: Path | None = None, ready_s: float = 180):
        self.args, self.python, self.ready_s = list(args), python or serve_python(), ready_s
        self.http_port, self.grpc_port, self.metrics_port, self.bank_metrics_port = free_ports(4)
        self.log_path = log
        self.process: subprocess.Popen | None = None

    @property
    def http_url(self) -> str:
        return f"127.0.0.1:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    def command(self) -> list[str]:
        ports = ["--http-port", self.http_port, "--grpc-port", self.grpc_port, "--metrics-port", self.metrics_port]
        ports += ["--bank-metrics-port", self.bank_metrics_port]
        return [self.python, "-m", "runtime.serve", *self.args, "--host", "127.0.0.1", *map(str, ports)]

    def start(self) -> ServerProcess:
        models = self.model_names()  # also checks the arguments before anything starts
        if self.log_path:
            with open(self.log_path, "ab") as out:  # the child keeps its own handle
                self.process = subprocess.Popen(
                    self.command(), cwd=REPO, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
                )
        else:
            self.process = subprocess.Popen(
                self.command(), cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, start_new_session=True
            )
        try:
            wait_until(lambda: self._ready(models), self.ready_s, self.process, "the server")
        except RuntimeError as err:
            self.stop()
            raise RuntimeError(f"{err}; its log ends:\n{self.log_tail()}") from None
        except BaseException:
            self.stop()
            raise
        return self

    def model_names(self) -> list[str]:
        """The models this server's arguments serve (what readiness waits for)."""
        from runtime.serve.__main__ import parse_args
        from runtime.serve.triton_app import PARTS_MODEL_PREFIX

        args = parse_args(self.args)
        names = ["register_support", "segment"] if args.engines is not None else []
        return names + [PARTS_MODEL_PREFIX + name for name, _ in args.parts_engines]

    def ready(self) -> bool:
        """Triton is ready and so is every model (Triton reports ready before PyTriton has loaded them)."""
        return self._ready(self.model_names())

    def _ready(self, models: list[str]) -> bool:
        paths = ["/v2/health/ready", *(f"/v2/models/{name}/ready" for name in models)]
        return all(answers(f"http://{self.http_url}{path}") for path in paths)

    def metrics(self, bank: bool = False) -> dict[str, float]:
        """The Prometheus samples of Triton's endpoint (or the bank cache's): 'name{labels}' -> value."""
        port = self.bank_metrics_port if bank else self.metrics_port
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
            text = response.read().decode()
        samples = {}
        for line in text.splitlines():
            if line and not line.startswith("#"):
                name, _, value = line.rpartition(" ")
                samples[name] = float(value)
        return samples

    def log_tail(self, lines: int = 30) -> str:
        if not self.log_path or not Path(self.log_path).is_file():
            return "(no log)"
        return "\n".join(Path(self.log_path).read_text(errors="replace").splitlines()[-lines:])

    def pids(self) -> list[int]:
        """The live processes of the server's group: its own, tritonserver, the backend stubs."""
        return [] if self.process is None else group_members(self.process.pid)

    def kill(self) -> None:
        """SIGKILL to the whole process group: a crash, nothing cleaned up."""
        if self.process is not None:
            _kill_group(self.process.pid)
            self.process.wait()

    def stop(self, timeout_s: float = 30) -> None:
        """SIGTERM to the server (it stops Triton after the requests in flight), then SIGKILL to what is left."""
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                pass
        _kill_group(self.process.pid)  # also when the server died first: tritonserver may outlive it
        self.process.wait()

    def __enter__(self) -> ServerProcess:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
