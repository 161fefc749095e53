"""The one error type for bad client input, shared by the service, the bridges and the agent."""

from __future__ import annotations


class InputError(ValueError):
    """Bad client input. ``field`` names it (e.g. ``observation.cameras[1].image``)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
