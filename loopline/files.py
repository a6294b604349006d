"""Small helpers the stages share: all-or-nothing outputs, reading back what a stage wrote,
and the command-line boundary."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import signal
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

# Errors of writing that a user can fix, and how; anything else keeps its traceback.
WRITE_ERRORS = {
    errno.ENOSPC: "free some space on that file system, then re-run",
    errno.EDQUOT: "free some space (or raise the disk quota), then re-run",
    errno.EACCES: "make it writable (or work in a copy you own), then re-run",
    errno.EPERM: "make it writable (or work in a copy you own), then re-run",
    errno.EROFS: "the file system is read-only: work in a writable copy, then re-run",
}


class WriteError(OSError):
    """Writing an output failed (as opposed to reading an input)."""


class StageError(Exception):
    """A failure that is neither bad input nor a bug (a lost peer, say): one line, exit 1."""


class Interrupted(BaseException):
    """SIGINT or SIGTERM arrived: unwinds like KeyboardInterrupt, so temporaries are removed."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def remove_path(path: Path) -> None:
    """Remove the file, link or folder (with what it holds) at `path`, if any."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def write_error(error: BaseException, path: str | Path) -> OSError | None:
    """`error` as a WriteError naming the file (or else `path`), if it is one of
    WRITE_ERRORS; else None.

    Python's write() errors carry no file name, and TensorFlow's (ResourceExhaustedError
    from a TFRecordWriter or a SavedModel export) are not OSErrors at all: only their
    message, "<file>; No space left on device", says what happened.
    """
    if isinstance(error, OSError) and error.errno in WRITE_ERRORS:
        return WriteError(error.errno, error.strerror, error.filename or str(path))
    if not any(kind.__name__ == "OpError" for kind in type(error).__mro__):
        return None  # e.g. a ValueError about an input that merely quotes an OSError
    message = str(error)
    for code in WRITE_ERRORS:
        if f"; {os.strerror(code)}" in message:
            filename = message.split(f"; {os.strerror(code)}")[0].splitlines()[-1]
            return WriteError(code, os.strerror(code), filename or str(path))
    return None


@contextmanager
def atomic_output(target: str | Path) -> Iterator[Path]:
    """Yield a temporary path next to `target`; move it onto `target` only on success.

    A stage that fails or is interrupted half-way leaves the previous output (or none),
    never a half-written one: readers see either the old complete file or directory, or
    the new one. The temporary sits beside `target` so that the final rename stays on one
    file system (atomic); its name, `.<name>.tmp-<pid>`, is git- and DVC-ignored, so even
    the leftover of a SIGKILL never shows in `git status` (the next run removes it).
    A failed write raises OSError naming `target` (or the file inside it) and the reason.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    for leftover in target.parent.glob(f".{target.name}.tmp-*"):
        remove_path(leftover)  # from a process that was killed before it could clean up
    temporary = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    try:
        yield temporary
        if temporary.is_dir():
            remove_path(target)  # os.replace cannot replace a non-empty directory
        os.replace(temporary, target)
    except BaseException as error:
        remove_path(temporary)
        failed = write_error(error, target) if isinstance(error, Exception) else None
        if failed is None:
            raise
        # Name the file the user will look for, not the temporary one.
        failed.filename = str(failed.filename).replace(str(temporary), str(target), 1)
        raise failed from None


def write_json(path: str | Path, document: Any) -> None:
    """Write `document` as indented JSON, atomically."""
    with atomic_output(path) as temporary:
        temporary.write_text(json.dumps(document, indent=2) + "\n")


# Reading what a stage wrote earlier ----------------------------------------------------------
# A file a stage reads back may have been damaged since: cut short by a full disk or an
# interrupted copy, edited by hand, replaced by a folder or a link that leads nowhere, made
# unreadable. Each reader turns that into one line naming the file and `fix`.


def _then(fix: str) -> str:
    return f"; {fix}" if fix else ""


def _not_a_file(path: Path) -> str:
    """Why `path` cannot be read as a file, in a few words."""
    if path.is_symlink() and not path.exists():
        return "a symbolic link that leads nowhere (its target is missing, or it loops)"
    if path.is_dir():
        return "a folder where a file should be"
    if path.exists():
        return "not a regular file"  # a FIFO would block the reader forever
    return "no such file"


def check_file(path: Path, fix: str) -> None:
    """Raise unless `path` is a regular file (through links); FileNotFoundError when it is
    missing, ValueError when something else is in its place or it cannot be looked at."""
    try:
        if path.is_file():
            return
        reason = _not_a_file(path)
    except OSError as error:  # a folder on the way that may not be searched, say
        raise ValueError(f"{path}: cannot be read ({error.strerror}){_then(fix)}") from None
    kind = FileNotFoundError if reason == "no such file" else ValueError
    raise kind(f"{path}: {reason}{_then(fix)}")


def read_file(path: Path, fix: str) -> bytes:
    """The bytes of the file at `path`, or one line naming it, what is wrong and `fix`."""
    check_file(path, fix)
    try:
        return path.read_bytes()
    except OSError as error:  # permission denied, an I/O error of the disk, ...
        raise ValueError(f"{path}: cannot be read ({error.strerror}){_then(fix)}") from None


def file_sha256(path: Path, fix: str) -> str:
    """The SHA-256 (hex) of the file at `path`, or one line as read_file says."""
    check_file(path, fix)
    try:
        with path.open("rb") as file:
            return hashlib.file_digest(file, "sha256").hexdigest()
    except OSError as error:
        raise ValueError(f"{path}: cannot be read ({error.strerror}){_then(fix)}") from None


def read_json(path: Path, fix: str) -> Any:
    """The JSON document in the file at `path`; damaged (cut short, not JSON, not UTF-8,
    nested too deep): one ValueError naming the file and `fix`. Its shape is the caller's
    to check."""
    data = read_file(path, fix)
    try:
        return json.loads(data)
    except (ValueError, RecursionError) as error:
        reason = str(error).splitlines()[0][:120] if str(error) else type(error).__name__
        if not data:
            reason = "an empty file"
        raise ValueError(f"{path}: not valid JSON ({reason}){_then(fix)}") from None


# A JSON file that one stage writes and another reads back carries the SHA-256 of its own
# content under this key: a value changed since (a flipped bit that still parses, a hand
# edit) is refused, not used. Canonical JSON (sorted keys, no spaces) is hashed, so the
# file's layout does not matter.
SEAL = "sha256"


def _content_sha256(document: dict) -> str:
    content = {key: value for key, value in document.items() if key != SEAL}
    canonical = json.dumps(content, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(canonical.encode("utf-8", "surrogatepass")).hexdigest()


def seal(document: dict) -> dict:
    """`document` with the SHA-256 of its content (SEAL), for read_sealed_json to check."""
    return {**document, SEAL: _content_sha256(document)}


def read_sealed_json(path: Path, fix: str) -> dict:
    """The JSON object in `path` as seal() wrote it (without SEAL), its SHA-256 checked."""
    document = read_json(path, fix)
    if not isinstance(document, dict):
        kind = type(document).__name__
        raise ValueError(f"{path}: a JSON {kind}, expected an object{_then(fix)}")
    try:
        intact = document.get(SEAL) == _content_sha256(document)
    except RecursionError:  # nested deeper than any file written here
        intact = False
    if not intact:
        raise ValueError(
            f"{path}: its content does not match its {SEAL} (damaged or edited since it was "
            f"written){_then(fix)}"
        )
    return {key: value for key, value in document.items() if key != SEAL}


def _interrupt(signum: int, frame: object) -> None:
    # A second signal must not cut short the clean-up the first one started.
    for ignored in (signal.SIGINT, signal.SIGTERM):
        signal.signal(ignored, signal.SIG_IGN)
    raise Interrupted(signum)


def run_stage(
    main: Callable[[], None],
    interrupted: str = "no output was half-written; run `dvc repro` to run the stage again",
) -> None:
    """Run a stage's `main`; report bad input, a failed write or a signal in one line.

    Bad input raises ValueError or FileNotFoundError with a message that names the file or
    key: one `error:` line on stderr and exit code 1, as for StageError and for a write that
    failed for want of space or permission (WRITE_ERRORS). SIGINT (Ctrl-C) and SIGTERM end
    the stage with one line, `interrupted`, saying what was kept and how to resume, and the
    shells' exit codes 130 and 143. Anything else is a bug and keeps its traceback.
    """
    stage = Path(sys.argv[0]).stem
    # A SIGINT ignored by whoever started the stage (nohup, a background job) stays ignored.
    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
        signal.signal(signal.SIGINT, _interrupt)
    if signal.getsignal(signal.SIGTERM) == signal.SIG_DFL:
        signal.signal(signal.SIGTERM, _interrupt)
    try:
        main()
    except (ValueError, FileNotFoundError, StageError) as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(1)
    except (Interrupted, KeyboardInterrupt) as error:
        signum = getattr(error, "signum", signal.SIGINT)
        print(
            f"{stage}: interrupted by {signal.Signals(signum).name}; {interrupted}", file=sys.stderr
        )
        sys.exit(128 + signum)
    except Exception as error:
        # A write that failed for want of space or permission, outside atomic_output too
        # (TensorFlow's checkpoints, say): named in one line. Anything else: a traceback.
        failed = write_error(error, "")
        if failed is None or not failed.filename:
            raise
        print(
            f"error: {failed.filename}: {failed.strerror}; {WRITE_ERRORS[failed.errno]}",
            file=sys.stderr,
        )
        sys.exit(1)
