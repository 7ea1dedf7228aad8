"""The server's start: retried on PyTriton's instance-handshake race, and on nothing else."""

from __future__ import annotations

import pytest

from runtime.serve.startup import is_instance_handshake_race, serve

# The two shapes the race takes in a Triton load error (the first as CI printed it).
REFUSED = (
    "[400] load failed for model 'register_support': version 1 is at UNAVAILABLE state: Internal: "
    "TritonModelException: Model initialize error: Traceback (most recent call last):\n"
    '  File "/tmp/folderJTQ1Op/1/model.py", line 425, in initialize\n'
    "    inference_handler_config = get_config_from_handshake_server(handshake_socket)\n"
    "ConnectionRefusedError: [Errno 111] Connection refused"
)
TIMED_OUT = (
    "[400] load failed for model 'segment': ... TimeoutError: Timeout occurred while waiting for config "
    "file /root/.cache/pytriton/workspace_x/segment-config.sock"
)
MODEL_BROKEN = "[400] load failed for model 'segment': ... ValueError: the engines' manifest is damaged"


class FakeTriton:
    """Records what was done to it; `run()` raises the next of `failures` (None: starts)."""

    def __init__(self, log: list, failures: list):
        self.log, self.failures = log, failures

    def __enter__(self):
        self.log.append("enter")
        return self

    def __exit__(self, *exc):
        self.log.append("exit")

    def run(self):
        failure = self.failures.pop(0)
        self.log.append("run")
        if failure is not None:
            raise RuntimeError(failure)

    def serve(self):
        self.log.append("serve")


def start(failures, attempts=3):
    log, ready = [], []
    serve(lambda: FakeTriton(log, failures), lambda triton: ["segment"], ready.append, attempts)
    return log, ready


@pytest.mark.parametrize("text", [REFUSED, TIMED_OUT])
def test_the_handshake_race_is_recognised(text):
    assert is_instance_handshake_race(RuntimeError(text))


def test_a_model_error_is_not_taken_for_the_race():
    assert not is_instance_handshake_race(RuntimeError(MODEL_BROKEN))
    assert not is_instance_handshake_race(OSError("[Errno 98] Address already in use"))


def test_a_start_lost_to_the_race_starts_again_in_a_fresh_server():
    log, ready = start([REFUSED, TIMED_OUT, None])
    # each failed start's server is stopped before the next starts; the third serves
    assert log == ["enter", "run", "exit"] * 2 + ["enter", "run", "serve", "exit"]
    assert ready == [["segment"]]


def test_the_race_every_time_fails_after_the_last_attempt():
    with pytest.raises(RuntimeError, match="Connection refused"):
        start([REFUSED, REFUSED, REFUSED, None])


def test_any_other_start_failure_is_not_retried():
    log, ready = [], []
    with pytest.raises(RuntimeError, match="manifest is damaged"):
        serve(lambda: FakeTriton(log, [MODEL_BROKEN, None]), lambda triton: [], ready.append)
    assert log == ["enter", "run", "exit"] and ready == []
