"""Seeded, bounded fuzzing of the gRPC service and the bridges (the long run: python -m xvla.benchmarks.fuzz)."""
