"""``xvla.core``: torch-free facts and helpers that every side (agents, runtime, export) may import."""
