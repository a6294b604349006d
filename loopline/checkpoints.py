"""The train stage's checkpoints: the last finished epoch of a run, so a killed run resumes.

A run's checkpoints live in <root>/<key>/, where the key hashes every param train reads and
the prepared data's meta.json: a run with other params or data never resumes from them.
Under `multi_worker` every worker saves (saving is collective), the chief into the run's
folder and the others into worker-<i>/ inside it, which only their own resume reads. Each
saves after the epoch on its own, so a worker that dies between its peers' saves and its
own is one epoch behind them: every worker keeps its last two epochs, and a restarted
cluster first agrees on the latest epoch that all of them saved (restore).
"""

from __future__ import annotations

import errno
import hashlib
import json
import shutil
from pathlib import Path

import tensorflow as tf

from loopline.files import write_json
from loopline.loop import Trainer

# How a checkpoint's save fails on a full disk or a read-only folder: TensorFlow's errors for
# its own files, OSError for the history's.
WRITE_FAILURES = (OSError, tf.errors.ResourceExhaustedError, tf.errors.PermissionDeniedError)


def checkpoint_key(params: dict, data_dir: Path) -> str:
    """A name for a training run's checkpoints: its params and its data, hashed."""
    digest = hashlib.sha256(json.dumps(params, sort_keys=True).encode())
    digest.update((data_dir / "meta.json").read_bytes())
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
        checkpoint = tf.train.Checkpoint(
            model=trainer.model, optimizer=trainer.optimizer, epoch=self.epoch
        )
        self.strategy = trainer.strategy
        self.workers = worker_count(trainer.strategy)
        keep = 2 if self.workers > 1 else 1  # a peer may be one epoch behind (see the top)
        self.manager = tf.train.CheckpointManager(checkpoint, directory, max_to_keep=keep)
        self.history_path = directory / "history.json"

    def restore(self) -> list[dict]:
        """Restore the last epoch that every worker saved, if any; return the history up to it.

        Under `multi_worker` a collective: every worker must call it.
        """
        saved = {int(path.rsplit("-", 1)[1]): path for path in self.manager.checkpoints}
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
        self.manager.checkpoint.restore(saved[epoch]).assert_consumed()
        history = json.loads(self.history_path.read_text())
        return history[:epoch]

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
