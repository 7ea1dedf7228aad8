"""The server's start: retried on PyTriton's instance-handshake race, and on nothing else."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from handshake_fault import FAULTS_ENV
from serving import require_serving_environment

from runtime.fewshot import FewShotSegmenter
from runtime.serve.client import SegmentationClient
from runtime.serve.process import ServerProcess
from runtime.serve.startup import START_ATTEMPTS, is_instance_handshake_race, serve

FAULT_SCRIPT = Path(__file__).with_name("handshake_fault.py")

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
    """Records what was done to it. Like PyTriton's, its context has started the server, so
    binding a model loads it: `bind()` raises the next of `failures` (None: loads)."""

    def __init__(self, log: list, failures: list):
        self.log, self.failures = log, failures

    def __enter__(self):
        self.log.append("enter")
        return self

    def __exit__(self, *exc):
        self.log.append("exit")

    def bind(self) -> list[str]:
        failure = self.failures.pop(0)
        self.log.append("bind")
        if failure is not None:
            raise RuntimeError(failure)
        return ["segment"]

    def run(self):
        self.log.append("run")

    def serve(self):
        self.log.append("serve")


def start(failures, attempts=3):
    log, ready = [], []
    serve(lambda: FakeTriton(log, failures), FakeTriton.bind, ready.append, attempts)
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
    assert log == ["enter", "bind", "exit"] * 2 + ["enter", "bind", "run", "serve", "exit"]
    assert ready == [["segment"]]


def test_the_race_every_time_fails_after_the_last_attempt():
    with pytest.raises(RuntimeError, match="Connection refused"):
        start([REFUSED, REFUSED, REFUSED, None])


def test_any_other_start_failure_is_not_retried():
    log, ready = [], []
    with pytest.raises(RuntimeError, match="manifest is damaged"):
        serve(lambda: FakeTriton(log, [MODEL_BROKEN, None]), FakeTriton.bind, ready.append)
    assert log == ["enter", "bind", "exit"] and ready == []


def test_a_failure_once_serving_is_not_retried():
    class DiesServing(FakeTriton):
        def serve(self):
            super().serve()
            raise RuntimeError(REFUSED)  # even text that looks like the race: it is not a start

    log, ready = [], []
    with pytest.raises(RuntimeError):
        serve(lambda: DiesServing(log, [None, None]), FakeTriton.bind, ready.append)
    assert log == ["enter", "bind", "run", "serve", "exit"] and ready == [["segment"]]


@pytest.mark.slow
def test_a_real_server_that_loses_the_race_starts_again_and_answers(shipped_engines, episodes, tmp_path, monkeypatch):
    """The real path: PyTriton loads a model as it is bound (the fake above copies that), so the
    failure must be caught there. Two starts lose the race; the third serves the right masks."""
    python = require_serving_environment()
    faults = tmp_path / "faults"
    faults.mkdir()
    for name in ("1", "2"):
        (faults / name).touch()
    monkeypatch.setenv(FAULTS_ENV, str(faults))

    class RacingServer(ServerProcess):
        def command(self) -> list[str]:
            interpreter, _, _, *args = super().command()  # [python, "-m", "runtime.serve", ...]
            return [interpreter, str(FAULT_SCRIPT), *args]

    log = tmp_path / "server.log"
    support = list(episodes[0].support_images), list(episodes[0].support_masks)
    runtime = FewShotSegmenter.from_dir(shipped_engines)
    expected = runtime.segment(episodes[0].query_image, support=runtime.encode_support(*support))
    with RacingServer(["--engines", str(shipped_engines), "--instances", "2"], python=python, log=log) as server:
        assert list(faults.iterdir()) == []  # both faults were met
        text = log.read_text(errors="replace")
        assert f"start 1 of {START_ATTEMPTS}" in text and f"start 2 of {START_ATTEMPTS}" in text
        with SegmentationClient(server.http_url) as client:
            key = client.register_support(*support)
            assert np.array_equal(client.segment(key, episodes[0].query_image), expected)
