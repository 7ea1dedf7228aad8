"""Torch-free inference over engine directories: numpy, pillow and ONNX Runtime / OpenVINO / TensorRT."""
