"""`SegmentationClient`: the served models from Python, over `tritonclient` (HTTP or gRPC).

    client = SegmentationClient("localhost:8000")                  # or ("localhost:8001", protocol="grpc")
    support_id = client.register_support(["a.png"], ["a_mask.png"])
    mask = client.segment(support_id, "query.jpg")                 # (H, W) uint8 in {0, 1}
    labels, class_names = client.segment_parts("horse", "horse.jpg")

Images are file paths (sent as the file's bytes, decoded by the server), PIL images or
(H, W, 3) uint8 arrays (sent as pixels). Errors raise `ServerError` carrying the runtime's
message; `UnknownSupportError` (a subclass) says the id must be registered (again), which
`segment_with` does by itself. Needs only `tritonclient[http]` or `tritonclient[grpc]`: no
PyTriton, no engines.
"""

from __future__ import annotations

import io
import os
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from runtime.images import as_image_list, load_image, load_mask
from runtime.serve.errors import ERROR_CLASSES

# The server's error classes, by name, as the last "Class: message" line of Triton's error text.
ERROR_TAIL = re.compile(rf"({'|'.join(ERROR_CLASSES)}): (.+?)\s*$", re.MULTILINE)


class ServerError(RuntimeError):
    """A request the server refused or failed; `str()` is the runtime's message when there is one."""

    def __init__(self, message: str, status: str | None = None, raw: str | None = None):
        super().__init__(message)
        self.status, self.raw = status, raw


class UnknownSupportError(ServerError):
    """The support id is not registered on the server (nor in its bank store): register it again."""


def server_error(err: Exception) -> ServerError:
    """A tritonclient exception -> ServerError with the runtime's message (the last `Class: message` line)."""
    raw = err.message() if hasattr(err, "message") and callable(err.message) else str(err)
    status = err.status() if hasattr(err, "status") and callable(err.status) else None
    found = ERROR_TAIL.findall(raw or "")
    if not found:
        return ServerError(raw or type(err).__name__, status, raw)
    kind, message = found[-1]
    return (UnknownSupportError if kind == "UnknownSupport" else ServerError)(message, status, raw)


def _file_bytes(path: str | os.PathLike) -> bytes:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such image file: {path}")
    return path.read_bytes()


def _encoded(image) -> tuple[str, np.ndarray]:
    """One image -> ("image", pixels) or ("image_file", BYTES (1,))."""
    if isinstance(image, (str, os.PathLike)):
        return "image_file", np.array([_file_bytes(image)], dtype=object)
    if isinstance(image, np.ndarray):
        return "image", np.ascontiguousarray(image)
    from PIL import Image

    if isinstance(image, Image.Image):  # read as the runtime reads it (EXIF turn, any mode), sent as lossless PNG
        return "image_file", np.array([_png(load_image(image, "image"))], dtype=object)
    raise ValueError(
        f"an image must be a file path, a PIL image or an (H, W, 3) uint8 array, got {type(image).__name__}"
    )


class SegmentationClient:
    """One server (or a load balancer in front of several).

    Args:
        url: "host:port" of the HTTP (default 8000) or gRPC (8001) endpoint.
        protocol: "http" or "grpc".
        timeout_s: per-request network timeout.
    """

    def __init__(self, url: str = "localhost:8000", protocol: str = "http", timeout_s: float = 120.0):
        if protocol not in ("http", "grpc"):
            raise ValueError(f"protocol must be 'http' or 'grpc', got {protocol!r}")
        self.protocol, self.timeout_s = protocol, timeout_s
        if protocol == "http":
            import tritonclient.http as module

            self._client = module.InferenceServerClient(url, connection_timeout=timeout_s, network_timeout=timeout_s)
        else:
            import tritonclient.grpc as module

            self._client = module.InferenceServerClient(url)
        self._module = module

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> SegmentationClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def is_ready(self) -> bool:
        try:
            return bool(self._client.is_server_ready())
        except Exception:  # noqa: BLE001 - unreachable is not ready
            return False

    def infer(self, model: str, inputs: dict[str, np.ndarray], outputs: Sequence[str]) -> dict[str, np.ndarray]:
        """Runs `model` on named numpy inputs -> named outputs; Triton errors -> ServerError."""
        from tritonclient.utils import InferenceServerException, np_to_triton_dtype

        tensors = []
        for name, array in inputs.items():
            tensor = self._module.InferInput(name, list(array.shape), np_to_triton_dtype(array.dtype))
            tensor.set_data_from_numpy(array)
            tensors.append(tensor)
        wanted = [self._module.InferRequestedOutput(name) for name in outputs]
        try:
            if self.protocol == "grpc":
                result = self._client.infer(model, tensors, outputs=wanted, client_timeout=self.timeout_s)
            else:
                result = self._client.infer(model, tensors, outputs=wanted)
        except InferenceServerException as err:
            raise server_error(err) from None
        return {name: result.as_numpy(name) for name in outputs}

    def register_support(self, images: Sequence, masks: Sequence) -> str:
        """Registers a support set (image i with mask i) -> its support id (the same pixels, the same id).

        Arrays of one size go as pixels; otherwise every shot goes as a file (arrays as PNG).
        Mask arrays are read by the runtime's rules first (`runtime.images.load_mask`).
        """
        images, masks = as_image_list(images, "support images"), as_image_list(masks, "support masks")
        if len(images) != len(masks):
            raise ValueError(f"got {len(images)} support images but {len(masks)} masks; pass one mask per image")
        inputs = None
        if all(isinstance(a, np.ndarray) for a in images + masks):
            pixels = [load_image(a, f"support shot {i} image") for i, a in enumerate(images)]
            marks = [load_mask(a, f"support shot {i} mask") for i, a in enumerate(masks)]
            if len({a.shape[:2] for a in pixels + marks}) == 1:
                inputs = {"images": np.stack(pixels), "masks": np.stack(marks)}
        if inputs is None:
            inputs = {
                "image_files": np.array([_file(a, load_image) for a in images], dtype=object),
                "mask_files": np.array([_file(a, load_mask) for a in masks], dtype=object),
            }
        result = self.infer("register_support", inputs, ["support_id"])
        return result["support_id"].reshape(-1)[0].decode()

    def segment(self, support_id: str, image, threshold: float | None = None) -> np.ndarray:
        """The query's mask, (H, W) uint8 in {0, 1} at its own size."""
        kind, array = _encoded(image)
        inputs = {"support_id": np.array([support_id.encode()], dtype=object), kind: array}
        if threshold is not None:
            inputs["threshold"] = np.array([threshold], dtype=np.float32)
        return self.infer("segment", inputs, ["mask"])["mask"]

    def segment_with(self, images: Sequence, masks: Sequence, image, support_id: str | None = None, **kwargs):
        """`segment`, registering the support set first when the server does not know `support_id`.

        -> (mask, support_id): keep the id for the next call.
        """
        if support_id is not None:
            try:
                return self.segment(support_id, image, **kwargs), support_id
            except UnknownSupportError:
                pass
        support_id = self.register_support(images, masks)
        return self.segment(support_id, image, **kwargs), support_id

    def segment_parts(self, name: str, image) -> tuple[np.ndarray, list[str]]:
        """-> ((H, W) uint8 labels, class names; label k is class_names[k]) from `segment_parts_<name>`."""
        kind, array = _encoded(image)
        result = self.infer(f"segment_parts_{name}", {kind: array}, ["labels", "class_names"])
        return result["labels"], [n.decode() for n in result["class_names"].reshape(-1)]


def _file(item, read) -> bytes:
    """A path -> its bytes; a PIL image or an array (read by `read`) -> a PNG of it."""
    if isinstance(item, (str, os.PathLike)):
        return _file_bytes(item)
    return _png(read(item))


def _png(image) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    (image if isinstance(image, Image.Image) else Image.fromarray(image)).save(buffer, format="PNG")
    return buffer.getvalue()
