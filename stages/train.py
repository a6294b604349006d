"""train: prepared TFRecords -> a SavedModel, with a hand-written training loop.

Reads  data/prepared (train and validation shards, meta.json); the params in PARAMS.
Writes models/mnist: a SavedModel whose serving_default takes uint8 images [batch, 28, 28]
       and returns logits, probabilities and classes;
       metrics/train.json: final train and validation loss and accuracy, and speed;
       metrics/train_history.tsv: one row per epoch, drawn by `dvc plots show`.
Keeps  .checkpoints/<key>/: the last finished epoch, so a killed run resumes there; the key
       hashes every param train reads and the prepared data, and the folder is removed once
       the model is written. Under `multi_worker` only the chief writes the outputs; the
       other workers keep their checkpoints in .checkpoints/<key>/worker-<i>/.
Run    dvc repro train
"""

from __future__ import annotations

import argparse
import csv
import functools
import hashlib
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf
from tqdm import tqdm

from stages import records
from stages.files import atomic_output, run_stage, write_json
from stages.loop import (
    Trainer,
    distribute_train_dataset,
    make_eval_dataset,
    make_strategy,
    supports_xla,
)
from stages.model import build_model, export_saved_model
from stages.params import load_params

PARAMS = (
    "seed",
    "model",
    "epochs",
    "batch_size",
    "learning_rate",
    "learning_rate_schedule",
    "jit_compile",
    "deterministic",
    "steps_per_execution",
    "unrolled_steps",
    "distribute",
    "eval_batch_size",
)
HISTORY_COLUMNS = (
    "epoch",
    "train_loss",
    "train_accuracy",
    "validation_loss",
    "validation_accuracy",
    "learning_rate",
)


def checkpoint_key(params: dict, data_dir: Path) -> str:
    """A name for this training run's checkpoints: its params and its data, hashed."""
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
        # The history first: if we die between the two writes, restore() trims it.
        write_json(self.history_path, history)
        self.epoch.assign(len(history))
        self.manager.save(checkpoint_number=len(history))

    def remove(self) -> None:
        shutil.rmtree(self.directory, ignore_errors=True)


def make_optimizer(params: dict, steps_per_epoch: int) -> keras.Optimizer:
    """Adam, with a constant learning rate or one that decays to 0 along a cosine."""
    learning_rate = params["learning_rate"]
    if params["learning_rate_schedule"] == "cosine":
        learning_rate = keras.optimizers.schedules.CosineDecay(
            learning_rate, decay_steps=params["epochs"] * steps_per_epoch
        )
    return keras.optimizers.Adam(learning_rate)


def load_training_shards(data_dir: Path, part: int, parts: int) -> tuple[np.ndarray, np.ndarray]:
    """Worker `part` of `parts`: its training shard files (all of them for a single worker)."""
    images, labels = records.load_split(data_dir, "train", part, parts)
    if parts > 1:
        print(f"train: worker {part} of {parts}: {len(images)} examples from its training shards")
    return images, labels


def run_epoch(
    trainer: Trainer,
    dataset: tf.distribute.DistributedDataset,
    steps: int,
    chunk: int,
    epoch: int,
    progress: tqdm,
) -> None:
    """One pass over the training data, `chunk` steps per compiled call."""
    iterator = iter(dataset)
    done = 0
    while done < steps:
        count = min(chunk, steps - done)
        losses = trainer.train_steps(iterator, tf.constant(count)).numpy()
        if not np.isfinite(losses).all():
            bad_step = done + int(np.argmin(np.isfinite(losses))) + 1
            raise ValueError(
                f"training diverged: loss is {losses[~np.isfinite(losses)][0]} at epoch "
                f"{epoch}, step {bad_step}; lower learning_rate in params.yaml"
            )
        done += count
        progress.update(count)
        progress.set_postfix(loss=f"{trainer.train_loss.result():.4f}", refresh=False)


def steps_per_epoch(data_dir: Path, params: dict, replicas: int) -> int:
    """Full batches per epoch, after checking batch_size and unrolled_steps against the rest."""
    train_examples, _ = records.split_shards(data_dir, "train")
    batch_size = params["batch_size"]
    if batch_size > train_examples:
        raise ValueError(
            f"params.yaml: batch_size: got {batch_size}, expected at most the "
            f"{train_examples} training examples"
        )
    if batch_size % replicas:
        raise ValueError(
            f"params.yaml: batch_size: got {batch_size}, expected a multiple of the "
            f"{replicas} replicas of distribute: {params['distribute']}"
        )
    if params["unrolled_steps"] > params["steps_per_execution"]:
        raise ValueError(
            f"params.yaml: unrolled_steps: got {params['unrolled_steps']}, expected at most "
            f"steps_per_execution ({params['steps_per_execution']})"
        )
    return train_examples // batch_size


def build_trainer(params: dict, strategy: tf.distribute.Strategy, steps: int) -> Trainer:
    """The model, optimizer and metrics, created in the strategy's scope."""
    jit_compile = params["jit_compile"] and supports_xla(strategy)
    if jit_compile != params["jit_compile"]:
        replicas = strategy.num_replicas_in_sync
        print(f"train: jit_compile off: XLA cannot run {replicas} replicas on CPU (see loop.py)")
    with strategy.scope():
        return Trainer(
            build_model(params["model"]),
            make_optimizer(params, steps),
            strategy,
            params["batch_size"],
            jit_compile,
            params["unrolled_steps"],
        )


def open_checkpoints(
    checkpoint_root: Path, params: dict, data_dir: Path, trainer: Trainer
) -> Checkpoints:
    """This run's checkpoints: keyed by its params and data, one folder per worker."""
    directory = checkpoint_root / checkpoint_key(params, data_dir)
    if not trainer.is_chief:
        # Saving is collective under MultiWorkerMirroredStrategy: every worker saves, the
        # others into a folder of their own that only their own resume reads.
        directory = directory / f"worker-{trainer.strategy.cluster_resolver.task_id}"
    return Checkpoints(directory, trainer)


def epoch_summary(trainer: Trainer, epoch: int, validation: tf.data.Dataset) -> dict:
    """The epoch's row of the history: its train metrics, then a validation pass."""
    validation_loss, validation_accuracy = trainer.evaluate(validation)
    return {
        "epoch": epoch,
        "train_loss": float(trainer.train_loss.result()),
        "train_accuracy": float(trainer.train_accuracy.result()),
        "validation_loss": validation_loss,
        "validation_accuracy": validation_accuracy,
        # Where a schedule has brought it by the end of the epoch. (Through a tensor: under
        # `mirrored` it is a MirroredVariable, which float() refuses.)
        "learning_rate": float(tf.convert_to_tensor(trainer.optimizer.learning_rate)),
    }


def final_metrics(history: list[dict], trained_examples: int, train_seconds: float) -> dict:
    final = history[-1]
    return {
        "train": {"loss": final["train_loss"], "accuracy": final["train_accuracy"]},
        "validation": {"loss": final["validation_loss"], "accuracy": final["validation_accuracy"]},
        # Wall-clock numbers: they vary from run to run, unlike everything above.
        "timing": {
            "train_seconds": round(train_seconds, 2),
            "examples_per_second": round(trained_examples / train_seconds) if train_seconds else 0,
        },
    }


def train(
    data_dir: Path, params: dict, checkpoint_root: Path
) -> tuple[Trainer, dict, list[dict], Checkpoints]:
    """Train on the prepared data; return the trainer, metrics, history and checkpoints."""
    keras.utils.set_random_seed(params["seed"])
    if params["deterministic"]:
        tf.config.experimental.enable_op_determinism()
    strategy = make_strategy(params["distribute"])
    steps = steps_per_epoch(data_dir, params, strategy.num_replicas_in_sync)
    # Each worker's share of the training shards, decoded once for every epoch.
    load_shards = functools.cache(functools.partial(load_training_shards, data_dir))
    validation = make_eval_dataset(
        *records.load_split(data_dir, "validation"), params["eval_batch_size"]
    )
    trainer = build_trainer(params, strategy, steps)
    checkpoints = open_checkpoints(checkpoint_root, params, data_dir, trainer)
    history = checkpoints.restore()
    if history:
        print(f"train: resuming after epoch {len(history)} from {checkpoints.directory}")
    epochs, examples, first_epoch = params["epochs"], steps * params["batch_size"], len(history) + 1
    train_seconds = 0.0
    for epoch in range(first_epoch, epochs + 1):
        trainer.reset_metrics()
        dataset = distribute_train_dataset(
            strategy, load_shards, params["batch_size"], params["seed"] + epoch
        )
        start = time.perf_counter()
        with tqdm(
            total=steps,
            desc=f"epoch {epoch}/{epochs}",
            leave=False,
            disable=not sys.stderr.isatty(),
        ) as progress:
            run_epoch(trainer, dataset, steps, params["steps_per_execution"], epoch, progress)
        seconds = time.perf_counter() - start
        train_seconds += seconds
        history.append(epoch_summary(trainer, epoch, validation))
        row = history[-1]
        print(
            f"epoch {epoch}/{epochs}  train loss {row['train_loss']:.4f} "
            f"accuracy {row['train_accuracy']:.4f}  validation loss {row['validation_loss']:.4f}"
            f" accuracy {row['validation_accuracy']:.4f}  {seconds:.1f} s  "
            f"{examples / seconds:.0f} examples/s",
            flush=True,
        )
        checkpoints.save(history)
    trained_examples = (epochs + 1 - first_epoch) * examples  # in this process
    return trainer, final_metrics(history, trained_examples, train_seconds), history, checkpoints


def write_history(path: Path, history: list[dict]) -> None:
    with atomic_output(path) as temporary, temporary.open("w", newline="") as file:
        writer = csv.DictWriter(file, HISTORY_COLUMNS, delimiter="\t", lineterminator="\n")
        writer.writeheader()
        writer.writerows(history)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", type=Path, help="directory of the prepared TFRecords")
    parser.add_argument("model", type=Path, help="where to write the SavedModel")
    parser.add_argument("metrics", type=Path, help="where to write the final metrics JSON")
    parser.add_argument("history", type=Path, help="where to write the per-epoch TSV")
    parser.add_argument(
        "--checkpoints",
        type=Path,
        default=Path(".checkpoints"),
        help="where unfinished runs keep their last epoch (default: %(default)s)",
    )
    parser.add_argument("--params", default="params.yaml", help="(default: %(default)s)")
    arguments = parser.parse_args()
    params = load_params(PARAMS, arguments.params)
    trainer, metrics, history, checkpoints = train(arguments.data, params, arguments.checkpoints)
    if trainer.is_chief:
        with atomic_output(arguments.model) as temporary:
            export_saved_model(trainer.model, temporary)
        write_json(arguments.metrics, metrics)
        write_history(arguments.history, history)
    else:
        # Every worker takes part in the (collective) export; only the chief's is kept.
        with tempfile.TemporaryDirectory() as scratch:
            export_saved_model(trainer.model, Path(scratch) / "model")
    checkpoints.remove()


if __name__ == "__main__":
    run_stage(main)
