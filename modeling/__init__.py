"""PyTorch models: DiffewS with KV fusion, SLiMe, the mask read-outs, presets, folders, and `predictor` (the runtime API in PyTorch)."""
