"""Training entry points (PyTorch): the synth base, DiffewS, SLiMe embeddings, the learned mask read-outs, evaluation."""
