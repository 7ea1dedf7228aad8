"""Optional graph rewrites after export: ONNX Runtime's transformer fusions and fp16 conversion.

Both come from the `onnxruntime.transformers` package (no hand-written graph surgery). The
fusions that only have CUDA kernels (NHWC convolution, GroupNorm, SkipGroupNorm, BiasSplitGelu)
are switched off so the optimised graph still runs on ONNX Runtime's CPU provider; attention
fusion fires on the explicit MatMul-Softmax-MatMul pattern the exporter writes.
"""

from __future__ import annotations

from pathlib import Path

import onnx

from export.onnx_export import IR_VERSION, operator_counts, save_onnx

FUSED_OPERATORS = (
    "Attention",
    "MultiHeadAttention",
    "BiasGelu",
    "FastGelu",
    "Gelu",
    "LayerNormalization",
    "SkipLayerNormalization",
    "BiasAdd",
)


def fuse_operators(path: Path) -> dict[str, int]:
    """Rewrites `path` in place with ONNX Runtime's `unet` fusions; returns the fused-operator counts before -> after."""
    from onnxruntime.transformers.fusion_options import FusionOptions
    from onnxruntime.transformers.optimizer import optimize_model

    before = operator_counts(path)
    options = FusionOptions("unet")
    options.enable_nhwc_conv = False
    options.enable_group_norm = False
    options.enable_skip_group_norm = False
    options.enable_bias_splitgelu = False
    options.enable_packed_kv = False
    options.enable_packed_qkv = False
    optimized = optimize_model(str(path), model_type="unet", optimization_options=options, opt_level=0)
    proto = optimized.model
    proto.ir_version = IR_VERSION
    # The fused operators live in ONNX Runtime's contrib domain; declare it so checkers accept them.
    if not any(o.domain == "com.microsoft" for o in proto.opset_import):
        proto.opset_import.append(onnx.helper.make_opsetid("com.microsoft", 1))
    save_onnx(proto, path)
    after = operator_counts(path)
    return {
        op: f"{before.get(op, 0)} -> {after.get(op, 0)}"
        for op in sorted(set(before) | set(after))
        if op in FUSED_OPERATORS or op in ("MatMul", "Softmax")
    }


def convert_fp16(path: Path) -> None:
    """Converts `path`'s weights and compute to fp16 in place; graph inputs and outputs keep their types."""
    from onnxruntime.transformers.float16 import convert_float_to_float16
    from onnxruntime.transformers.onnx_model import OnnxModel

    original = onnx.load(str(path))
    del original.graph.value_info[:]  # the exporter's fp32 intermediate types would contradict the new ones
    proto = convert_float_to_float16(original, keep_io_types=True)
    converted = OnnxModel(proto)
    converted.topological_sort()  # the casts it inserts around blocked operators (Resize) come unsorted
    proto = converted.model
    proto.ir_version = IR_VERSION
    save_onnx(proto, path)
