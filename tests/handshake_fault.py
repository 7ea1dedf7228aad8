"""`python tests/handshake_fault.py <runtime.serve args>`: the server, with PyTriton's instance
handshake failing as it does in the start-up race, once per file in $HANDSHAKE_FAULTS.

PyTriton sends its proxy's source to Triton with each model it loads; this wraps the function
a non-first instance calls for its configuration so that it raises the `ConnectionRefusedError`
CI saw, consuming one file of the folder each time, and then runs `runtime.serve` as usual.
"""

from __future__ import annotations

import runpy
import sys

FAULTS_ENV = "HANDSHAKE_FAULTS"
TARGET = "def get_config_from_handshake_server("
FAULT = f"""
def get_config_from_handshake_server(*args, **kwargs):
    import os, pathlib
    faults = sorted(pathlib.Path(os.environ[{FAULTS_ENV!r}]).iterdir())
    if faults:
        faults[0].unlink()
        raise ConnectionRefusedError(111, "Connection refused")
    return _real_get_config_from_handshake_server(*args, **kwargs)
"""


def with_fault(files: dict[str, bytes]) -> dict[str, bytes]:
    """PyTriton's proxy files (name -> source), its handshake client replaced by the faulty one."""
    (key,) = [name for name in files if name.endswith("/communication.py")]
    source = files[key].decode()
    if TARGET not in source:
        raise RuntimeError("this PyTriton's proxy has no get_config_from_handshake_server(): update the test")
    source = source.replace(TARGET, "def _real_get_config_from_handshake_server(") + FAULT
    files[key] = source.encode()
    return files


if __name__ == "__main__":
    from pytriton.models.model import Model  # the serving environment's (numpy < 2), not the tests'

    proxy_files = Model.get_proxy_model_files
    Model.get_proxy_model_files = lambda model: with_fault(proxy_files(model))
    sys.argv = ["runtime.serve", *sys.argv[1:]]
    runpy.run_module("runtime.serve", run_name="__main__")
