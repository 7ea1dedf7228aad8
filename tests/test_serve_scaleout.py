"""Two server replicas behind nginx on loopback: a shared bank store, and failover when one dies.

A support registered through the balancer is served by both replicas (the one that did not
encode it reads it from the store); one replica killed (SIGKILL to its whole process group)
in the middle of a load run: nginx retries its requests on the other, and every request that
got an answer got the right mask.
"""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
from serving import Nginx, queries, require_serving_environment

from runtime.fewshot import FewShotSegmenter
from runtime.serve.client import SegmentationClient
from runtime.serve.process import ServerProcess, free_ports

pytestmark = pytest.mark.slow
SEGMENT_OK = 'nv_inference_request_success{model="segment",version="1"}'


def successes(server: ServerProcess) -> float:
    return server.metrics()[SEGMENT_OK]


def test_two_replicas_share_supports_and_fail_over(shipped_engines, episodes, tmp_path):
    python = require_serving_environment()
    args = ["--engines", str(shipped_engines), "--bank-store", str(tmp_path / "banks"), "--instances", "2"]
    support = list(episodes[2].support_images), list(episodes[2].support_masks)
    images = queries([(128, 128), (96, 160), (64, 64)], seed=11)
    runtime = FewShotSegmenter.from_dir(shipped_engines)
    bank = runtime.encode_support(*support)
    expected = [runtime.segment(image, support=bank) for image in images]
    with (
        ServerProcess(args, python=python, log=tmp_path / "a.log") as first,
        ServerProcess(args, python=python, log=tmp_path / "b.log") as second,
        Nginx(tmp_path / "nginx", [first.http_port, second.http_port], free_ports(1)[0]) as balancer,
    ):
        url = f"127.0.0.1:{balancer.port}"
        with SegmentationClient(url) as client:
            key = client.register_support(*support)
            for i in range(8):  # round robin: both replicas answer, one of them never saw the support
                assert np.array_equal(client.segment(key, images[i % 3]), expected[i % 3])
        assert successes(first) >= 2 and successes(second) >= 2
        encodes = [s.metrics(bank=True)["diffseg_support_encodes_total"] for s in (first, second)]
        reads = [s.metrics(bank=True)["diffseg_support_store_reads_total"] for s in (first, second)]
        assert sorted(encodes) == [0, 1] and sorted(reads) == [0, 1]

        answered, wrong, failed = [], [], []
        kill_after, total, workers = 20, 120, 4
        counter = iter(range(total))
        lock = threading.Lock()
        killed = threading.Event()

        def work():
            with SegmentationClient(url, timeout_s=60) as client:
                while True:
                    with lock:
                        i = next(counter, None)
                    if i is None:
                        return
                    try:
                        mask = client.segment(key, images[i % 3])
                    except Exception as err:  # noqa: BLE001 - counted and reported below
                        failed.append((i, repr(err)[:200]))
                        continue
                    (answered if np.array_equal(mask, expected[i % 3]) else wrong).append(i)
                    with lock:
                        if len(answered) >= kill_after and not killed.is_set():
                            killed.set()
                            first.kill()  # a crash in the middle of the run: in-flight requests lose their replica

        threads = [threading.Thread(target=work) for _ in range(workers)]
        started = time.monotonic()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        elapsed = time.monotonic() - started
        assert killed.is_set() and first.process.poll() is not None
        assert wrong == []  # every answer is the right mask
        assert len(answered) + len(failed) == total
        # nginx replays a request whose replica died on the other one, so none should fail;
        # at most the requests in flight at the kill may, never more.
        assert len(failed) <= workers, failed
        assert successes(second) > total / 2
        print(f"failover: {len(answered)} answered, {len(failed)} failed of {total} in {elapsed:.1f} s")
