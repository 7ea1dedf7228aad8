"""ONNX export and TensorRT engine building (PyTorch side). Filled by the build_engine issue."""
