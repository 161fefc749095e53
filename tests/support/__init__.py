"""Test-only helpers (fakes of third-party APIs, clients), never imported by product code."""
