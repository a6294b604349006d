"""Progress within an epoch, for people: a bar on a terminal, a line every ~10 s otherwise.

Under `dvc repro` and `dvc exp run` stderr is not a terminal, and a bar would never show:
there the stage prints `epoch 1/5: step 480/1716  loss 0.2512  12 s left` lines instead.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import TextIO

from tqdm import tqdm

LINE_INTERVAL = 10.0  # seconds between progress lines when there is no terminal


class Progress:
    """Steps done out of `total` and the loss so far, shown as they come."""

    def __init__(
        self,
        total: int,
        description: str,
        terminal: bool | None = None,
        stream: TextIO | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.total, self.description, self.clock = total, description, clock
        self.stream = stream or sys.stdout
        terminal = sys.stderr.isatty() if terminal is None else terminal
        self.bar = tqdm(total=total, desc=description, leave=False) if terminal else None
        self.start = self.last_line = clock()

    def update(self, done: int, loss: float) -> None:
        """`done` steps of `total` so far, and the mean loss over them."""
        if self.bar is not None:
            self.bar.update(done - self.bar.n)
            self.bar.set_postfix(loss=f"{loss:.4f}", refresh=False)
            return
        now = self.clock()
        if now - self.last_line < LINE_INTERVAL or done >= self.total:
            return  # the epoch's own line follows its last step
        self.last_line = now
        seconds_left = (now - self.start) / done * (self.total - done)
        print(
            f"{self.description}: step {done}/{self.total}  loss {loss:.4f}  "
            f"{seconds_left:.0f} s left",
            file=self.stream,
            flush=True,
        )

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
