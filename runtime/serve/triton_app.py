"""The served models on a PyTriton `Triton` instance: names, tensors, instance counts.

| model | inputs | outputs |
| --- | --- | --- |
| register_support | images UINT8 (S, H, W, 3) + masks UINT8 (S, H, W), or image_files + mask_files BYTES (S,) | support_id BYTES (1,), shots INT32 (1,) |
| segment | support_id BYTES (1,); image UINT8 (H, W, 3) or image_file BYTES (1,); threshold FP32 (1,), optional | mask UINT8 (H, W) |
| segment_parts_NAME | image UINT8 (H, W, 3) or image_file BYTES (1,) | labels UINT8 (H, W), class_names BYTES (K,) |

No dynamic batching: each request runs the single-query graph. Engines built with
`--query-batch` have a batched one, but requests would have to share a support set and a size
to use it, and on a CPU it bought 2x at best (ONNX Runtime) and lost on OpenVINO
(docs/benchmarks.md, batched queries); concurrency comes from `instances` model instances
sharing one thread-safe segmenter.
"""

from __future__ import annotations

from collections.abc import Sequence

from runtime.serve.tensors import (
    PARTS_INPUTS,
    PARTS_OUTPUTS,
    REGISTER_INPUTS,
    REGISTER_OUTPUTS,
    SEGMENT_INPUTS,
    SEGMENT_OUTPUTS,
    FewShotHandlers,
    PartsHandler,
    TensorDef,
)

PARTS_MODEL_PREFIX = "segment_parts_"


def _tensors(defs: Sequence[TensorDef]) -> list:
    from pytriton.model_config import Tensor

    return [Tensor(name=d.name, dtype=d.dtype, shape=d.shape, optional=d.optional) for d in defs]


def bind_models(triton, fewshot: FewShotHandlers | None, parts: dict[str, PartsHandler], instances: int) -> list[str]:
    """Binds every model to `triton` (a started-or-not `pytriton.triton.Triton`); -> the model names."""
    from pytriton.model_config import ModelConfig

    config = ModelConfig(batching=False)
    names = []

    def bind(name, function, inputs, outputs):
        triton.bind(
            model_name=name,
            infer_func=[function] * instances,  # one instance per entry, all sharing the engines
            inputs=_tensors(inputs),
            outputs=_tensors(outputs),
            config=config,
            strict=True,
        )
        names.append(name)

    if fewshot is not None:
        bind("register_support", fewshot.register_support, REGISTER_INPUTS, REGISTER_OUTPUTS)
        bind("segment", fewshot.segment, SEGMENT_INPUTS, SEGMENT_OUTPUTS)
    for name, handler in parts.items():
        bind(PARTS_MODEL_PREFIX + name, handler.segment_parts, PARTS_INPUTS, PARTS_OUTPUTS)
    return names
