"""The server's logic without a server: support ids, the bank cache and store, the request handlers.

The handlers take Triton's requests as name -> array dicts, so every bad request is checked
here against the Python runtime's own message; tests/test_serve_triton.py checks that the
same text reaches a client through a real Triton server.
"""

from __future__ import annotations

import io
import os
import threading

import numpy as np
import pytest
from PIL import Image

from runtime.fewshot import FewShotSegmenter, SupportBank
from runtime.parts import PartSegmenter
from runtime.serve.bank_cache import BankCache
from runtime.serve.bank_store import BankStore
from runtime.serve.client import ServerError, UnknownSupportError, server_error
from runtime.serve.environment import prefer_interpreter_libpython
from runtime.serve.errors import BadRequest, UnknownSupport
from runtime.serve.service import FewShotService, bank_source, support_id
from runtime.serve.tensors import FewShotHandlers, PartsHandler

HASH = "ab" * 32


def fake_bank(megabytes: float) -> SupportBank:
    array = np.zeros(int(megabytes * 2**20) // 4, np.float32)
    return SupportBank({"key_00": array}, {}, 1)


def png(array: np.ndarray, format: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format=format)
    return buffer.getvalue()


def files(*items: bytes) -> np.ndarray:
    return np.array(list(items), dtype=object)


# --------------------------------------------------------------------------- cache, ids, store
def test_bank_cache_evicts_the_least_recently_used_by_bytes():
    cache = BankCache(3 * 2**20)
    for key in "abc":
        cache.put(key, fake_bank(1))
    assert cache.get("a") is not None  # a is now the most recent: b goes first
    cache.put("d", fake_bank(1))
    assert "b" not in cache and all(k in cache for k in "acd")
    cache.put("e", fake_bank(2))  # needs two banks' room: c, then a
    assert [k in cache for k in "acde"] == [False, False, True, True]
    stats = cache.stats()
    assert (stats.entries, stats.bytes, stats.hits, stats.misses, stats.evictions) == (2, 3 * 2**20, 1, 0, 3)
    assert cache.get("b") is None and cache.stats().misses == 1


def test_bank_cache_refuses_a_bank_larger_than_itself():
    with pytest.raises(ValueError, match=r"more than the whole bank cache .*--bank-cache-mb"):
        BankCache(2**20).put("a", fake_bank(2))


def test_support_id_hashes_pixels_shapes_order_and_source():
    rng = np.random.default_rng(0)
    image = (rng.random((40, 50, 3)) * 255).astype(np.uint8)
    mask = np.zeros((40, 50), np.uint8)
    mask[10:20, 5:30] = 1
    same = support_id(HASH, [image], [mask])
    assert same == support_id(HASH, [image.copy()], [mask.copy()]) and len(same) == 64
    changed = image.copy()
    changed[0, 0, 0] ^= 1
    assert support_id(HASH, [changed], [mask]) != same  # one pixel
    assert support_id("cd" * 32, [image], [mask]) != same  # another model, encoder or backend
    assert support_id(HASH, [image, image[::-1]], [mask, mask[::-1]]) != support_id(
        HASH, [image[::-1], image], [mask[::-1], mask]
    )  # shot order is part of the set (the bank's shot axis follows it)
    wide = np.zeros((20, 100, 3), np.uint8), np.zeros((20, 100), np.uint8)
    tall = np.zeros((100, 20, 3), np.uint8), np.zeros((100, 20), np.uint8)
    assert support_id(HASH, [wide[0]], [wide[1]]) != support_id(HASH, [tall[0]], [tall[1]])  # shapes are hashed


def test_bank_store_round_trip_and_damaged_files(tmp_path):
    store = BankStore(tmp_path / "store", HASH)
    arrays = {"key_00": np.arange(12, dtype=np.float32).reshape(1, 3, 4)}
    path = store.write("1" * 64, arrays, {"backend": "onnxruntime"})
    assert path.parent.parent == tmp_path / "store" and not list(path.parent.glob(".*.tmp"))
    stored, meta = store.read("1" * 64)
    assert np.array_equal(stored["key_00"], arrays["key_00"]) and meta["backend"] == "onnxruntime"
    mtime = path.stat().st_mtime_ns
    store.write("1" * 64, {"key_00": np.zeros((1, 3, 4), np.float32)}, {})  # content-addressed: kept as it is
    assert path.stat().st_mtime_ns == mtime and store.read("1" * 64)[0]["key_00"][0, 0, 1] == 1
    assert store.read("2" * 64) is None
    other = BankStore(tmp_path / "store", "cd" * 32)  # another model's store, the same folder
    os.link(path, other.path("1" * 64))
    with pytest.raises(ValueError, match="computed by another model"):
        other.read("1" * 64)
    path.write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="not a readable support bank"):
        store.read("1" * 64)
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="is a file; pass a directory"):
        BankStore(tmp_path / "file", HASH)


def test_libpython_goes_first_on_the_library_path():
    environ = {"LD_LIBRARY_PATH": "/opt/a:/opt/b"}
    libdir = prefer_interpreter_libpython(environ)
    if libdir is None:  # a static interpreter: nothing to prefer, nothing changed
        assert environ == {"LD_LIBRARY_PATH": "/opt/a:/opt/b"}
    else:
        assert environ["LD_LIBRARY_PATH"] == f"{libdir}:/opt/a:/opt/b"
        prefer_interpreter_libpython(environ)  # twice: not listed twice
        assert environ["LD_LIBRARY_PATH"].split(":").count(libdir) == 1


def test_client_finds_the_runtime_message_in_tritons_error_text():
    class TritonError(Exception):  # tritonclient's InferenceServerException has message() and status()
        def message(self):
            return (
                "Failed to process the request(s) for model 'segment_0_1', message: TritonModelException: "
                'Model execute error: Traceback (most recent call last):\n  File "model.py", line 492\n'
                "runtime.serve.errors.UnknownSupport: support id 0123456789ab... is not registered\n\n\nAt:\n  x"
            )

        def status(self):
            return "500"

    err = server_error(TritonError())
    assert isinstance(err, UnknownSupportError) and str(err) == "support id 0123456789ab... is not registered"
    plain = server_error(Exception("[400] unexpected inference input 'imag' for model 'segment'"))
    assert type(plain) is ServerError and "unexpected inference input" in str(plain)


# --------------------------------------------------------------------------- the service
@pytest.fixture(scope="module")
def segmenter(built):
    return FewShotSegmenter.from_dir(built[1], backend="onnxruntime")


@pytest.fixture(scope="module")
def support(episodes):
    """Two shots (64 x 64) of a held-out episode."""
    return list(episodes[0].support_images), list(episodes[0].support_masks)


def query(seed: int, shape=(64, 64, 3)) -> np.ndarray:
    return (np.random.default_rng(seed).random(shape) * 255).astype(np.uint8)


def test_service_encodes_once_and_answers_as_the_runtime(segmenter, support, tmp_path):
    service = FewShotService(segmenter, BankCache(2**30), BankStore(tmp_path, segmenter.manifest.model["hash"]))
    key = service.register(*support)
    assert service.register(*support) == key and service.counts["encodes"] == 1
    reference = FewShotSegmenter.from_dir(segmenter.directory, backend="onnxruntime", verify=False)
    reference.set_support(*support)
    for seed, shape in ((1, (64, 64, 3)), (2, (48, 80, 3))):
        assert np.array_equal(service.segment(key, query(seed, shape)), reference.segment(query(seed, shape)))


def test_concurrent_registers_of_one_set_encode_it_once(segmenter, support):
    service = FewShotService(segmenter, BankCache(2**30))
    keys, barrier = [], threading.Barrier(6)

    def register():
        barrier.wait()
        keys.append(service.register(*support))

    threads = [threading.Thread(target=register) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(keys)) == 1 and len(keys) == 6 and service.counts["encodes"] == 1


def test_a_replica_that_never_saw_an_id_serves_it_from_the_store(segmenter, support, tmp_path):
    model_hash = segmenter.manifest.model["hash"]
    first = FewShotService(segmenter, BankCache(2**30), BankStore(tmp_path, model_hash))
    key = first.register(*support)
    second = FewShotService(segmenter, BankCache(2**30), BankStore(tmp_path, model_hash))
    assert np.array_equal(second.segment(key, query(3)), first.segment(key, query(3)))
    assert second.counts == {"encodes": 0, "store_reads": 1, "store_writes": 0, "store_errors": 0}
    second.segment(key, query(4))  # now cached: no second read
    assert second.counts["store_reads"] == 1
    BankStore(tmp_path, model_hash).path(key).write_bytes(b"damaged")
    third = FewShotService(segmenter, BankCache(2**30), BankStore(tmp_path, model_hash))
    with pytest.raises(UnknownSupport, match="call register_support"):
        third.segment(key, query(3))
    assert third.counts["store_errors"] == 1
    assert third.register(*support) == key and third.counts["encodes"] == 1  # re-registering repairs the file
    assert np.array_equal(
        FewShotService(segmenter, BankCache(2**30), BankStore(tmp_path, model_hash)).segment(key, query(3)),
        first.segment(key, query(3)),
    )


def test_a_bank_larger_than_the_cache_is_refused_at_registration(segmenter, support, tmp_path):
    for store in (None, BankStore(tmp_path, segmenter.manifest.model["hash"])):  # a store would not help
        service = FewShotService(segmenter, BankCache(1024), store)
        with pytest.raises(BadRequest, match="--bank-cache-mb"):
            service.register(*support)
        assert service.counts["store_writes"] == 0 and service.cache.stats().entries == 0


def test_banks_count_the_backends_copy_and_belong_to_their_segmenter(segmenter, support, built):
    bank = segmenter.encode_support(*support)
    arrays = sum(a.nbytes for a in bank.arrays.values())
    assert bank.host_bytes == arrays  # ONNX Runtime on the CPU reads the arrays themselves
    openvino = FewShotSegmenter.from_dir(built[1], backend="openvino", verify=False)
    assert openvino.encode_support(*support).host_bytes == 2 * arrays  # OpenVINO keeps a copy
    with pytest.raises(ValueError, match="made by another segmenter"):
        openvino.segment(query(1), support=bank)


def test_ids_and_stored_banks_are_kept_apart_per_backend(segmenter, support, built, tmp_path):
    openvino = FewShotSegmenter.from_dir(built[1], backend="openvino", verify=False)
    model_hash = segmenter.manifest.model["hash"]
    services = [
        FewShotService(s, BankCache(2**30), BankStore(tmp_path, model_hash, bank_source(s)))
        for s in (segmenter, openvino)
    ]
    keys = [service.register(*support) for service in services]
    assert keys[0] != keys[1] and bank_source(segmenter) != bank_source(openvino)
    assert services[0].store.directory != services[1].store.directory


def test_the_store_is_repaired_and_its_failures_do_not_fail_a_request(segmenter, support, tmp_path, monkeypatch):
    store = BankStore(tmp_path, segmenter.manifest.model["hash"])
    service = FewShotService(segmenter, BankCache(2**30), store)
    key = service.register(*support)
    store.path(key).unlink()  # a retention policy deleted it: registering again writes it again
    assert service.register(*support) == key and store.path(key).is_file()
    assert service.counts["encodes"] == 1 and service.counts["store_writes"] == 2

    def full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    other = FewShotService(segmenter, BankCache(2**30), BankStore(tmp_path / "full", segmenter.manifest.model["hash"]))
    monkeypatch.setattr(other.store, "write", full)
    key = other.register(*support)  # served from memory; the failure is counted and logged
    assert other.counts["store_errors"] == 1 and other.segment(key, query(1)).shape == (64, 64)


# --------------------------------------------------------------------------- the handlers
def runtime_message(call) -> str:
    with pytest.raises(ValueError) as caught:
        call()
    return str(caught.value)


def handler_message(call, error=BadRequest) -> str:
    with pytest.raises(error) as caught:
        call()
    return str(caught.value)


def test_pixels_png_and_bmp_give_one_id_and_one_mask(segmenter, support):
    handlers = FewShotHandlers(FewShotService(segmenter, BankCache(2**30)))
    images, masks = support
    by_pixels = handlers.register_support([{"images": np.stack(images), "masks": np.stack(masks)}])[0]
    by_files = handlers.register_support(
        [{"image_files": files(*map(png, images)), "mask_files": files(*(png(m * 255) for m in masks))}]
    )[0]
    by_bmp = handlers.register_support(
        [{"image_files": files(*(png(i, "BMP") for i in images)), "mask_files": files(*map(png, masks))}]
    )[0]
    key = by_pixels["support_id"][0].decode()
    assert by_files["support_id"][0].decode() == key and by_pixels["shots"].tolist() == [2]
    assert by_bmp["support_id"][0].decode() == key  # files of other formats, masks as 0/1 or 0/255: one id
    q = query(5, (56, 72, 3))
    raw = handlers.segment([{"support_id": files(key.encode()), "image": q}])[0]["mask"]
    encoded = handlers.segment([{"support_id": files(key.encode()), "image_file": files(png(q))}])[0]["mask"]
    assert np.array_equal(raw, encoded) and raw.shape == (56, 72) and raw.dtype == np.uint8


def test_bad_requests_get_the_runtimes_messages(segmenter, support):
    handlers = FewShotHandlers(FewShotService(segmenter, BankCache(2**30)))
    images, masks = support
    key = handlers.register_support([{"images": np.stack(images), "masks": np.stack(masks)}])[0]["support_id"][0]
    reference = FewShotSegmenter.from_dir(segmenter.directory, backend="onnxruntime", verify=False)
    reference.set_support(*support)
    empty = np.zeros_like(masks[0])
    four = [images[0]] * 4, [masks[0]] * 4  # the tiny engines take 1 to 3 shots
    big = np.zeros((600, 64, 3), np.uint8)  # the tiny engines take sides up to 512
    cases = [
        (
            lambda: reference.set_support([images[0]], [empty]),
            lambda: handlers.register_support([{"images": images[0][None], "masks": empty[None]}]),
        ),
        (
            lambda: reference.set_support(*four),
            lambda: handlers.register_support([{"images": np.stack(four[0]), "masks": np.stack(four[1])}]),
        ),
        (
            lambda: reference.set_support([images[0]], [masks[0][:32]]),
            lambda: handlers.register_support(
                [{"image_files": files(png(images[0])), "mask_files": files(png(masks[0][:32]))}]
            ),
        ),
        (lambda: reference.segment(big), lambda: handlers.segment([{"support_id": files(key), "image": big}])),
        (
            lambda: reference.segment(big),
            lambda: handlers.segment([{"support_id": files(key), "image_file": files(png(big))}]),
        ),
        (
            lambda: reference.segment(query(1), threshold=1.5),
            lambda: handlers.segment(
                [{"support_id": files(key), "image": query(1), "threshold": np.array([1.5], np.float32)}]
            ),
        ),
    ]
    for runtime_call, handler_call in cases:
        assert handler_message(handler_call) == runtime_message(runtime_call)
    # Requests the runtime has no counterpart for: each named, with what to send instead.
    assert "malformed" in handler_message(lambda: handlers.segment([{"support_id": files(b"12ab"), "image": query(1)}]))
    assert "exactly one of the inputs 'image'" in handler_message(
        lambda: handlers.segment([{"support_id": files(key)}])
    )
    both = {"support_id": files(key), "image": query(1), "image_file": files(png(query(1)))}
    assert "got 'image' and 'image_file'" in handler_message(lambda: handlers.segment([both]))
    assert "not a readable image file" in handler_message(
        lambda: handlers.segment([{"support_id": files(key), "image_file": files(b"GIF89a broken")}])
    )
    assert "need masks" in handler_message(lambda: handlers.register_support([{"images": images[0][None]}]))
    assert "call register_support" in handler_message(
        lambda: handlers.segment([{"support_id": files(b"f" * 64), "image": query(1)}]), UnknownSupport
    )


def test_an_oversized_file_is_refused_before_it_is_decoded(segmenter, support, monkeypatch):
    handlers = FewShotHandlers(FewShotService(segmenter, BankCache(2**30)))
    images, masks = support
    key = handlers.register_support([{"images": np.stack(images), "masks": np.stack(masks)}])[0]["support_id"][0]
    data = png(np.zeros((4000, 32, 3), np.uint8))

    def no_decoding(self):
        raise AssertionError("the oversized file was decoded")

    monkeypatch.setattr(Image.Image, "load", no_decoding)
    monkeypatch.setattr("PIL.ImageFile.ImageFile.load", no_decoding)
    message = handler_message(lambda: handlers.segment([{"support_id": files(key), "image_file": files(data)}]))
    assert message.startswith("query: the image is 32x4000; these engines take sides from")


def test_too_many_files_are_refused_before_any_is_decoded(segmenter, monkeypatch):
    handlers = FewShotHandlers(FewShotService(segmenter, BankCache(2**30)))
    data = png(np.zeros((64, 64, 3), np.uint8))

    def no_decoding(*args, **kwargs):
        raise AssertionError("a file was opened")

    monkeypatch.setattr("runtime.serve.tensors.open_image_file", no_decoding)
    message = handler_message(
        lambda: handlers.register_support([{"image_files": files(*[data] * 50), "mask_files": files(*[data] * 50)}])
    )
    assert message == "50 support shots; these engines take 1 to 3 (rebuild with a larger --max-shots)"


def test_parts_handler_answers_as_the_part_segmenter(slime_engines):
    _, engines = slime_engines
    segmenter = PartSegmenter.from_dir(engines)
    handler = PartsHandler(segmenter, max_side=256)
    image = query(7, (70, 90, 3))
    response = handler.segment_parts([{"image_file": files(png(image))}])[0]
    assert np.array_equal(response["labels"], segmenter.segment(image))
    assert [n.decode() for n in response["class_names"]] == segmenter.class_names
    message = handler_message(lambda: handler.segment_parts([{"image": np.zeros((300, 20, 3), np.uint8)}]))
    assert message == "image: the image is 20x300; this server takes sides up to 256 pixels (its --max-side): resize it"
