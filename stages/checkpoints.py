"""The train stage's checkpoints: the last finished epoch of a run, so a killed run resumes.

A run's checkpoints live in <root>/<key>/, where the key hashes every param train reads and
the prepared data's meta.json: a run with other params or data never resumes from them.
Under `multi_worker` every worker saves (saving is collective), the chief into the run's
folder and the others into worker-<i>/ inside it, which only their own resume reads.
"""

from __future__ import annotations

import errno
import hashlib
import json
import shutil
from pathlib import Path

import tensorflow as tf

from stages.files import write_json
from stages.loop import Trainer

# How a checkpoint's save fails on a full disk or a read-only folder: TensorFlow's errors for
# its own files, OSError for the history's.
WRITE_FAILURES = (OSError, tf.errors.ResourceExhaustedError, tf.errors.PermissionDeniedError)


def checkpoint_key(params: dict, data_dir: Path) -> str:
    """A name for a training run's checkpoints: its params and its data, hashed."""
    digest = hashlib.sha256(json.dumps(params, sort_keys=True).encode())
    digest.update((data_dir / "meta.json").read_bytes())
    return digest.hexdigest()[:16]


class Checkpoints:
    """The last finished epoch of one run: model, optimizer, epoch and the history so far."""

    def __init__(self, directory: Path, trainer: Trainer) -> None:
        self.directory = directory
        self.epoch = tf.Variable(0, dtype=tf.int64, trainable=False)
        checkpoint = tf.train.Checkpoint(
            model=trainer.model, optimizer=trainer.optimizer, epoch=self.epoch
        )
        self.manager = tf.train.CheckpointManager(checkpoint, directory, max_to_keep=1)
        self.history_path = directory / "history.json"

    def restore(self) -> list[dict]:
        """Restore the last finished epoch, if any; return the history up to it."""
        if self.manager.latest_checkpoint is None:
            return []
        self.manager.checkpoint.restore(self.manager.latest_checkpoint).assert_consumed()
        history = json.loads(self.history_path.read_text())
        return history[: int(self.epoch.numpy())]

    def save(self, history: list[dict]) -> None:
        """Save the epoch that ends `history`; on a full disk, leave the previous one intact.

        TensorFlow writes a checkpoint through temporary files, and on a full disk raises a
        ResourceExhaustedError with dozens of lines and leaves them there: remove whatever
        this save added, keep the last complete checkpoint, and say which path failed.
        """
        self.directory.mkdir(parents=True, exist_ok=True)
        before = set(self.directory.iterdir())
        try:
            # The history first: if we die between the two writes, restore() trims it.
            write_json(self.history_path, history)
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


def open_checkpoints(
    checkpoint_root: Path, params: dict, data_dir: Path, trainer: Trainer
) -> Checkpoints:
    """A run's checkpoints: keyed by its params and data, one folder per worker."""
    directory = checkpoint_root / checkpoint_key(params, data_dir)
    if not trainer.is_chief:
        directory = directory / f"worker-{trainer.strategy.cluster_resolver.task_id}"
    return Checkpoints(directory, trainer)
