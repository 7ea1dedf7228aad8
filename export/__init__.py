"""PyTorch side of deployment: the export wrappers and their descriptors, ONNX export, engine directories (`build_engine`), TensorRT plans."""
