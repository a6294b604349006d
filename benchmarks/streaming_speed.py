"""streaming_speed: MNIST's training epochs as train read them before it could stream, as it
reads them now by default, and streamed from the shards, side by side.

In one process, on data/prepared, with params.yaml's values (the tutorial model, batches of
32, XLA, 4 steps per call, op determinism), three trainers from the same initial weights
take turns at whole epochs (every full batch, then the validation split):
  (a) before: the training split decoded once into memory (records.load_split), shuffled
      whole every epoch (make_train_dataset), validation from arrays in memory: the input
      train had before streaming, kept here as the reference;
  (b) now: stages.train's own input with params.yaml's max_in_memory_mb (MNIST's 43 MB of
      training pixels are held in memory), validation streamed from its shard;
  (c) streamed: the same with max_in_memory_mb 0.
The order rotates every turn, so a burst of load elsewhere hits every variant alike.
Reports the median steps per second of the training part of the epochs and of the whole
epochs with validation, and each variant's ratio to (a).
Writes benchmarks/results/<machine id>/streaming_speed.json (benchmarks/machine.py).
Run    python -m benchmarks.streaming_speed [--repeats 5]
"""

from __future__ import annotations

import loopline

loopline.import_tensorflow_quietly()

import argparse  # noqa: E402
import io  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402
from pathlib import Path  # noqa: E402

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from benchmarks.machine import describe, write_results  # noqa: E402
from loopline import records  # noqa: E402
from loopline.data import distribute_train_dataset, make_train_dataset, pipeline_options  # noqa: E402
from loopline.distribute import make_strategy  # noqa: E402
from loopline.loop import Trainer, run_epoch, steps_per_epoch  # noqa: E402
from loopline.params import load_params  # noqa: E402
from loopline.progress import Progress  # noqa: E402
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
    epoch: int = 0
    train_seconds: list[float] = field(default_factory=list)
    epoch_seconds: list[float] = field(default_factory=list)

    def run(self, params: dict, steps: int) -> tuple[float, float]:
        """One epoch of `steps` steps, then validation: seconds for each part and together."""
        self.epoch += 1
        strategy = self.trainer.strategy
        seed = params["seed"] + self.epoch
        dataset = distribute_train_dataset(strategy, self.shares, params["batch_size"], seed)
        self.trainer.reset_metrics()
        start = time.perf_counter()
        quiet = Progress(steps, f"epoch {self.epoch}", terminal=False, stream=io.StringIO())
        run_epoch(self.trainer, dataset, steps, quiet)
        trained = time.perf_counter() - start
        self.trainer.evaluate(self.validation)
        return trained, time.perf_counter() - start


def make_variants(data: Path, params: dict, steps: int) -> dict[str, Variant]:
    strategy = make_strategy(params["distribute"])
    meta = records.data_meta(data)

    def trainer() -> Trainer:
        keras.utils.set_random_seed(params["seed"])  # the same initial weights for each
        return train_stage.build_trainer(params, strategy, steps, meta)

    images, labels = records.load_split(data, "train")
    before_validation = arrays_eval_dataset(
        *records.load_split(data, "validation"), params["eval_batch_size"]
    )
    validation = train_stage.validation_dataset(data, params["eval_batch_size"])
    return {
        "(a) before: in memory, validation in memory": Variant(
            trainer(),
            lambda part, parts, batch_size, seed: make_train_dataset(
                images, labels, batch_size, seed
            ),
            before_validation,
        ),
        "(b) now, default: in memory, validation streamed": Variant(
            trainer(), train_stage.training_shares(data, params["max_in_memory_mb"]), validation
        ),
        "(c) streamed (max_in_memory_mb 0)": Variant(
            trainer(), train_stage.training_shares(data, 0), validation
        ),
    }


def summary(variants: dict[str, Variant], steps: int) -> list[dict]:
    baseline = statistics.median(next(iter(variants.values())).train_seconds)
    baseline_epoch = statistics.median(next(iter(variants.values())).epoch_seconds)
    rows = []
    for name, variant in variants.items():
        train_seconds = statistics.median(variant.train_seconds)
        epoch_seconds = statistics.median(variant.epoch_seconds)
        rows.append(
            {
                "variant": name,
                "steps_per_second": steps / train_seconds,
                "over_a": baseline / train_seconds,
                "epoch_seconds_with_validation": epoch_seconds,
                "epoch_over_a": baseline_epoch / epoch_seconds,
                "train_seconds_runs": [round(value, 2) for value in variant.train_seconds],
                "epoch_seconds_runs": [round(value, 2) for value in variant.epoch_seconds],
            }
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=REPO / "data/prepared")
    parser.add_argument("--repeats", type=int, default=5, help="epochs of each (default: 5)")
    parser.add_argument("--output", type=Path, help="(default: benchmarks/results/<machine>/)")
    arguments = parser.parse_args()
    machine = describe()
    params = load_params(train_stage.PARAMS, REPO / "params.yaml")
    if params["deterministic"]:
        tf.config.experimental.enable_op_determinism()  # as train runs
    steps = steps_per_epoch(arguments.data, params, 1)
    variants = make_variants(arguments.data, params, steps)
    for variant in variants.values():
        variant.run(params, WARMUP_STEPS)
    names = list(variants)
    for repeat in range(arguments.repeats):
        for name in names[repeat % len(names) :] + names[: repeat % len(names)]:
            trained, whole = variants[name].run(params, steps)
            variants[name].train_seconds.append(trained)
            variants[name].epoch_seconds.append(whole)
            print(f"repeat {repeat + 1}: {name}: {steps / trained:.0f} steps/s", flush=True)
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
