"""A real Triton server (PyTriton, on loopback) over the shipped engines: answers, errors, restarts.

Every mask a client gets equals the in-process runtime's on the same backend and inputs, over
HTTP and gRPC, one request at a time and under concurrency; a bad request gets the runtime's
message and the server goes on answering; a restarted server keeps every registered support.
"""

from __future__ import annotations

import json
import subprocess
import threading

import numpy as np
import pytest
import tritonclient.http as http
from PIL import Image
from serving import queries, require_serving_environment
from tritonclient.utils import InferenceServerException

from runtime.fewshot import FewShotSegmenter
from runtime.parts import PartSegmenter
from runtime.serve.client import SegmentationClient, ServerError, UnknownSupportError
from runtime.serve.process import REPO, ServerProcess

pytestmark = pytest.mark.slow
SIZES = [(128, 128), (96, 160), (200, 150), (64, 64)]


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return tmp_path_factory.mktemp("banks")


@pytest.fixture(scope="module")
def server(shipped_engines, slime_engines, store, tmp_path_factory):
    python = require_serving_environment()
    args = ["--engines", str(shipped_engines), "--parts-engines", f"tiny={slime_engines[1]}"]
    args += ["--bank-store", str(store), "--instances", "2"]
    log = tmp_path_factory.mktemp("server") / "server.log"
    with ServerProcess(args, python=python, log=log) as process:
        yield process


@pytest.fixture(scope="module")
def runtime(shipped_engines):
    return FewShotSegmenter.from_dir(shipped_engines)  # the server's backend: auto on both sides


@pytest.fixture(scope="module")
def supports(episodes):
    """A 1-shot and a 2-shot support set (64 x 64 images)."""
    first, second = episodes[0], episodes[1]
    return [
        ([first.support_images[0]], [first.support_masks[0]]),
        (list(second.support_images), list(second.support_masks)),
    ]


def reference_masks(runtime, supports, images) -> list[list[np.ndarray]]:
    masks = []
    for support in supports:
        bank = runtime.encode_support(*support)
        masks.append([runtime.segment(image, support=bank) for image in images])
    return masks


def test_masks_over_http_and_grpc_equal_the_runtimes(server, runtime, supports):
    supports = [([i[:, ::-1].copy() for i in s[0]], [m[:, ::-1].copy() for m in s[1]]) for s in supports]  # unseen
    images = queries(SIZES, seed=1)
    expected = reference_masks(runtime, supports, images)
    before = server.metrics(bank=True)["diffseg_support_encodes_total"]
    for url, protocol in ((server.http_url, "http"), (server.grpc_url, "grpc")):
        with SegmentationClient(url, protocol) as client:
            for support, masks in zip(supports, expected):
                key = client.register_support(*support)
                assert client.register_support(*support) == key  # content-addressed: the same id again
                for image, mask in zip(images, masks):
                    answer = client.segment(key, image)
                    assert answer.shape == image.shape[:2] and answer.dtype == np.uint8
                    assert np.array_equal(answer, mask)
    assert server.metrics(bank=True)["diffseg_support_encodes_total"] - before == len(supports)  # once per set


def test_segment_parts_equals_the_part_segmenter(server, slime_engines, tmp_path):
    segmenter = PartSegmenter.from_dir(slime_engines[1])
    with SegmentationClient(server.http_url) as client:
        for image in queries([(64, 64), (80, 120)], seed=2):
            labels, names = client.segment_parts("tiny", image)
            assert np.array_equal(labels, segmenter.segment(image)) and names == segmenter.class_names


def test_masks_under_concurrency_equal_the_runtimes(server, runtime, supports):
    images = queries(SIZES, seed=3)
    expected = reference_masks(runtime, supports, images)
    with SegmentationClient(server.http_url) as client:
        keys = [client.register_support(*support) for support in supports]
    wrong, errors = [], []

    def work(worker: int):
        with SegmentationClient(
            server.http_url if worker % 2 else server.grpc_url, "http" if worker % 2 else "grpc"
        ) as client:
            for i in range(6):
                s, q = (worker + i) % len(keys), (worker * 3 + i) % len(images)
                try:
                    if not np.array_equal(client.segment(keys[s], images[q]), expected[s][q]):
                        wrong.append((worker, i))
                except Exception as err:  # noqa: BLE001 - counted, then asserted empty
                    errors.append(repr(err))

    threads = [threading.Thread(target=work, args=(w,)) for w in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [] and wrong == []


def raw_infer(url: str, model: str, tensors: list[tuple[str, np.ndarray, str]]):
    """A hand-made request (any names, dtypes and shapes) through tritonclient."""
    client = http.InferenceServerClient(url)
    inputs = []
    for name, array, datatype in tensors:
        tensor = http.InferInput(name, list(array.shape), datatype)
        tensor.set_data_from_numpy(array)
        inputs.append(tensor)
    return client.infer(model, inputs)


def test_bad_requests_get_errors_and_the_server_goes_on(server, runtime, supports):
    support = supports[0]
    with SegmentationClient(server.http_url) as client:
        key = client.register_support(*support)
        image = queries([(64, 64)], seed=4)[0]
        empty = np.zeros_like(support[1][0])
        big = np.zeros((600, 40, 3), np.uint8)  # the shipped test engines take sides up to 512

        def runtime_error(call) -> str:
            with pytest.raises(ValueError) as caught:
                call()
            return str(caught.value)

        same_as_runtime = [
            (
                lambda: client.register_support([support[0][0]], [empty]),
                lambda: runtime.encode_support([support[0][0]], [empty]),
            ),
            (
                lambda: client.register_support(support[0] * 3, support[1] * 3),
                lambda: runtime.encode_support(support[0] * 3, support[1] * 3),
            ),
            (lambda: client.segment(key, big), lambda: runtime.segment(big, support=runtime.encode_support(*support))),
            (
                lambda: client.segment(key, image, threshold=2.0),
                lambda: runtime.segment(image, 2.0, runtime.encode_support(*support)),
            ),
        ]
        other = [  # (call, words the error must contain)
            (lambda: client.segment("xyz", image), "is malformed"),
            (
                lambda: raw_infer(server.http_url, "segment", [("imag", image, "UINT8")]),
                "unexpected inference input 'imag'",
            ),
            (
                lambda: raw_infer(
                    server.http_url,
                    "segment",
                    [
                        ("support_id", np.array([key.encode()], object), "BYTES"),
                        ("image", image.astype(np.float32), "FP32"),
                    ],
                ),
                "inference input 'image' data-type is 'FP32', but model 'segment' expects 'UINT8'",
            ),
            (
                lambda: raw_infer(
                    server.http_url,
                    "segment",
                    [("support_id", np.array([key.encode()], object), "BYTES"), ("image", image[:, :, 0], "UINT8")],
                ),
                "unexpected shape for input 'image'",
            ),
            (lambda: raw_infer(server.http_url, "no_such_model", [("image", image, "UINT8")]), "no_such_model"),
        ]
        for _ in range(3):  # over and over: none of them may take the server down
            for call, runtime_call in same_as_runtime:
                with pytest.raises(ServerError) as caught:
                    call()
                assert str(caught.value) == runtime_error(runtime_call)
            for call, words in other:
                with pytest.raises((ServerError, InferenceServerException)) as caught:
                    call()
                assert words in str(caught.value)
            with pytest.raises(UnknownSupportError, match="call register_support"):
                client.segment("e" * 64, image)
        assert server.ready() and server.process.poll() is None
        assert np.array_equal(
            client.segment(key, image), runtime.segment(image, support=runtime.encode_support(*support))
        )


def test_a_restarted_server_keeps_every_registered_support(shipped_engines, runtime, supports, tmp_path):
    python = require_serving_environment()
    args = ["--engines", str(shipped_engines), "--bank-store", str(tmp_path / "banks"), "--instances", "1"]
    image = queries([(96, 160)], seed=5)[0]
    with ServerProcess(args, python=python, log=tmp_path / "first.log") as first:
        with SegmentationClient(first.http_url) as client:
            key = client.register_support(*supports[1])
    assert first.process.poll() is not None and first.pids() == []  # stopped, tritonserver included
    with ServerProcess(args, python=python, log=tmp_path / "second.log") as second:
        with SegmentationClient(second.http_url) as client:
            answer = client.segment(key, image)  # no registering: the id is in the store
        assert np.array_equal(answer, runtime.segment(image, support=runtime.encode_support(*supports[1])))
        bank = second.metrics(bank=True)
        assert bank["diffseg_support_encodes_total"] == 0 and bank["diffseg_support_store_reads_total"] == 1
        assert second.metrics()['nv_inference_request_success{model="segment",version="1"}'] == 1


def test_the_documented_curl_scripts_register_and_segment(server, runtime, supports, tmp_path):
    """examples/serving/*.sh (docs/serving.md): curl and bash alone, files sent as they are."""
    images, masks = supports[1]
    paths = []
    for i, (image, mask) in enumerate(zip(images, masks)):
        Image.fromarray(image).save(tmp_path / f"s{i}.png")
        Image.fromarray(mask * 255).save(tmp_path / f"s{i}_mask.png")
        paths += [str(tmp_path / f"s{i}.png"), str(tmp_path / f"s{i}_mask.png")]
    query = queries([(96, 160)], seed=6)[0]
    Image.fromarray(query).save(tmp_path / "q.jpg", quality=90)  # a JPEG: decoded by the server, as here
    scripts = REPO / "examples" / "serving"
    done = subprocess.run(
        ["bash", scripts / "register_support.sh", server.http_url, *paths], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    key = json.loads(done.stdout)["outputs"][0]["data"][0]
    with SegmentationClient(server.http_url) as client:
        assert key == client.register_support(images, masks)  # the same pixels, the same id
    done = subprocess.run(
        ["bash", scripts / "segment.sh", server.http_url, key, tmp_path / "q.jpg"], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    output = json.loads(done.stdout)["outputs"][0]
    mask = np.array(output["data"], np.uint8).reshape(output["shape"])
    expected = runtime.segment(tmp_path / "q.jpg", support=runtime.encode_support(images, masks))
    assert np.array_equal(mask, expected)
    done = subprocess.run(
        ["bash", scripts / "segment.sh", server.http_url, "e" * 64, tmp_path / "q.jpg"], capture_output=True, text=True
    )
    assert done.returncode != 0 and "call register_support" in done.stdout + done.stderr
