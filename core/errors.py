"""The one error type for bad client input (shared by runtime, agents' bridges and core checks)."""

from __future__ import annotations


class InputError(ValueError):
    """Bad client input. ``field`` names it (e.g. ``observation.cameras[1].image``)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
