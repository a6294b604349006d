"""A run's progress, as people and DVC's tools see it while it trains.

Within an epoch, for people: a bar on a terminal, a line every ~10 s otherwise. Under
`dvc repro` and `dvc exp run` stderr is not a terminal, and a bar would never show: there
the stage prints `epoch 1/5: step 480/1716  loss 0.2512  12 s left` lines instead.
After every epoch, for DVC: DVCLive rewrites its metrics and plots, so `dvc exp show`,
`dvc metrics show`, `dvc plots show`, the VS Code extension and (with DVC_STUDIO_TOKEN)
Studio follow the run. DVCLive's single step counter is the epoch: logging every N steps
as well would mix two time axes in the same files, so within an epoch only the printed
lines report.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TextIO

from dvclive import Live
from tqdm import tqdm

from loopline.files import remove_path

# The history's columns, as DVCLive names them (metrics.json nests them at the "/").
LIVE_NAMES = {
    "train_loss": "train/loss",
    "train_accuracy": "train/accuracy",
    "validation_loss": "validation/loss",
    "validation_accuracy": "validation/accuracy",
    "learning_rate": "learning_rate",
}
SUMMARY_LEFT_OUT = ("train", "learning_rate")
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
        self.last_line = clock()
        self.first: tuple[float, int] | None = None  # (time, steps) at the first update

    def update(self, done: int, loss: float) -> None:
        """`done` steps of `total` so far, and the mean loss over them."""
        if self.bar is not None:
            self.bar.update(done - self.bar.n)
            self.bar.set_postfix(loss=f"{loss:.4f}", refresh=False)
            return
        now = self.clock()
        if self.first is None:
            self.first = (now, done)  # the time to here includes compiling: no rate from it
        if now - self.last_line < LINE_INTERVAL or done >= self.total:
            return  # the epoch's own line follows its last step
        self.last_line = now
        line = f"{self.description}: step {done}/{self.total}  loss {loss:.4f}"
        since, steps_then = self.first
        if done > steps_then:
            seconds_left = (now - since) / (done - steps_then) * (self.total - done)
            line += f"  {seconds_left:.0f} s left"
        print(line, file=self.stream, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def open_live(directory: Path) -> Live:
    """DVCLive writing only under `directory`, never to dvc.yaml nor the network.

    dvc.yaml is written by hand (dvcyaml=False); DVC records the experiment itself
    (save_dvc_exp=False); Studio gets live updates only when DVC_STUDIO_TOKEN is set.
    """
    if "DVC_STUDIO_TOKEN" not in os.environ:
        os.environ["DVC_STUDIO_OFFLINE"] = "true"
    # DVCLive deletes its previous files itself, and fails with a traceback on one that a
    # folder replaced (or a file in place of its folder): the run's files go first, whole.
    remove_path(directory)
    return Live(dir=str(directory), dvcyaml=False, save_dvc_exp=False)


def log_epoch(live: Live | None, row: dict) -> None:
    """Write one epoch's row through DVCLive, its step the epoch's number."""
    if live is None:
        return
    live.step = row["epoch"]
    for column, name in LIVE_NAMES.items():
        live.log_metric(name, row[column])
    # metrics.json (Live.summary, which may be edited) keeps the validation accuracy and the
    # step (the epoch) only, so that `dvc metrics show` and `dvc exp show` fit 120 columns
    # beside evaluate's and export's metrics; every curve stays a plot. The learning rate
    # would also share its `dvc exp show` column with the param of the same name.
    for name in SUMMARY_LEFT_OUT:
        live.summary.pop(name, None)
    live.summary["validation"].pop("loss", None)
    live.sync()
