"""What the server does, without the server: support ids, the bank cache and store, and the segmenters.

    service = FewShotService(FewShotSegmenter.from_dir("engines/synth"), BankCache(2 << 30), store)
    support_id = service.register([image], [mask])     # encodes once; the same pixels give the same id
    mask = service.segment(support_id, query)          # any replica sharing the store can answer

Thread-safe: Triton's model instances call one service from several threads. Registering an
id that is being encoded by another thread waits for that encode instead of repeating it.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import re
import threading
from collections.abc import Iterator, Sequence

import numpy as np

from runtime.fewshot import FewShotSegmenter, SupportBank
from runtime.images import ImageLike, load_image, load_mask
from runtime.serve.bank_cache import BankCache
from runtime.serve.bank_store import BankStore
from runtime.serve.errors import BadRequest, UnknownSupport

LOG = logging.getLogger("runtime.serve")
SUPPORT_ID = re.compile(r"[0-9a-f]{64}")
ID_VERSION = b"diffews-support-id/1"


def support_id(model_hash: str, images: Sequence[np.ndarray], masks: Sequence[np.ndarray]) -> str:
    """The content address of a support set: sha256 over the model hash and every shot's pixels.

    Args:
        images: (H_i, W_i, 3) uint8 per shot, as `runtime.images.load_image` reads them.
        masks: (H_i, W_i) uint8 in {0, 1} per shot (`load_mask`), so a mask saved as 0/255 and
            the same mask saved as 0/1 give the same id.
    """
    digest = hashlib.sha256(ID_VERSION)
    digest.update(model_hash.encode())
    digest.update(len(images).to_bytes(4, "little"))
    for image, mask in zip(images, masks, strict=True):
        for array in (image, mask):
            digest.update(np.asarray(array.shape, dtype="<u4").tobytes())
            digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()


def check_support_id(value: str) -> str:
    if not SUPPORT_ID.fullmatch(value):
        shown = value if len(value) <= 80 else value[:77] + "..."
        raise BadRequest(f"support_id {shown!r} is malformed: pass the 64 hex digits register_support returned")
    return value


class FewShotService:
    """DiffewS behind support ids.

    Args:
        segmenter: the engines (thread-safe; its own cached support set is not used).
        cache: banks in memory on this replica.
        store: banks shared between replicas and restarts (None: memory only).
    """

    def __init__(self, segmenter: FewShotSegmenter, cache: BankCache, store: BankStore | None = None):
        self.segmenter, self.cache, self.store = segmenter, cache, store
        self.model_hash: str = segmenter.manifest.model["hash"]
        self.counts = {"encodes": 0, "store_reads": 0, "store_writes": 0, "store_errors": 0}
        self._counts_lock = threading.Lock()
        self._locks: dict[str, list] = {}  # id -> [lock, threads using it], while an id is registered or loaded
        self._locks_lock = threading.Lock()

    def _count(self, what: str) -> None:
        with self._counts_lock:
            self.counts[what] += 1

    @contextlib.contextmanager
    def _exclusive(self, key: str) -> Iterator[None]:
        """Holds the lock of one id: threads registering or loading the same id take turns."""
        with self._locks_lock:
            entry = self._locks.setdefault(key, [threading.Lock(), 0])
            entry[1] += 1
        try:
            with entry[0]:
                yield
        finally:
            with self._locks_lock:
                entry[1] -= 1
                if entry[1] == 0:
                    del self._locks[key]

    def _from_store(self, key: str) -> SupportBank | None:
        if self.store is None:
            return None
        try:
            arrays = self.store.read(key)
            if arrays is None:
                return None
            bank = self.segmenter.make_bank(arrays)
        except (ValueError, OSError) as err:  # a damaged or foreign file: re-registering rewrites it
            LOG.warning("bank store: %s", err)
            self._count("store_errors")
            return None
        self._count("store_reads")
        return bank

    def register(self, images: Sequence[ImageLike], masks: Sequence[ImageLike]) -> str:
        """Encodes a support set unless its id is cached or stored; -> the id.

        Raises BadRequest with the runtime's message for a bad image, mask or shot count.
        """
        try:
            self.segmenter.check_shots(len(images), len(masks))
            images = [load_image(image, f"support shot {i} image") for i, image in enumerate(images)]
            masks = [load_mask(mask, f"support shot {i} mask") for i, mask in enumerate(masks)]
        except ValueError as err:
            raise BadRequest(str(err)) from None
        key = support_id(self.model_hash, images, masks)
        if key in self.cache:
            return key
        with self._exclusive(key):  # a concurrent register of the same set waits here, then finds it
            if key in self.cache:
                return key
            bank = self._from_store(key)
            if bank is None:
                try:
                    bank = self.segmenter.encode_support(images, masks)
                except ValueError as err:
                    raise BadRequest(str(err)) from None
                self._count("encodes")
                if self.store is not None:  # a file there now could not be read (_from_store): replace it
                    self.store.write(key, bank.arrays, {"backend": self.segmenter.backend}, replace=key in self.store)
                    self._count("store_writes")
            try:
                self.cache.put(key, bank)
            except ValueError as err:
                if self.store is None:  # nowhere to keep it: the id would be useless
                    raise BadRequest(str(err)) from None
                LOG.warning("%s; support %s is read from the bank store on every query", err, key[:12])
        return key

    def support(self, key: str) -> SupportBank:
        """The bank of a registered id: from the cache, else the store (then cached)."""
        check_support_id(key)
        bank = self.cache.get(key)
        if bank is not None:
            return bank
        with self._exclusive(key):  # one store read per id, however many queries ask at once
            bank = self.cache.peek(key) or self._from_store(key)
            if bank is None:
                where = "this server's bank cache" + (" or the bank store" if self.store else "")
                raise UnknownSupport(
                    f"support id {key[:12]}... is not registered ({where} does not hold it): "
                    "call register_support with its images and masks, then retry"
                )
            if key not in self.cache:
                with contextlib.suppress(ValueError):  # larger than the cache: read from the store each time
                    self.cache.put(key, bank)
        return bank

    def segment(self, key: str, image: ImageLike, threshold: float | None = None) -> np.ndarray:
        """(H, W) uint8 in {0, 1}: the query's mask against the support set `key`."""
        bank = self.support(key)
        try:
            return self.segmenter.segment(image, threshold, support=bank)
        except ValueError as err:
            raise BadRequest(str(err)) from None
