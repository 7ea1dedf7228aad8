"""Torch-free inference: numpy, pillow and ONNX Runtime / TensorRT only. Filled by the runtime issue."""
