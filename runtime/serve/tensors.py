"""Request tensors -> runtime inputs, results -> response tensors, for each served model.

Every image input comes either as pixels (`image`: UINT8 (H, W, 3)) or as an encoded file
(`image_file`: BYTES (1,), PNG / JPEG / ... as `runtime.images` reads files); support sets as
`images` UINT8 (S, H, W, 3) with `masks` UINT8 (S, H, W) when the shots share a size, or as
`image_files` / `mask_files` BYTES (S,). A file's size is checked from its header before it is
decoded, so an oversized upload is refused without decoding it.

The handlers take Triton's requests as name -> numpy array mappings and return one
name -> array dict per request: they need no PyTriton, so they are tested on plain dicts.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image, UnidentifiedImageError

from runtime.parts import PartSegmenter
from runtime.serve.errors import BadRequest
from runtime.serve.service import FewShotService, check_support_id

Request = Mapping[str, np.ndarray]
SizeCheck = Callable[[int, int, str], None]  # (width, height, what) -> None or ValueError


@dataclass(frozen=True)
class TensorDef:
    """One model input or output as Triton's config declares it (-1: any size)."""

    name: str
    dtype: type  # numpy scalar type; bytes for Triton's BYTES
    shape: tuple[int, ...]
    optional: bool = False


IMAGE = TensorDef("image", np.uint8, (-1, -1, 3), optional=True)
IMAGE_FILE = TensorDef("image_file", bytes, (1,), optional=True)
REGISTER_INPUTS = (
    TensorDef("images", np.uint8, (-1, -1, -1, 3), optional=True),
    TensorDef("masks", np.uint8, (-1, -1, -1), optional=True),
    TensorDef("image_files", bytes, (-1,), optional=True),
    TensorDef("mask_files", bytes, (-1,), optional=True),
)
REGISTER_OUTPUTS = (TensorDef("support_id", bytes, (1,)), TensorDef("shots", np.int32, (1,)))
SEGMENT_INPUTS = (
    TensorDef("support_id", bytes, (1,)),
    IMAGE,
    IMAGE_FILE,
    TensorDef("threshold", np.float32, (1,), optional=True),
)
SEGMENT_OUTPUTS = (TensorDef("mask", np.uint8, (-1, -1)),)
PARTS_INPUTS = (IMAGE, IMAGE_FILE)
PARTS_OUTPUTS = (TensorDef("labels", np.uint8, (-1, -1)), TensorDef("class_names", bytes, (-1,)))


def open_image_file(data, what: str, check_size: SizeCheck | None) -> Image.Image:
    """Encoded image bytes -> a decoded PIL image, its size checked (from the header) before decoding."""
    if not isinstance(data, (bytes, bytearray, np.bytes_)):
        raise BadRequest(f"{what}: expected the bytes of an image file, got {type(data).__name__}")
    try:
        image = Image.open(io.BytesIO(bytes(data)))  # reads the header only
    except Image.DecompressionBombError as err:
        raise BadRequest(f"{what}: larger than the decompression-bomb limit ({err}); downscale it first") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise BadRequest(f"{what} is not a readable image file ({err})") from None
    if check_size is not None:
        as_bad_request(lambda: check_size(*image.size, what))
    try:
        image.load()
    except (OSError, SyntaxError, ValueError) as err:  # a truncated or corrupt body behind a good header
        raise BadRequest(f"{what} is not a readable image file ({err})") from None
    return image


def _one_of(request: Request, pixels: str, files: str, what: str) -> str:
    given = [name for name in (pixels, files) if name in request]
    if len(given) != 1:
        raise BadRequest(
            f"{what}: send exactly one of the inputs {pixels!r} (pixels) or {files!r} (encoded files), got "
            + (" and ".join(repr(g) for g in given) if given else "neither")
        )
    return given[0]


def request_image(request: Request, what: str, check_size: SizeCheck | None) -> np.ndarray | Image.Image:
    """The request's `image` (pixels) or `image_file` (an encoded file)."""
    if _one_of(request, "image", "image_file", what) == "image":
        return request["image"]
    files = request["image_file"]
    if files.size != 1:
        raise BadRequest(f"{what}: image_file holds {files.size} elements; send one file")
    return open_image_file(files.reshape(-1)[0], what, check_size)


def support_inputs(
    request: Request, check_size: SizeCheck, check_shots: Callable[[int, int], None]
) -> tuple[list, list]:
    """(images, masks) of a register_support request, one entry per shot; the counts checked before decoding."""
    kind = _one_of(request, "images", "image_files", "support")
    if kind == "images":
        if "masks" not in request:
            raise BadRequest("support: images (pixels) need masks (pixels), UINT8 (S, H, W), one per image")
        images, masks = request["images"], request["masks"]
        as_bad_request(lambda: check_shots(images.shape[0], masks.shape[0]))
        return [images[i] for i in range(images.shape[0])], [masks[i] for i in range(masks.shape[0])]
    if "mask_files" not in request:
        raise BadRequest("support: image_files need mask_files, one encoded mask file per image")
    as_bad_request(lambda: check_shots(request["image_files"].size, request["mask_files"].size))
    images = [open_image_file(d, f"support shot {i} image", check_size) for i, d in enumerate(request["image_files"])]
    masks = [open_image_file(d, f"support shot {i} mask", check_size) for i, d in enumerate(request["mask_files"])]
    return images, masks


def text(request: Request, name: str) -> str:
    values = request[name].reshape(-1)
    if values.size != 1:
        raise BadRequest(f"{name} holds {values.size} elements; send one")
    value = values[0]
    try:
        return value.decode("ascii") if isinstance(value, (bytes, np.bytes_)) else str(value)
    except UnicodeDecodeError:
        raise BadRequest(f"{name} is not ASCII text; pass the id register_support returned") from None


def threshold(request: Request) -> float | None:
    if "threshold" not in request:
        return None
    values = request["threshold"].reshape(-1)
    if values.size != 1:
        raise BadRequest(f"threshold holds {values.size} elements; send one number or leave it out")
    return float(values[0])


def as_bad_request(call: Callable):
    """Runs `call`; a runtime ValueError becomes BadRequest with the same message."""
    try:
        return call()
    except BadRequest:
        raise
    except ValueError as err:
        raise BadRequest(str(err)) from None


class FewShotHandlers:
    """`register_support` and `segment` over a `FewShotService`."""

    def __init__(self, service: FewShotService):
        self.service = service
        self.check_size = service.segmenter.check_size

    def register_support(self, requests: Sequence[Request]) -> list[dict[str, np.ndarray]]:
        responses = []
        for request in requests:
            images, masks = support_inputs(request, self.check_size, self.service.segmenter.check_shots)
            key = self.service.register(images, masks)
            responses.append(
                {"support_id": np.array([key.encode()], dtype=object), "shots": np.array([len(images)], np.int32)}
            )
        return responses

    def segment(self, requests: Sequence[Request]) -> list[dict[str, np.ndarray]]:
        responses = []
        for request in requests:
            key = check_support_id(text(request, "support_id"))
            image = request_image(request, "query", self.check_size)
            mask = self.service.segment(key, image, threshold(request))
            responses.append({"mask": mask})
        return responses


class PartsHandler:
    """`segment_parts_<name>` over a `PartSegmenter`.

    Args:
        max_side: the longest image side accepted (a part segmenter resizes any image to its
            output size, so the bound is the server's, against oversized uploads).
    """

    def __init__(self, segmenter: PartSegmenter, max_side: int = 4096):
        self.segmenter, self.max_side = segmenter, max_side
        self.class_names = np.array([n.encode() for n in segmenter.class_names], dtype=object)

    def check_size(self, width: int, height: int, what: str) -> None:
        if not (1 <= width <= self.max_side and 1 <= height <= self.max_side):
            raise BadRequest(
                f"{what}: the image is {width}x{height}; this server takes sides up to {self.max_side} pixels "
                "(its --max-side): resize it"
            )

    def segment_parts(self, requests: Sequence[Request]) -> list[dict[str, np.ndarray]]:
        responses = []
        for request in requests:
            image = request_image(request, "image", self.check_size)
            if isinstance(image, np.ndarray) and image.ndim == 3:
                self.check_size(image.shape[1], image.shape[0], "image")
            labels = as_bad_request(lambda image=image: self.segmenter.segment(image))
            responses.append({"labels": labels, "class_names": self.class_names})
        return responses
