"""Small helpers the stages share: all-or-nothing outputs and the command-line boundary."""

from __future__ import annotations

import json
import os
import shutil
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


@contextmanager
def atomic_output(target: str | Path) -> Iterator[Path]:
    """Yield a temporary path next to `target`; move it onto `target` only on success.

    A stage that fails or is killed half-way leaves the previous output (or none), never a
    half-written one: readers see either the old complete file or directory, or the new one.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    for leftover in target.parent.glob(f".{target.name}.tmp-*"):
        _remove(leftover)  # from a process that was killed before it could clean up
    temporary = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    try:
        yield temporary
    except BaseException:
        _remove(temporary)
        raise
    if temporary.is_dir():
        _remove(target)  # os.replace cannot replace a non-empty directory
    os.replace(temporary, target)


def write_json(path: str | Path, document: Any) -> None:
    """Write `document` as indented JSON, atomically."""
    with atomic_output(path) as temporary:
        temporary.write_text(json.dumps(document, indent=2) + "\n")


def run_stage(main: Callable[[], None]) -> None:
    """Run a stage's `main`; report bad input as one line on stderr and exit 1.

    Bad input raises ValueError or FileNotFoundError with a message that names the file or
    key; the user needs that line, not a traceback. Anything else is a bug and keeps its
    traceback.
    """
    try:
        main()
    except (ValueError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(1)
