"""torch module + `GraphSpec` -> a checked ONNX file that the installed ONNX Runtime reads.

Exporter: `torch.onnx.export(..., dynamo=True)` (torch.export + onnxscript), the maintained path:
it records the KV-fusion processors' Python side effects (the bank) as plain graph tensors,
takes dynamic axes from `torch.export.Dim`s derived from the descriptor, and runs onnxscript's
optimizer (constant folding, dead-code removal: the support stream's layers after its last
self-attention disappear here). The file is saved with a pinned IR version, as external data
when it passes protobuf's 2 GB limit, and verified with `onnx.checker` (full check, shape
inference included).
"""

from __future__ import annotations

import collections
import warnings
from pathlib import Path

import onnx
import torch

from runtime.contract import GraphSpec

# onnx 1.23 writes IR 14 by default, ONNX Runtime 1.31-1.32 reads at most 13; opset 20 needs IR >= 9.
IR_VERSION = 10
OPSET = 20
# Protobuf cannot serialise a message of 2 GiB; keep a margin for the graph itself.
EXTERNAL_DATA_ABOVE = 1_800_000_000


def dynamic_shapes(spec: GraphSpec, packed_tail: int = 0) -> tuple:
    """torch.export dynamic shapes from the descriptor's named axes (one `Dim` per name, shared).

    Args:
        packed_tail: the last `packed_tail` inputs are one *args parameter of forward(); their
            specs are nested in one tuple, as torch.export wants.
    """
    dims: dict[str, torch.export.Dim] = {}
    per_input = []
    for t in spec.inputs:
        axes = {}
        for axis, name in t.dynamic_axes.items():
            if t.min_shape[axis] == t.max_shape[axis]:
                continue  # a range of one size (e.g. --max-shots 1) is a static axis to torch.export
            if name not in dims:
                dims[name] = torch.export.Dim(name, min=t.min_shape[axis], max=t.max_shape[axis])
            axes[axis] = dims[name]
        per_input.append(axes or None)
    if packed_tail:
        # Static members of the packed tuple as {} (not None: torch.onnx turns a tuple of Nones into a list).
        packed = tuple(axes or {} for axes in per_input[-packed_tail:])
        return (*per_input[:-packed_tail], packed)
    return tuple(per_input)


def export_onnx(
    module: torch.nn.Module, spec: GraphSpec, sample: dict[str, torch.Tensor], path: Path, packed_tail: int = 0
) -> onnx.ModelProto:
    """Exports `module` called as module(*sample.values()) to `path` and checks it.

    Returns:
        the model proto (without its weights when they went to external data, `<name>.data`).
    """
    args = tuple(sample[n] for n in spec.input_names)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # the exporter's deprecation chatter, not the user's concern
        program = torch.onnx.export(
            module.eval(),
            args,
            dynamo=True,
            opset_version=OPSET,
            input_names=spec.input_names,
            output_names=spec.output_names,
            dynamic_shapes=dynamic_shapes(spec, packed_tail),
            optimize=True,
            verbose=False,
        )
    if _weight_bytes(module) < EXTERNAL_DATA_ABOVE:
        proto = program.model_proto
        proto.ir_version = IR_VERSION
        save_onnx(proto, path)
        return proto
    # Too big for one protobuf: let the exporter stream the weights to one external file, then
    # pin the IR version on the weight-less graph proto (its external references stay valid).
    program.save(str(path), external_data=True)
    proto = onnx.load(str(path), load_external_data=False)
    proto.ir_version = IR_VERSION
    onnx.save_model(proto, str(path))
    onnx.checker.check_model(str(path), full_check=True)
    return proto


def _weight_bytes(module: torch.nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in module.state_dict().values())


def _initializer_bytes(proto: onnx.ModelProto) -> int:
    return sum(len(t.raw_data) or t.ByteSize() for t in proto.graph.initializer)


def save_onnx(proto: onnx.ModelProto, path: Path) -> None:
    """Saves and fully checks `proto`; weights go to `<name>.data` beside it above `EXTERNAL_DATA_ABOVE`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if _initializer_bytes(proto) >= EXTERNAL_DATA_ABOVE:
        onnx.save_model(
            proto, str(path), save_as_external_data=True, all_tensors_to_one_file=True, location=path.name + ".data"
        )
    else:
        onnx.save_model(proto, str(path))
        path.with_name(path.name + ".data").unlink(missing_ok=True)  # a rewrite may have made it unnecessary
    # With a path, the checker reads external data and runs shape inference on the file.
    onnx.checker.check_model(str(path), full_check=True)


def operator_counts(path: Path) -> dict[str, int]:
    """Node count per operator type (top-level graph), e.g. to report fused operators after optimisation."""
    model = onnx.load(str(path), load_external_data=False)
    return dict(collections.Counter(node.op_type for node in model.graph.node).most_common())
