"""The export failures every policy kind reports the same way (``xvla-export`` maps them to exit codes)."""

from __future__ import annotations

from typing import Any


class BundleExportError(RuntimeError):
    """Bad export request (names the option) or an unusable destination (exit 2)."""


class ParityError(RuntimeError):
    """The engines disagree with the PyTorch model beyond tolerance; carries the report (exit 1)."""

    def __init__(self, report: Any) -> None:
        super().__init__(f"parity gate failed ({report.backend}):\n{report.format()}")
        self.report = report
