"""The train stage's checkpoints: the last finished epoch of a run, so a killed run resumes.

A run's checkpoints live in <root>/<key>/, where the key hashes every param train reads, the
prepared data's meta.json and the shapes of the model's and optimizer's variables: a run
with other params, data or layers never resumes from them.
Under `multi_worker` every worker saves (saving is collective), the chief into the run's
folder and the others into worker-<i>/ inside it, which only their own resume reads. Each
saves after the epoch on its own, so a worker that dies between its peers' saves and its
own is one epoch behind them: every worker keeps its last two epochs, and a restarted
cluster first agrees on the latest epoch that all of them saved (restore).

A checkpoint only saves time: one that cannot be resumed from (damaged, cut short, its
state file or history.json unreadable, the history shorter than its epoch) is named in one
line, removed, and the run starts afresh. Each is read whole, its checksums checked,
before any variable is restored from it, so the model never starts half-restored.
"""

from __future__ import annotations

import errno
import hashlib
import json
import re
import shutil
from pathlib import Path

import tensorflow as tf

from loopline import files
from loopline.files import StageError, seal, write_json
from loopline.loop import Trainer
from loopline.progress import LIVE_NAMES

# How a checkpoint's save fails on a full disk or a read-only folder: TensorFlow's errors for
# its own files, OSError for the history's.
WRITE_FAILURES = (OSError, tf.errors.ResourceExhaustedError, tf.errors.PermissionDeniedError)


def checkpoint_key(params: dict, data_dir: Path, variables: list | tuple = ()) -> str:
    """A name for a training run's checkpoints: its params, its data and the shapes of its
    `variables` (the model's and the optimizer's), hashed: a checkpoint of layers that the
    code has changed since is never tried."""
    digest = hashlib.sha256(json.dumps(params, sort_keys=True).encode())
    digest.update((data_dir / "meta.json").read_bytes())
    digest.update(repr([(tuple(v.shape), str(v.dtype)) for v in variables]).encode())
    return digest.hexdigest()[:16]


def worker_count(strategy: tf.distribute.Strategy) -> int:
    """How many processes train together: the tasks of TF_CONFIG's cluster, else 1."""
    resolver = strategy.cluster_resolver
    cluster = resolver.cluster_spec() if resolver is not None else None
    return sum(cluster.num_tasks(job) for job in cluster.jobs) if cluster else 1


def every_replica(strategy: tf.distribute.Strategy, value: int) -> list[int]:
    """`value` as each replica of the cluster has it (a collective: all must call it)."""
    values = strategy.gather(strategy.run(lambda: tf.constant([value])), axis=0)
    return values.numpy().tolist()


class Checkpoints:
    """The last finished epoch of one run: model, optimizer, epoch and the history so far."""

    def __init__(self, directory: Path, trainer: Trainer) -> None:
        self.directory = directory
        self.epoch = tf.Variable(0, dtype=tf.int64, trainable=False)
        self.checkpoint = tf.train.Checkpoint(
            model=trainer.model, optimizer=trainer.optimizer, epoch=self.epoch
        )
        self.strategy = trainer.strategy
        self.workers = worker_count(trainer.strategy)
        self.history_path = directory / "history.json"
        self.damage = ""  # why the checkpoints found here cannot be resumed from, if so
        self.history: list[dict] = []
        if directory.exists() and not directory.is_dir():
            self.damage = f"{directory}: not a folder"
        else:
            try:
                self.manager = self._open_manager()
            except (ValueError, tf.errors.OpError) as error:  # its state file
                self.damage = f"{directory / 'checkpoint'}: damaged ({_first_line(error)})"
        if self.damage:
            self.discard()

    def _open_manager(self) -> tf.train.CheckpointManager:
        keep = 2 if self.workers > 1 else 1  # a peer may be one epoch behind (see the top)
        # It reads the state file: one that does not parse is logged in two warnings and
        # ignored; _check names it in one line instead.
        logger = tf.get_logger()
        level = logger.level
        logger.setLevel("ERROR")
        try:
            return tf.train.CheckpointManager(self.checkpoint, self.directory, max_to_keep=keep)
        finally:
            logger.setLevel(level)

    def discard(self) -> None:
        """Say why the checkpoints here cannot be used, remove them, start afresh."""
        print(
            f"train: {self.damage}; starting afresh without the checkpoint (it only saves time)",
            flush=True,
        )
        if self.directory.is_dir() and not self.directory.is_symlink():
            for path in self.directory.iterdir():
                if not path.name.startswith("worker-"):  # the other workers' own folders
                    files.remove_path(path)
        else:
            files.remove_path(self.directory)
        self.manager = self._open_manager()

    def _check(self) -> tuple[dict[int, str], str]:
        """The checkpoints the state file names, by epoch, each read whole and checked,
        and the history they need; or ({}, why one of them cannot be resumed from)."""
        state = self.directory / "checkpoint"
        saved = {}
        for path in self.manager.checkpoints:
            number = re.fullmatch(r"ckpt-(\d+)", Path(path).name)
            if Path(path).parent != self.directory or not number:
                return {}, f"{state}: names {path}, not a checkpoint in {self.directory}"
            saved[int(number[1])] = path
        if not saved and (state.exists() or state.is_symlink()):
            return {}, f"{state}: unreadable, or names no checkpoint that is there"
        if not saved and any(self.directory.glob("ckpt-*")):
            # Also what a run killed between writing its first checkpoint and naming it
            # leaves: that one was never complete.
            return {}, f"{self.directory}: checkpoint files, but no state file naming one"
        for path in saved.values():
            if damage := _unreadable(Path(path)):
                return {}, damage
        if saved:
            try:
                self.history = read_history(self.history_path, max(saved))
            except (ValueError, FileNotFoundError) as error:
                return {}, str(error)
        return saved, ""

    def restore(self) -> list[dict]:
        """Restore the last epoch that every worker saved, if any; return the history up to it.

        Under `multi_worker` a collective: every worker must call it.
        """
        saved, self.damage = self._check()
        if self.damage:
            self.discard()
        epoch = max(saved, default=0)
        if self.workers > 1:
            latests = sorted(set(every_replica(self.strategy, epoch)))
            epoch = latests[0]
            if len(latests) > 1:
                differ = " and ".join(map(str, latests))
                where = f"after epoch {epoch}, the last they all saved" if epoch else "afresh"
                print(f"train: the workers' last saved epochs differ ({differ}): all start {where}")
        if epoch == 0:
            return []
        if epoch not in saved:
            raise ValueError(
                f"{self.directory}: holds epochs {sorted(saved)}, not epoch {epoch}, the "
                "last that every worker saved; delete .checkpoints/ on every worker and run "
                "again"
            )
        try:
            self.checkpoint.restore(saved[epoch]).assert_consumed()
        except (AssertionError, ValueError, tf.errors.OpError) as error:
            # Read whole above, so not damaged: another model's. Some variables may hold its
            # values already, so this process cannot start afresh.
            raise StageError(
                f"{saved[epoch]}: a checkpoint of another model ({_first_line(error)}); "
                f"delete {self.directory} and run again"
            ) from None
        return self.history[:epoch]

    def save(self, history: list[dict]) -> None:
        """Save the epoch that ends `history`; on a full disk, leave the previous one intact.

        TensorFlow writes a checkpoint through temporary files, and on a full disk raises a
        ResourceExhaustedError with dozens of lines and leaves them there: remove whatever
        this save added, keep the last complete checkpoint, and say which path failed.
        """
        self.directory.mkdir(parents=True, exist_ok=True)
        before = set(self.directory.iterdir())
        try:
            # The history first: if the run dies between the two writes, restore() trims it.
            write_json(self.history_path, seal({"epochs": history}))
            self.epoch.assign(len(history))
            self.manager.save(checkpoint_number=len(history))
        except WRITE_FAILURES as error:
            for path in set(self.directory.iterdir()) - before:
                shutil.rmtree(path) if path.is_dir() else path.unlink()
            if isinstance(error, OSError):
                code, reason = error.errno, error.strerror
            else:  # TensorFlow's: "{{function_node ...}} <file>; <reason> [Op:SaveV2]"
                full = isinstance(error, tf.errors.ResourceExhaustedError)
                code = errno.ENOSPC if full else errno.EACCES
                reason = error.message.split("; ")[-1].split(" [Op:")[0].strip()
            if not any(self.directory.iterdir()):
                self.directory.rmdir()
            raise OSError(
                code,
                f"could not save the checkpoint of epoch {len(history)}: {reason}",
                str(self.directory),
            ) from None

    def remove(self) -> None:
        shutil.rmtree(self.directory, ignore_errors=True)


def _first_line(error: BaseException, directory: Path | None = None) -> str:
    """TensorFlow's message, short: its first line, without the folder's path."""
    text = getattr(error, "message", None) or str(error) or type(error).__name__
    text = text.strip().splitlines()[0]
    if directory is not None:
        text = text.replace(f"{directory}/", "").replace(str(directory), ".")
    return text if len(text) <= 100 else text[:97] + "..."


def _unreadable(prefix: Path) -> str:
    """Why the checkpoint at `prefix` cannot be read whole, or "" if every tensor reads
    with its checksum. (Damage reaches Python as OpError, "Checksum does not match", or,
    for a file cut short, as IndexError, "Read less bytes than requested".)"""
    index = prefix.with_name(f"{prefix.name}.index")
    if not (index.exists() or index.is_symlink()):
        return f"{prefix.parent / 'checkpoint'}: names {prefix.name}, but {index.name} is missing"
    try:
        reader = tf.train.load_checkpoint(str(prefix))
        for name in reader.get_variable_to_shape_map():
            reader.get_tensor(name)
    except (tf.errors.OpError, IndexError, ValueError) as error:
        return f"{prefix}: damaged ({_first_line(error, prefix.parent)})"
    return ""


def read_history(path: Path, epoch: int) -> list[dict]:
    """The history at `path`, checked to be train's rows of at least `epoch` epochs."""
    history = files.read_sealed_json(path, "").get("epochs")
    columns = {"epoch", *LIVE_NAMES}
    for index, row in enumerate(history if isinstance(history, list) else [None]):
        if not (
            isinstance(row, dict)
            and set(row) == columns
            and row["epoch"] == index + 1
            and all(isinstance(value, int | float) for value in row.values())
        ):
            raise ValueError(f"{path}: its row {index + 1} is not epoch {index + 1}'s")
    if len(history) < epoch:
        raise ValueError(f"{path}: {len(history)} epoch(s), fewer than the checkpoint's {epoch}")
    return history


def open_checkpoints(
    checkpoint_root: Path, params: dict, data_dir: Path, trainer: Trainer
) -> Checkpoints:
    """A run's checkpoints: keyed by its params, data and variables, one folder per worker."""
    if checkpoint_root.exists() and not checkpoint_root.is_dir():
        raise ValueError(
            f"{checkpoint_root}: not a folder; train keeps its checkpoints there: move it away"
        )
    variables = [*trainer.model.weights, *trainer.optimizer.variables]
    directory = checkpoint_root / checkpoint_key(params, data_dir, variables)
    if not trainer.is_chief:
        directory = directory / f"worker-{trainer.strategy.cluster_resolver.task_id}"
    return Checkpoints(directory, trainer)
