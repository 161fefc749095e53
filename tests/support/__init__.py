"""Test-only helpers (fakes, certificate authorities, clients reproducing third-party clients)."""
