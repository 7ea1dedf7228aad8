"""Building the C++ host (hosts/cpp) with CMake and finding its programs, for its tests and benchmarks.

    host = build_cpp_host(Path("build/cpp"))      # configure + build (incremental when already built)
    subprocess.run([host.segment, "--engines", ...])

OpenVINO's C++ SDK comes from the `openvino` wheel of the running interpreter (its package folder
holds `cmake/OpenVINOConfig.cmake`); the other dependencies are the system's (docs/cpp.md).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SOURCE = REPO / "hosts" / "cpp"
DEBIAN_PACKAGES = (
    "cmake g++ pkg-config nlohmann-json3-dev libpng-dev libssl-dev libzip-dev libexif-dev libcli11-dev libgtest-dev"
)


def openvino_cmake_dir() -> Path:
    """The folder of OpenVINOConfig.cmake inside the installed openvino wheel."""
    import openvino

    folder = Path(openvino.__file__).parent / "cmake"
    if not (folder / "OpenVINOConfig.cmake").is_file():
        raise RuntimeError(f"the openvino package at {folder.parent} has no cmake/OpenVINOConfig.cmake (its C++ SDK)")
    return folder


@dataclass(frozen=True)
class CppHost:
    """The built programs (paths) in a build folder."""

    build: Path

    @property
    def segment(self) -> Path:
        return self.build / "diffseg-segment"

    @property
    def parts(self) -> Path:
        return self.build / "diffseg-parts"

    def tool(self, name: str) -> Path:
        """A test tool: probe, concurrency or latency."""
        return self.build / "tests" / f"diffseg-{name}"


def build_cpp_host(build: Path, jobs: int | None = None, install: Path | None = None) -> CppHost:
    """Configures and builds hosts/cpp in `build` (and installs it under `install`); raises with CMake's output on failure."""
    if shutil.which("cmake") is None:
        raise RuntimeError(f"cmake is not installed: apt-get install {DEBIAN_PACKAGES} (scripts/run.sh test does)")
    steps = [
        ["cmake", "-S", str(SOURCE), "-B", str(build), f"-DOpenVINO_DIR={openvino_cmake_dir()}"]
        + ([f"-DCMAKE_INSTALL_PREFIX={install}"] if install else []),
        ["cmake", "--build", str(build), "-j", str(jobs or os.cpu_count() or 1)],
    ] + ([["cmake", "--install", str(build)]] if install else [])
    for step in steps:
        done = subprocess.run(step, capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(
                f"{' '.join(step)} failed ({done.returncode}); the C++ host needs: apt-get install {DEBIAN_PACKAGES}\n"
                f"{done.stdout[-4000:]}\n{done.stderr[-4000:]}"
            )
    return CppHost(build)
