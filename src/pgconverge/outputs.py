"""Whether files can be written where a command is told to write them, checked before anything is written."""

from __future__ import annotations

import os
from pathlib import Path


def cannot_write(path: Path, *, make_parents: bool) -> str | None:
    """Why the file PATH cannot be written, or None. MAKE_PARENTS: missing directories above it would be created."""
    if path.is_dir():
        return f"{path} is a directory"
    if path.exists():
        if not path.is_file():
            return f"{path} is not a regular file"
        return None if os.access(path, os.W_OK) else f"{path} is not writable"
    d = path.parent
    while not d.exists() and d != d.parent:
        if not make_parents:
            return f"directory {d} does not exist"
        d = d.parent
    if not d.is_dir():
        return f"{d} is not a directory"
    return None if os.access(d, os.W_OK | os.X_OK) else f"directory {d} is not writable"


def cannot_make_dir(d: Path) -> str | None:
    """Why files cannot be written in the directory D (made with its missing parents where need be), or None."""
    if d.exists() and not d.is_dir():
        return f"{d} is not a directory"
    if d.is_dir():
        return None if os.access(d, os.W_OK | os.X_OK) else f"directory {d} is not writable"
    return cannot_write(d, make_parents=True)


def first_unwritable(paths, *, make_parents: bool) -> tuple[Path, str] | None:
    """(path, why) of the first of PATHS that cannot be written, or None."""
    for p in paths:
        why = cannot_write(Path(p), make_parents=make_parents)
        if why is not None:
            return Path(p), why
    return None
