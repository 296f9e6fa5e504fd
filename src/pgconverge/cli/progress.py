"""Rich progress for the runner: one line per step, a bar with rows/s for batched work."""

from __future__ import annotations

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from pgconverge.operations.base import Step


class RichProgress:
    def __init__(self, console: Console, quiet: bool = False):
        self.console, self.quiet = console, quiet
        self.bar: Progress | None = None
        self.bar_label: str | None = None
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
            self.bar_label = None
        if self.quiet or status == "interrupted":  # the command prints one line saying where and how to resume
            return
        if status == "proves nothing":  # done, but its check compared nothing: not a pass
            self.console.print(f"[yellow]?[/] {step.id} ({seconds:.2f}s): done, but its check compared nothing and "
                               "proves nothing", highlight=False)
            return
        mark = "[green]✓[/]" if status == "done" else "[dim]=[/]"
        suffix = f" ({seconds:.2f}s)" if status == "done" else " (already done)"
        self.console.print(f"{mark} {step.id}{suffix}", highlight=False)

    def checking(self, step: Step, what: str, done: int, total: int, unit: str) -> None:
        """Progress of a long check (the RLS comparison: identities done of the sample). On a terminal a bar;
        elsewhere a plain line at each quarter, so a log shows it is moving without a line per identity."""
        if self.quiet or total <= 0:
            return
        if not self.console.is_terminal:
            if done == total or done * 4 // total != (done - 1) * 4 // total:
                self.console.print(f"  {what}: {done:,} of {total:,} {unit}", highlight=False)
            return
        if self.bar is None or self.bar_label != what:
            if self.bar is not None:
                self.bar.stop()
            self.bar = Progress(TextColumn("  {task.description}"), BarColumn(), MofNCompleteColumn(),
                                TextColumn(unit), TimeRemainingColumn(), console=self.console, transient=True)
            self.bar.start()
            self.bar_label = what
            self.task = self.bar.add_task(what, total=total)
        self.bar.update(self.task, completed=done, total=total)

    def batch(self, step: Step, rows_done: int, total: int, rows_per_s: float) -> None:
        if self.quiet:
            return
        if self.bar is None:
            self.bar = Progress(TextColumn("  {task.description}"), BarColumn(), MofNCompleteColumn(),
                                TextColumn("{task.fields[rate]}"), TimeRemainingColumn(), console=self.console,
                                transient=True)
            self.bar.start()
            self.bar_label = None
            self.task = self.bar.add_task(step.id, total=total, rate="")
        self.bar.update(self.task, completed=rows_done, total=max(total, rows_done),
                        rate=f"{rows_per_s:,.0f} rows/s")
