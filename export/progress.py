"""Progress display for the export steps and the closing summary table (rich).

Exporting the 0.9B model takes minutes per graph; a spinner per step with its elapsed time
tells the user it is alive and where the time goes. Library callers and tests get a silent
reporter that still records every step's duration (they end up in the manifest).
"""

from __future__ import annotations

import contextlib
import io
import logging
import time
import warnings
from dataclasses import dataclass, field
from typing import Iterator, Optional


@dataclass
class StepRecord:
    name: str
    seconds: float
    detail: str = ""


@dataclass
class Reporter:
    """Silent: records step times only."""

    steps: list[StepRecord] = field(default_factory=list)

    @contextlib.contextmanager
    def step(self, name: str) -> Iterator[StepRecord]:
        rec = StepRecord(name, 0.0)
        t0 = time.perf_counter()
        try:
            yield rec
        finally:
            rec.seconds = time.perf_counter() - t0
            self.steps.append(rec)
            self._done(rec)

    def _done(self, rec: StepRecord) -> None:
        pass

    def info(self, message: str) -> None:
        pass

    def warn(self, message: str) -> None:
        pass

    def summary(self, rows: list[dict], title: str) -> None:
        pass

    @property
    def total_seconds(self) -> float:
        return sum(s.seconds for s in self.steps)


class RichReporter(Reporter):
    """A spinner per running step, a check mark with its time when done, a table at the end."""

    def __init__(self, console: Optional[object] = None) -> None:
        super().__init__()
        from rich.console import Console

        self.console = console or Console(stderr=True)

    @contextlib.contextmanager
    def step(self, name: str) -> Iterator[StepRecord]:
        with self.console.status(f"{name} ..."):
            with super().step(name) as rec:
                yield rec

    def _done(self, rec: StepRecord) -> None:
        detail = f"  [dim]{rec.detail}[/dim]" if rec.detail else ""
        self.console.print(f"[green]✓[/green] {rec.name} [dim]({rec.seconds:.1f} s)[/dim]{detail}")

    def info(self, message: str) -> None:
        self.console.print(message)

    def warn(self, message: str) -> None:
        self.console.print(f"[yellow]warning:[/yellow] {message}")

    def summary(self, rows: list[dict], title: str) -> None:
        from rich.table import Table

        if not rows:
            return
        table = Table(title=title)
        for col in rows[0]:
            table.add_column(col, justify="left" if col == "graph" else "right")
        for row in rows:
            table.add_row(*[str(v) for v in row.values()])
        self.console.print(table)


def human_bytes(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} GiB"


@contextlib.contextmanager
def quiet_exporters(verbose: bool = False) -> Iterator[None]:
    """The dynamo ONNX exporter prints progress lines and warnings; keep them out of our progress display."""
    if verbose:
        yield
        return
    buf = io.StringIO()
    loggers = [logging.getLogger(n) for n in ("torch.onnx", "torch.export", "torch._dynamo", "onnxscript")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(buf), contextlib.redirect_stderr(buf):
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, lvl in zip(loggers, levels):
            lg.setLevel(lvl)
