"""Helpers for the tests that start real servers: the serving interpreter, a query set, nginx."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import numpy as np

from runtime.serve.process import REPO, answers, serve_python, wait_until

NGINX_TEMPLATE = REPO / "examples" / "serving" / "nginx.conf"


def require_serving_environment() -> str:
    """The interpreter with PyTriton; a clear failure (not a skip) when the setup did not make one."""
    python = serve_python()
    found = subprocess.run([python, "-c", "import pytriton, prometheus_client"], capture_output=True)
    if found.returncode != 0:
        raise RuntimeError(
            f"{python} cannot import pytriton: run `bash scripts/run.sh test` (it creates .venv-serve), "
            "or point DIFFSEG_SERVE_PYTHON at an interpreter with `pip install -e '.[runtime,serve]'`"
        )
    return python


def queries(sizes, seed: int = 0) -> list[np.ndarray]:
    """Random-looking RGB queries, one per (height, width)."""
    rng = np.random.default_rng(seed)
    return [(rng.random((h, w, 3)) * 255).astype(np.uint8) for h, w in sizes]


class Nginx:
    """nginx as a round-robin load balancer over `upstreams` (HTTP ports), on loopback, in `folder`."""

    def __init__(self, folder: Path, upstreams: list[int], port: int):
        if shutil.which("nginx") is None:
            raise RuntimeError(
                "nginx is not installed: apt-get install nginx-light (scripts/run.sh test does, as root)"
            )
        self.folder, self.port = Path(folder), port
        self.folder.mkdir(parents=True, exist_ok=True)
        servers = "\n".join(f"        server 127.0.0.1:{p} max_fails=1 fail_timeout=10s;" for p in upstreams)
        text = NGINX_TEMPLATE.read_text()
        text = text.replace("{{PREFIX}}", str(self.folder)).replace("{{LISTEN}}", f"127.0.0.1:{port}")
        self.config = self.folder / "nginx.conf"
        text = text.replace("{{UPSTREAM_SERVERS}}", servers)
        if os.geteuid() == 0:  # nginx's workers would run as nobody, who cannot enter pytest's 0700 folders
            text = "user root;\n" + text
        self.config.write_text(text)
        self.process: subprocess.Popen | None = None

    def __enter__(self) -> Nginx:
        with open(self.folder / "stderr.log", "wb") as err:  # nginx keeps its own handle
            self.process = subprocess.Popen(
                ["nginx", "-p", str(self.folder), "-c", str(self.config), "-g", "daemon off;"],
                stdout=subprocess.DEVNULL,
                stderr=err,
            )
        try:
            wait_until(lambda: answers(f"http://127.0.0.1:{self.port}/v2/health/ready"), 20, self.process, "nginx")
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
