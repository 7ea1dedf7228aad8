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
import json
import logging
import re
import threading
from collections.abc import Iterator, Sequence

import numpy as np

from runtime.fewshot import FewShotSegmenter, SupportBank
from runtime.images import ImageLike, load_image, load_mask
from runtime.sections import SUPPORT_ENCODER
from runtime.serve.bank_cache import BankCache
from runtime.serve.bank_store import BankStore
from runtime.serve.errors import BadRequest, UnknownSupport

LOG = logging.getLogger("runtime.serve")
SUPPORT_ID = re.compile(r"[0-9a-f]{64}")
ID_VERSION = b"diffews-support-id/1"


def bank_source(segmenter: FewShotSegmenter) -> str:
    """What a bank depends on besides the pixels: the model, the support encoder's files, the backend
    and the support selection.

    Replicas with the same engines and backend share ids and stored banks; a replica built with
    other export options (precision, resolution, a selection rule) or on another backend gets ids
    of its own rather than banks that would not give its own masks. Engines that keep every token
    (rule "all") give the ids they gave before the selection existed.
    """
    entry = segmenter.manifest.graph(SUPPORT_ENCODER)
    digest = hashlib.sha256(segmenter.manifest.model["hash"].encode())
    for name, sha in sorted(entry.files.items()):
        digest.update(f"\0{name}\0{sha}".encode())
    digest.update(f"\0{segmenter.backend}".encode())
    if segmenter.selection.rule != "all":
        digest.update(f"\0{json.dumps(segmenter.selection.to_json(), sort_keys=True)}".encode())
    return digest.hexdigest()


def support_id(source: str, images: Sequence[np.ndarray], masks: Sequence[np.ndarray]) -> str:
    """The content address of a support set: sha256 over `bank_source` and every shot's pixels.

    Args:
        images: (H_i, W_i, 3) uint8 per shot, as `runtime.images.load_image` reads them.
        masks: (H_i, W_i) uint8 in {0, 1} per shot (`load_mask`), so a mask saved as 0/255 and
            the same mask saved as 0/1 give the same id.
    """
    digest = hashlib.sha256(ID_VERSION)
    digest.update(source.encode())
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
        self.source = bank_source(segmenter)
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
            stored = self.store.read(key)
            if stored is None:
                return None
            bank = self.segmenter.restore_bank(*stored)
        except (ValueError, OSError) as err:  # a damaged or foreign file: re-registering rewrites it
            LOG.warning("bank store: %s", err)
            self._count("store_errors")
            return None
        self._count("store_reads")
        return bank

    def _to_store(self, key: str, bank: SupportBank) -> None:
        """Writes the bank (over a damaged file if one is there); a failed write is logged, not fatal."""
        if self.store is None:
            return
        try:
            meta = {"backend": self.segmenter.backend, "support_shots": str(bank.shots), "selection": bank.selection}
            self.store.write(key, bank.arrays, meta, replace=True)
        except OSError as err:  # disk full, read-only mount: this replica still serves it from memory
            LOG.warning("bank store: cannot write support %s: %s", key[:12], err)
            self._count("store_errors")
            return
        self._count("store_writes")

    def _check_fits(self, bank: SupportBank) -> None:
        try:
            self.cache.check_fits(bank)
        except ValueError as err:
            raise BadRequest(str(err)) from None

    def register(self, images: Sequence[ImageLike], masks: Sequence[ImageLike]) -> str:
        """Encodes a support set unless its id is cached or stored; -> the id.

        Raises BadRequest with the runtime's message for a bad image, mask or shot count.
        """
        try:
            self.segmenter.check_shots(len(images), len(masks))
        except ValueError as err:
            raise BadRequest(str(err)) from None
        pixels, marks = [], []
        for i, (image, mask) in enumerate(zip(images, masks)):  # read as encode_support reads them
            try:
                pixels.append(load_image(image, "support image"))
                marks.append(load_mask(mask, "support mask"))
            except ValueError as err:
                raise BadRequest(f"support shot {i}: {err}") from None
        key = support_id(self.source, pixels, marks)
        with self._exclusive(key):  # a concurrent register of the same set waits here, then finds it
            bank = self.cache.peek(key)
            stored = self.store is not None and key in self.store
            if bank is not None and (self.store is None or stored):
                return key
            if bank is None:
                bank = self._from_store(key) if stored else None
            if bank is None:
                try:
                    bank = self.segmenter.encode_support(pixels, marks)
                except ValueError as err:
                    raise BadRequest(str(err)) from None
                self._count("encodes")
                self._check_fits(bank)  # before the store: a bank no replica could cache is refused
                self._to_store(key, bank)
            elif not stored:  # cached, but its file was deleted (a retention policy): write it again
                self._to_store(key, bank)
            self.cache.put(key, bank)
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
            with contextlib.suppress(ValueError):  # larger than a cache made smaller since: served uncached
                self.cache.put(key, bank)
        return bank

    def segment(self, key: str, image: ImageLike, threshold: float | None = None) -> np.ndarray:
        """(H, W) uint8 in {0, 1}: the query's mask against the support set `key`."""
        bank = self.support(key)
        try:
            return self.segmenter.segment(image, threshold, support=bank)
        except ValueError as err:
            raise BadRequest(str(err)) from None
