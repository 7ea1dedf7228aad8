"""Data without torch: the synthetic world, few-shot episodes, part data, on-disk layouts."""
