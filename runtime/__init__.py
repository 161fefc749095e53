"""Serving world: bundles, engines, preprocessing, policy, sessions, gRPC server. Never imports torch on the serving path."""
