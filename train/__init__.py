"""Training entry points (PyTorch): the synth base (`python -m train.base`), later DiffewS and SLiMe."""
