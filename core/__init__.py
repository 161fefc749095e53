"""xvla.core: torch-free pieces every side (runtime, agents, export) may import."""
