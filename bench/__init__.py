"""Benchmark scripts that print figures (throughput, latency, memory); not tests."""
