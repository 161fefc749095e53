"""Generated gRPC stubs and the .proto for package xvla.policy.v1 (see proto/README.md)."""
