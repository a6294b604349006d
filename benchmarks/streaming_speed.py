"""streaming_speed: MNIST's training epochs held in memory as train read them before it could
stream, as it reads them by default, and streamed from the shards, side by side.

In one process, on data/prepared, with params.yaml's values (the tutorial model, batches of
32, XLA, 4 steps per call, op determinism), three trainers from the same initial weights
train whole epochs (every full batch, then the validation split):
  (a) in memory: the training split decoded once into memory (records.load_split), shuffled
      whole every epoch (make_train_dataset), validation from arrays in memory: the input
      train had before streaming, kept here as the reference;
  (b) train's default: its own input (loopline/data.py training_shares) with params.yaml's
      max_in_memory_mb (MNIST's 43 MB of training pixels are held in memory), validation
      streamed from its shard;
  (c) streamed: the same with max_in_memory_mb 0.
Other jobs share the machine, so the three take turns every --chunk steps within each epoch
(the order rotating), and a burst of load elsewhere hits them alike: each variant's epoch
time is the sum of its turns, its iterator's start (and shuffle buffer's fill) included,
as train's run_epoch drives it (one call and one loss read per group of steps). Reports
the median steps per second of the training part and the median epoch with validation,
and each variant's ratio to (a): the median of its epoch-by-epoch ratios (epochs that took
turns with each other).
Writes benchmarks/results/<machine id>/streaming_speed.json (benchmarks/machine.py).
Run    python -m benchmarks.streaming_speed [--epochs 5] [--chunk 52]
"""

from __future__ import annotations

import loopline

loopline.import_tensorflow_quietly()

import argparse  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable, Iterator  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402
from pathlib import Path  # noqa: E402

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from benchmarks.machine import describe, write_results  # noqa: E402
from loopline import records  # noqa: E402
from loopline.data import (  # noqa: E402
    distribute_train_dataset,
    make_train_dataset,
    pipeline_options,
    training_shares,
    validation_dataset,
)
from loopline.distribute import make_strategy  # noqa: E402
from loopline.loop import Trainer, build_trainer, steps_per_epoch  # noqa: E402
from loopline.params import load_params  # noqa: E402
from stages import train as train_stage  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
WARMUP_STEPS = 8  # compiles the steps and the evaluation, untimed


def arrays_eval_dataset(images: np.ndarray, labels: np.ndarray, batch_size: int):
    """(a)'s validation: the split padded in memory to whole batches, padding weighing 0."""
    batch_size = min(batch_size, len(images))
    padding = -len(images) % batch_size
    weights = np.concatenate([np.ones(len(images), np.float32), np.zeros(padding, np.float32)])
    images = np.concatenate([images, np.zeros((padding, *images.shape[1:]), images.dtype)])
    labels = np.concatenate([labels, np.zeros(padding, labels.dtype)])
    return (
        tf.data.Dataset.from_tensor_slices((images, labels, weights))
        .batch(batch_size, drop_remainder=True)
        .prefetch(tf.data.AUTOTUNE)
        .with_options(pipeline_options(tf.data.experimental.AutoShardPolicy.DATA))
    )


@dataclass
class Variant:
    """A trainer, the training batches of its epochs, its validation, and its timings."""

    trainer: Trainer
    shares: Callable
    validation: tf.data.Dataset
    train_seconds: list[float] = field(default_factory=list)
    validation_seconds: list[float] = field(default_factory=list)

    def start_epoch(self, params: dict, epoch: int) -> Iterator:
        """A new epoch's iterator, as train makes one; the time it takes starts the epoch's."""
        self.trainer.reset_metrics()
        start = time.perf_counter()
        seed = params["seed"] + epoch
        dataset = distribute_train_dataset(
            self.trainer.strategy, self.shares, params["batch_size"], seed
        )
        iterator = iter(dataset)
        self.train_seconds.append(time.perf_counter() - start)
        return iterator

    def train(self, iterator: Iterator, groups: int) -> None:
        """`groups` calls of run_steps, as run_epoch makes them; timed into this epoch."""
        start = time.perf_counter()
        for _ in range(groups):
            self.trainer.run_steps(iterator)
            if not float(self.trainer.train_loss.result()) < 100:  # run_epoch reads it too
                raise ValueError("training ran away")
        self.train_seconds[-1] += time.perf_counter() - start

    def validate(self) -> None:
        start = time.perf_counter()
        self.trainer.evaluate(self.validation)
        self.validation_seconds.append(time.perf_counter() - start)


def rotated(names: list[str], turn: int) -> list[str]:
    """`names` starting `turn` places along: no variant always follows the same one."""
    return names[turn % len(names) :] + names[: turn % len(names)]


def run_epoch_in_turns(
    variants: dict[str, Variant], params: dict, epoch: int, steps: int, chunk: int
) -> None:
    """One epoch of every variant, `chunk` steps (rounded to whole groups) at a time each, in
    turns; then each one's validation, in turns."""
    group = params["steps_per_execution"]
    iterators = {name: variant.start_epoch(params, epoch) for name, variant in variants.items()}
    groups, per_turn = steps // group, max(1, chunk // group)
    turns = -(-groups // per_turn)
    for turn in range(turns):
        count = min(per_turn, groups - turn * per_turn)
        for name in rotated(list(variants), turn):
            variants[name].train(iterators[name], count)
    for name in rotated(list(variants), epoch):
        variants[name].validate()


def make_variants(data: Path, params: dict, steps: int) -> dict[str, Variant]:
    strategy = make_strategy(params["distribute"])
    meta = records.data_meta(data)

    def trainer() -> Trainer:
        keras.utils.set_random_seed(params["seed"])  # the same initial weights for each
        return build_trainer(params, strategy, steps, meta)

    images, labels = records.load_split(data, "train")
    before_validation = arrays_eval_dataset(
        *records.load_split(data, "validation"), params["eval_batch_size"]
    )
    validation = validation_dataset(data, params["eval_batch_size"])
    return {
        "(a) in memory, validation in memory": Variant(
            trainer(),
            lambda part, parts, batch_size, seed: make_train_dataset(
                images, labels, batch_size, seed
            ),
            before_validation,
        ),
        "(b) train's default: in memory, validation streamed": Variant(
            trainer(), training_shares(data, params["max_in_memory_mb"]), validation
        ),
        "(c) streamed (max_in_memory_mb 0)": Variant(
            trainer(), training_shares(data, 0), validation
        ),
    }


def summary(variants: dict[str, Variant], steps: int) -> list[dict]:
    """Each variant's median steps/s and epoch time; its ratios to (a), epoch by epoch (the
    epochs that took turns with each other) and their median."""
    baseline = next(iter(variants.values()))
    rows = []
    for name, variant in variants.items():
        epochs = [
            trained + validated
            for trained, validated in zip(
                variant.train_seconds, variant.validation_seconds, strict=True
            )
        ]
        baseline_epochs = [
            trained + validated
            for trained, validated in zip(
                baseline.train_seconds, baseline.validation_seconds, strict=True
            )
        ]
        ratios = [a / v for a, v in zip(baseline.train_seconds, variant.train_seconds, strict=True)]
        epoch_ratios = [a / v for a, v in zip(baseline_epochs, epochs, strict=True)]
        rows.append(
            {
                "variant": name,
                "steps_per_second": steps / statistics.median(variant.train_seconds),
                "over_a": statistics.median(ratios),
                "over_a_runs": [round(ratio, 3) for ratio in ratios],
                "epoch_seconds_with_validation": statistics.median(epochs),
                "epoch_over_a": statistics.median(epoch_ratios),
                "train_seconds_runs": [round(value, 2) for value in variant.train_seconds],
                "validation_seconds_runs": [
                    round(value, 3) for value in variant.validation_seconds
                ],
            }
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=REPO / "data/prepared")
    parser.add_argument("--epochs", type=int, default=5, help="of each (default: %(default)s)")
    parser.add_argument(
        "--chunk", type=int, default=52, help="steps of a turn (default: %(default)s)"
    )
    parser.add_argument("--output", type=Path, help="(default: benchmarks/results/<machine>/)")
    arguments = parser.parse_args()
    machine = describe()
    params = load_params(train_stage.PARAMS, REPO / "params.yaml")
    if params["deterministic"]:
        tf.config.experimental.enable_op_determinism()  # as train runs
    steps = steps_per_epoch(arguments.data, params, 1)
    variants = make_variants(arguments.data, params, steps)
    run_epoch_in_turns(variants, params, 0, WARMUP_STEPS, WARMUP_STEPS)  # compiles; untimed
    for variant in variants.values():
        variant.train_seconds.clear()
        variant.validation_seconds.clear()
    for epoch in range(1, arguments.epochs + 1):
        run_epoch_in_turns(variants, params, epoch, steps, arguments.chunk)
        print(
            f"epoch {epoch}: "
            + ", ".join(
                f"{name.split()[0]} {steps / variant.train_seconds[-1]:.0f} steps/s"
                for name, variant in variants.items()
            ),
            flush=True,
        )
    rows = summary(variants, steps)
    for row in rows:
        print(
            f"{row['variant']:<52} {row['steps_per_second']:>6.0f} steps/s "
            f"({row['over_a']:.3f}x (a)); with validation "
            f"{row['epoch_seconds_with_validation']:.1f} s an epoch ({row['epoch_over_a']:.3f}x)"
        )
    results = {"steps_per_epoch": steps, "params": params, "variants": rows}
    print(f"wrote {write_results('streaming_speed', results, machine, arguments.output)}")


if __name__ == "__main__":
    main()
