"""Bridges from protocols people already use (openpi websocket, ZeroMQ, X-VLA /act) to the gRPC service."""
