"""Latency and accuracy benchmarks. Filled by the benchmark issues."""
