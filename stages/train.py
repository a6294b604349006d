"""train: prepared TFRecords -> a SavedModel, with a hand-written training loop.

Reads  data/prepared (train and validation shards, meta.json: the image shape and the
       class names); the params in PARAMS.
Writes models/<dataset>: a SavedModel whose serving_default takes uint8 images [batch,
       height, width] (grey) or [batch, height, width, 3] (colour) and returns logits,
       probabilities and classes; its assets.extra/loopline.json names the classes;
       metrics/train: DVCLive's files, rewritten after every epoch (so `dvc exp show` and
       `dvc metrics show` follow a running experiment): metrics.json holds the last epoch's
       validation accuracy, plots/metrics/ one TSV per metric and epoch.
Keeps  .checkpoints/<key>/: the last finished epoch, so a killed run resumes there
       (loopline/checkpoints.py); removed once the model is written. A damaged one is
       named in one line and the run starts afresh. Under `multi_worker`
       each worker keeps its last two, and only the chief writes the outputs.
Run    dvc repro train
"""

from __future__ import annotations

import loopline

if __name__ == "__main__":  # the command line: before TensorFlow is imported below
    loopline.import_tensorflow_quietly()

import argparse
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import keras
import tensorflow as tf

from loopline import records
from loopline.checkpoints import Checkpoints, open_checkpoints
from loopline.data import distribute_train_dataset, training_shares, validation_dataset
from loopline.distribute import lost_peer, make_strategy
from loopline.files import StageError, atomic_output, run_stage
from loopline.loop import RunawayTrainingError, Trainer, build_trainer, run_epoch, steps_per_epoch
from loopline.model import export_saved_model, model_card
from loopline.params import load_params
from loopline.progress import Progress, log_epoch, open_live

PARAMS = (
    "seed",
    "model",
    "epochs",
    "batch_size",
    "learning_rate",
    "learning_rate_schedule",
    "adam_beta_2",
    "label_smoothing",
    "precision",
    "jit_compile",
    "deterministic",
    "steps_per_execution",
    "distribute",
    "eval_batch_size",
    "max_in_memory_mb",
)


def train_epoch(
    trainer: Trainer,
    dataset: tf.distribute.DistributedDataset,
    steps: int,
    description: str,
    validation: tf.data.Dataset,
) -> dict:
    """Train one epoch, validate, print the epoch's line; return its row of the history."""
    trainer.reset_metrics()
    start = time.perf_counter()
    progress = Progress(steps, description)
    try:
        run_epoch(trainer, dataset, steps, progress)
    finally:
        progress.close()
    seconds = time.perf_counter() - start  # printed only: no wall-clock time in the metrics
    validation_loss, validation_accuracy = trainer.evaluate(validation)
    row = {
        "train_loss": float(trainer.train_loss.result()),
        "train_accuracy": float(trainer.train_accuracy.result()),
        "validation_loss": validation_loss,
        "validation_accuracy": validation_accuracy,
        # Where a schedule has brought it by the end of the epoch. (Through a tensor: under
        # `mirrored` it is a MirroredVariable, which float() refuses.)
        "learning_rate": float(tf.convert_to_tensor(trainer.optimizer.learning_rate)),
    }
    print(
        f"{description}  train loss {row['train_loss']:.4f} "
        f"accuracy {row['train_accuracy']:.4f}  validation loss {row['validation_loss']:.4f}"
        f" accuracy {row['validation_accuracy']:.4f}  {seconds:.1f} s  "
        f"{steps * trainer.global_batch_size / seconds:.0f} examples/s",
        flush=True,
    )
    return row


@dataclass
class TrainingRun:
    """What train() leaves: the trained model's trainer, the history, the checkpoints."""

    trainer: Trainer
    history: list[dict]
    checkpoints: Checkpoints


def train(
    data_dir: Path, params: dict, checkpoint_root: Path, live_dir: Path | None = None
) -> TrainingRun:
    """Train on the prepared data, resuming from this run's checkpoint if there is one.

    With `live_dir`, the chief logs every epoch there through DVCLive; a resumed run first
    logs the epochs it restored, so its files are the same as an uninterrupted run's.
    """
    keras.utils.set_random_seed(params["seed"])
    if params["deterministic"]:
        tf.config.experimental.enable_op_determinism()
    strategy = make_strategy(params["distribute"])
    steps = steps_per_epoch(data_dir, params, strategy.num_replicas_in_sync)
    shares = training_shares(data_dir, params["max_in_memory_mb"])
    validation = validation_dataset(data_dir, params["eval_batch_size"])
    trainer = build_trainer(params, strategy, steps, records.data_meta(data_dir))
    checkpoints = open_checkpoints(checkpoint_root, params, data_dir, trainer)
    history = checkpoints.restore()
    if history:
        print(f"train: resuming after epoch {len(history)} from {checkpoints.directory}")
    live = open_live(live_dir) if live_dir and trainer.is_chief else None
    epochs = params["epochs"]
    try:
        for row in history:  # restored: the same files as an uninterrupted run
            log_epoch(live, row)
        for epoch in range(len(history) + 1, epochs + 1):
            dataset = distribute_train_dataset(
                strategy, shares, params["batch_size"], params["seed"] + epoch
            )
            row = train_epoch(trainer, dataset, steps, f"epoch {epoch}/{epochs}", validation)
            history.append({"epoch": epoch, **row})
            log_epoch(live, history[-1])
            checkpoints.save(history)
    except BaseException as error:
        if live is not None:  # no metrics from a run that did not finish
            shutil.rmtree(live_dir, ignore_errors=True)
        if isinstance(error, RunawayTrainingError):
            checkpoints.remove()  # it would run away again: nothing to resume
        raise
    return TrainingRun(trainer, history, checkpoints)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", type=Path, help="directory of the prepared TFRecords")
    parser.add_argument("model", type=Path, help="where to write the SavedModel")
    parser.add_argument("metrics", type=Path, help="DVCLive's folder for the metrics and plots")
    parser.add_argument(
        "--checkpoints",
        type=Path,
        default=Path(".checkpoints"),
        help="where unfinished runs keep their last epoch (default: %(default)s)",
    )
    parser.add_argument("--params", default="params.yaml", help="(default: %(default)s)")
    arguments = parser.parse_args()
    params = load_params(PARAMS, arguments.params)
    data = records.data_meta(arguments.data)
    card = model_card(list(data.classes), data.framing, data.dataset, data.shape)
    try:
        run = train(arguments.data, params, arguments.checkpoints, arguments.metrics)
        if run.trainer.is_chief:
            with atomic_output(arguments.model) as temporary:
                export_saved_model(run.trainer.model, temporary, card)
        else:
            # Every worker takes part in the (collective) export; only the chief's is kept.
            with tempfile.TemporaryDirectory() as scratch:
                export_saved_model(run.trainer.model, Path(scratch) / "model", card)
    except tf.errors.UnavailableError as error:  # `multi_worker`: a collective lost a peer
        raise StageError(lost_peer(error)) from None
    run.checkpoints.remove()


if __name__ == "__main__":
    run_stage(main, interrupted="the last finished epoch is kept; `dvc repro` resumes there")
