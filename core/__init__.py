"""Torch-free helpers shared by the runtime, the exporter and the agents (issue 10's ``xvla.core``)."""
