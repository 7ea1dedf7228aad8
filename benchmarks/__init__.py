"""Benchmarks: per-stage latency (`latency`, `stage_split`, `latency_report`), agreement with PyTorch, repeatability, query sizes, memory."""
