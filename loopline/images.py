"""Image files -> uint8 pixel arrays: the one function prepare and predict both use, and
decoding whole folders on every core.

`load_image` decodes a file with Pillow (loopline/decoding.py: upright, transparent pixels
on white, grey or RGB, resized), so that a served model sees exactly the pixels its
training data had. `load_all` and `inspect_all` decode many files on every core
(`Decoders`). It imports no TensorFlow.
"""

from __future__ import annotations

import os
import pickle
import queue
import signal
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import suppress
from pathlib import Path

import numpy as np

from loopline.decoding import (  # noqa: F401 (ORIENTATION, channels_of: the public names)
    ORIENTATION,
    READY,
    ImageError,
    channels_of,
    decode,
    inspect,
    read_header,
    run_task,
)
from loopline.files import StageError

# A worker decodes this many files per task: few enough hand-offs that passing them costs
# little (a chunk of 8x8 PNGs is ~3 ms of work), and small enough that the workers finish
# together.
CHUNK_FILES = 64


def load_image(path: Path, size: tuple[int, int] | None, channels: int) -> np.ndarray:
    """The image file at `path` as uint8 pixels [height, width] (channels 1) or [height,
    width, 3], resized to `size` (height, width) unless it is None or already that size."""
    return np.asarray(decode(path, size, channels)[0])


def inspect_image(path: Path, size: tuple[int, int] | None = None) -> tuple[int, int, int]:
    """(height, width, channels) of the image at `path`, upright, after decoding all of it
    (a truncated or damaged file fails here, not only once its header is read); a JPEG to
    be resized to `size` is decoded at the scale load_image would use."""
    return inspect(path, size)


def workers() -> int:
    """The cores this process may run on."""
    return len(os.sched_getaffinity(0))


class _Worker:
    """One decoding process (loopline.decoding's `work`): tasks in, results out."""

    def __init__(self) -> None:
        package_root = str(Path(__file__).resolve().parents[1])
        path = os.pathsep.join(filter(None, [package_root, os.environ.get("PYTHONPATH")]))
        self.process = subprocess.Popen(
            [sys.executable, "-c", "from loopline.decoding import work; work()"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env={**os.environ, "PYTHONPATH": path},
        )

    def ready(self) -> bool:
        """Wait until the worker has started (False: it ended instead)."""
        return self.process.stdout.read(1) == READY

    def run(self, task: str, paths: list[Path], arguments: tuple) -> object:
        # Paths as strings: pickling and unpickling a Path costs 3-4 us, as much as a tenth
        # of decoding a small PNG.
        request = (task, [str(path) for path in paths], arguments)
        try:
            pickle.dump(request, self.process.stdin, pickle.HIGHEST_PROTOCOL)
            self.process.stdin.flush()
            return pickle.load(self.process.stdout)
        except (EOFError, BrokenPipeError):
            code = self.process.wait()
            how = f"killed by {signal.Signals(-code).name}" if code < 0 else f"exit code {code}"
            if code == -signal.SIGKILL:
                how += ", as when memory runs out"
            raise StageError(
                f"{paths[0]}: the worker process decoding it and the {len(paths) - 1} files "
                f"after it ended ({how}); run again"
            ) from None

    def close(self) -> None:
        with suppress(BrokenPipeError):  # a worker that ended already
            self.process.stdin.close()  # the worker's cue to end, once its task is done
        self.process.terminate()  # ... or now
        self.process.wait()
        self.process.stdout.close()


class Decoders:
    """Decoding chunks of files on every core: in this process, and on `processes` worker
    processes, each taking chunks from the moment it has started (tens of milliseconds).

    Processes, not threads: decoding a small image is mostly Python, which threads run one
    at a time, and even a photo's decoding shares the interpreter's lock with its Python
    part. The workers import no TensorFlow (a process pool started from a stage would import
    the stage's module, TensorFlow with it, in every worker). Close it (or use `with`) to
    end them.
    """

    def __init__(self, processes: int) -> None:
        self._idle: queue.SimpleQueue[_Worker | None] = queue.SimpleQueue()
        self._idle.put(None)  # None: this process
        self._workers = [_Worker() for _ in range(processes)]
        # A thread per decoder that passes it chunks, and one per worker waiting for its start.
        self._pool = ThreadPoolExecutor(2 * processes + 1)
        for worker in self._workers:
            self._pool.submit(self._join, worker)

    def _join(self, worker: _Worker) -> None:
        if worker.ready():
            self._idle.put(worker)

    def _run(self, task: str, chunk: list[Path], arguments: tuple) -> object:
        worker = self._idle.get()
        try:
            if worker is None:
                return run_task(task, chunk, *arguments)
            return worker.run(task, chunk, arguments)
        finally:
            self._idle.put(worker)

    def map(self, task: str, paths: list[Path], *arguments) -> Iterator:
        """loopline.decoding's TASKS[task](chunk, *arguments) for consecutive chunks of
        `paths`, in order; the first unreadable file raises its ImageError."""
        chunks = [paths[start : start + CHUNK_FILES] for start in range(0, len(paths), CHUNK_FILES)]
        futures = [self._pool.submit(self._run, task, chunk, arguments) for chunk in chunks]
        try:
            for future in futures:
                result = future.result()
                if isinstance(result, ImageError):
                    raise result
                yield result
        finally:
            for future in futures:  # after an error: the chunks not yet begun
                future.cancel()

    def close(self) -> None:
        for worker in self._workers:  # first: a worker still starting holds a thread in _join
            worker.close()
        self._pool.shutdown(cancel_futures=True)

    def __enter__(self) -> Decoders:
        return self

    def __exit__(self, *exception: object) -> None:
        self.close()


def for_files(paths: list[Path]) -> Decoders:
    """Decoders for `paths`: a worker process per core but this one, no more than there are
    chunks to share (a folder of one chunk is decoded here, in less time than a worker takes
    to start)."""
    chunks = -(-len(paths) // CHUNK_FILES)
    return Decoders(max(0, min(workers(), chunks) - 1))


def inspect_all(
    paths: list[Path], size: tuple[int, int] | None = None
) -> list[tuple[int, int, int]]:
    """inspect_image of every path, on every core; the first bad file raises ImageError."""
    with for_files(paths) as decoders:
        return [shape for chunk in decoders.map("inspect", paths, size) for shape in chunk]


def load_all(
    paths: list[Path], out: np.ndarray, size: tuple[int, int], channels: int
) -> list[tuple[int, int, int]]:
    """Decode every path into `out` [len(paths), height, width(, 3)], on every core; return
    each image's own upright (height, width, channels)."""
    start, shapes = 0, []
    with for_files(paths) as decoders:
        for pixels, chunk_shapes in decoders.map("decode", paths, size, channels):
            end = start + len(chunk_shapes)
            out[start:end] = np.frombuffer(pixels, np.uint8).reshape(out[start:end].shape)
            shapes += chunk_shapes
            start = end
    return shapes
