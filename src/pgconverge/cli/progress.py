"""Rich progress for the runner: one line per step, a bar with rows/s for batched work."""

from __future__ import annotations

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from pgconverge.operations.base import Step


class RichProgress:
    def __init__(self, console: Console, quiet: bool = False):
        self.console, self.quiet = console, quiet
        self.bar: Progress | None = None
        self.task = None

    def step_started(self, step: Step) -> None:
        if self.quiet:
            return
        self.console.print(f"[dim]…[/] {step.id}: {step.op.description}", highlight=False)

    def note(self, text: str) -> None:
        if not self.quiet:
            self.console.print(text, highlight=False, soft_wrap=True)

    def step_finished(self, step: Step, status: str, seconds: float) -> None:
        if self.bar is not None:
            self.bar.stop()
            self.bar = None
        if self.quiet or status == "interrupted":  # the command prints one line saying where and how to resume
            return
        mark = "[green]✓[/]" if status == "done" else "[dim]=[/]"
        suffix = f" ({seconds:.2f}s)" if status == "done" else " (already done)"
        self.console.print(f"{mark} {step.id}{suffix}", highlight=False)

    def batch(self, step: Step, rows_done: int, total: int, rows_per_s: float) -> None:
        if self.quiet:
            return
        if self.bar is None:
            self.bar = Progress(TextColumn("  {task.description}"), BarColumn(), MofNCompleteColumn(),
                                TextColumn("{task.fields[rate]}"), TimeRemainingColumn(), console=self.console,
                                transient=True)
            self.bar.start()
            self.task = self.bar.add_task(step.id, total=total, rate="")
        self.bar.update(self.task, completed=rows_done, total=max(total, rows_done),
                        rate=f"{rows_per_s:,.0f} rows/s")
