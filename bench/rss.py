"""Peak resident memory of this process, measured per stretch of work (Linux /proc)."""

from __future__ import annotations

from pathlib import Path


def _status(field: str) -> float | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return round(int(line.split()[1]) / 1024, 1)  # kB → MB
    except OSError:
        return None
    return None


def reset_peak() -> float | None:
    """Start a new peak (writing 5 to clear_refs resets VmHWM to the current RSS); returns the RSS now, in MB."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return None
    return _status("VmRSS")


def peak_mb() -> float | None:
    """The highest RSS since the last reset_peak(), in MB."""
    return _status("VmHWM")
