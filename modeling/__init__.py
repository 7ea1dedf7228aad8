"""PyTorch model code shared by `train` and `export`: presets, configs, tokenizer, image conversions."""
