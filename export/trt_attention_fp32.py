"""TensorRT network pass: keep attention (Q K^T, its scaling, softmax, probabilities x V) in fp32 in an fp16 engine.

SD 2.1's attention scores overflow fp16 (the model sets `upcast_attention` for this reason; a
known cause of black images in fp16 engines). This pass finds every softmax of the parsed
network, walks up to the MatMul that produced its scores (through scaling, reshape and cast
layers) and down to the MatMul that applies it to V, and pins those layers and their outputs to
fp32. With the builder's precision constraints set to "obey", the rest of the network runs fp16.

Standalone on purpose (no imports from this project): `export.tensorrt_build` runs it through
Polygraphy's API, and engine directories carry a copy for `polygraphy convert --trt-npps`.
"""

from __future__ import annotations

import importlib
from collections import defaultdict

# Layers that sit between the score MatMul and the softmax in exported attention graphs.
_PASS_THROUGH = ("ELEMENTWISE", "SCALE", "SHUFFLE", "CAST", "UNARY")


def attention_layers(network, trt) -> list:
    """The layers of every attention block: score MatMul, the layers up to the softmax, softmax, MatMul with V."""
    layers = [network.get_layer(i) for i in range(network.num_layers)]
    producer, consumers = {}, defaultdict(list)
    for layer in layers:
        for k in range(layer.num_outputs):
            producer[layer.get_output(k).name] = layer
        for k in range(layer.num_inputs):
            tensor = layer.get_input(k)
            if tensor is not None:
                consumers[tensor.name].append(layer)
    kind = trt.LayerType
    passing = {getattr(kind, name) for name in _PASS_THROUGH}

    def computed_input(layer):
        """The input that is not a constant (the scale of `scores * scale` is a CONSTANT layer)."""
        for k in range(layer.num_inputs):
            tensor = layer.get_input(k)
            if tensor is not None and tensor.name in producer and producer[tensor.name].type != kind.CONSTANT:
                return tensor
        return None

    chosen: dict[str, object] = {}
    for softmax in (layer for layer in layers if layer.type == kind.SOFTMAX):
        path, tensor = [softmax], computed_input(softmax)
        while tensor is not None:
            layer = producer[tensor.name]
            if layer.type == kind.MATRIX_MULTIPLY:
                path.append(layer)
                break
            if layer.type not in passing:
                break
            path.append(layer)
            tensor = computed_input(layer)
        path += [c for c in consumers[softmax.get_output(0).name] if c.type == kind.MATRIX_MULTIPLY]
        chosen.update((layer.name, layer) for layer in path)
    return list(chosen.values())


def postprocess(network, trt=None):
    """Polygraphy's network post-processing hook: pins the attention layers to fp32; returns their count."""
    trt = trt or importlib.import_module("tensorrt")
    layers = attention_layers(network, trt)
    for layer in layers:
        layer.precision = trt.float32
        for k in range(layer.num_outputs):
            layer.set_output_type(k, trt.float32)
    return len(layers)
