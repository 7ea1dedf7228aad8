"""Starting Triton through PyTriton, again when its model instances missed each other at start.

With more than one instance per model, PyTriton's instance 0 opens a Unix-socket "handshake"
server in its stub process and the other instances connect to it for their configuration. The
others poll for the socket file and connect once, so an instance that finds the file between
instance 0's `bind()` and `listen()` gets `ConnectionRefusedError`, and one that waits more than
a second (instance 0 still starting its tensor store on a busy machine) gets a `TimeoutError`
naming `<model>-config.sock`. Either way Triton reports the model as failed to load, though
nothing is wrong with it. It was seen twice in CI (2 busy cores, `--instances 2`) and not in six
starts with 8 instances under load by hand; a fresh start (a new PyTriton workspace) is the
cure, so the server starts again, a bounded number of times, for that failure only.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

LOG = logging.getLogger("runtime.serve")

START_ATTEMPTS = 5  # a lost start costs a few seconds; a failed CI run costs far more
# Text that only PyTriton's instance handshake puts in a load error: the function's name in the
# traceback of a refused connection, the socket's name in the time-out message.
HANDSHAKE_MARKERS = ("get_config_from_handshake_server", "-config.sock")


def is_instance_handshake_race(err: BaseException) -> bool:
    """True when `err` (from `Triton.run()`) is the instances' handshake failing, not the model."""
    text = str(err)
    return any(marker in text for marker in HANDSHAKE_MARKERS)


def serve(
    make_triton: Callable[[], Any],
    bind: Callable[[Any], list[str]],
    on_ready: Callable[[list[str]], None],
    attempts: int = START_ATTEMPTS,
) -> None:
    """Starts a server from `make_triton()` (a `pytriton.triton.Triton`, unentered), binds the
    models with `bind(triton)` -> their names, calls `on_ready(names)`, then serves until
    stopped. A start that fails on the instance handshake is retried, up to `attempts` starts in
    all; any other failure, and a failure once serving, raises at once.

    Entering PyTriton's `Triton` context already starts the server, so `bind()` loads each model
    as it binds it: the handshake fails there, not in `run()`, and both are inside the retry."""
    for attempt in range(1, attempts + 1):
        serving = False
        try:
            with make_triton() as triton:
                names = bind(triton)
                triton.run()  # loads whatever binding did not
                serving = True
                on_ready(names)
                triton.serve()
                return
        except Exception as err:
            if serving or attempt == attempts or not is_instance_handshake_race(err):
                raise
            LOG.warning(
                "start %d of %d: PyTriton's model instances missed each other's handshake "
                "(a start-up race, not a model error); starting again",
                attempt,
                attempts,
            )
