"""Latency, closed-loop and fleet benchmarks."""
