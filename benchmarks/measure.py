"""The things train_speed times, each behind a function that runs them once and says how fast.

A training variant is set up by `*_loop(train_images, train_labels)`, which returns `run`:
`run(num_steps)` trains that many steps and returns the seconds per step. All variants
train the tutorial model (Conv2D 32 3x3 -> Flatten -> Dense 128 -> Dense 10) on the same
uint8 arrays (records.load_split) in batches of 32.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from benchmarks.tutorial import SimpleModel
from loopline import records
from loopline.data import make_train_dataset
from loopline.distribute import make_strategy
from loopline.loop import Trainer
from loopline.model import build_model

# The tutorial's setting, fixed here rather than read from params.yaml so that results
# stay comparable from run to run; STEPS_PER_EXECUTION is params.yaml's default.
BATCH_SIZE = 32
STEPS_PER_EXECUTION = 4
# model.fit's steps per call for its strongest variant (c2): Python is entered rarely.
FIT_STEPS_PER_EXECUTION = 48
SHUFFLE_SEED = 0  # timing does not depend on it
MATMULS_PER_RUN = 5
COPIES_PER_RUN = 50

Run = Callable[[int], float]  # runs that many training steps, returns seconds per step


def tutorial_loop(train_images: np.ndarray, train_labels: np.ndarray) -> Run:
    """(a) The tutorial's loop as written: per-step @tf.function, Python loop over tf.data."""
    model, optimizer = SimpleModel(), keras.optimizers.Adam()
    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    train_loss = keras.metrics.Mean(name="train_loss")
    train_accuracy = keras.metrics.SparseCategoricalAccuracy(name="train_accuracy")
    # The tutorial's `x / 255.0` is float64 in NumPy; float32 is what the model runs in.
    # No drop_remainder, as written: each epoch's last batch (24 examples) traces
    # train_step once more, the first time only (after 1718 steps).
    x_train = (train_images.astype(np.float32) / 255)[..., np.newaxis]
    dataset = tf.data.Dataset.from_tensor_slices((x_train, train_labels)).shuffle(60000).batch(32)

    @tf.function
    def train_step(images: tf.Tensor, labels: tf.Tensor) -> None:
        with tf.GradientTape() as tape:
            predictions = model(images, training=True)
            loss = loss_fn(labels, predictions)
        gradients = tape.gradient(loss, model.trainable_variables)
        optimizer.apply_gradients(zip(gradients, model.trainable_variables, strict=True))
        train_loss(loss)
        train_accuracy(labels, predictions)

    # `for epoch in range(epochs): for images, labels in train_dataset:`, endless.
    batches = itertools.chain.from_iterable(itertools.repeat(dataset))

    def run(num_steps: int) -> float:
        start = time.perf_counter()
        for images, labels in itertools.islice(batches, num_steps):
            train_step(images, labels)
        train_loss.result().numpy()  # the last step has finished
        return (time.perf_counter() - start) / num_steps

    return run


class StepTimer(keras.callbacks.Callback):
    """Times fit's steps from its second call on: the first one waits for the shuffle buffer.

    Keras calls `on_train_batch_begin` once per call of its compiled function, that is
    every `steps_per_execution` steps.
    """

    def __init__(self, steps_per_execution: int) -> None:
        super().__init__()
        self.steps_per_execution = steps_per_execution

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        self.starts: list[float] = []

    def on_train_batch_begin(self, batch: int, logs: dict | None = None) -> None:
        self.starts.append(time.perf_counter())

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        timed_steps = (len(self.starts) - 1) * self.steps_per_execution
        self.seconds_per_step = (time.perf_counter() - self.starts[1]) / timed_steps


def fit_loop(
    train_images: np.ndarray,
    train_labels: np.ndarray,
    jit_compile: bool,
    steps_per_execution: int = 1,
    unrolled_steps: int = 1,
) -> Run:
    """(b), (c) model.fit on the project's tutorial model and training dataset.

    `steps_per_execution` runs that many steps per call of fit's compiled function (a
    tf.while_loop, each step still its own XLA program); `unrolled_steps` sets Keras'
    `unrolled_steps_per_execution`, which unrolls that many steps in the loop's body.
    """
    model = build_model("tutorial")
    # Explicit: compile's default, "auto", means False on a CPU-only machine.
    model.compile(
        optimizer=keras.optimizers.Adam(),
        metrics=["accuracy"],
        jit_compile=jit_compile,
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        steps_per_execution=steps_per_execution,
    )
    # Not a public argument of compile() in Keras 3.15: an attribute of the TensorFlow
    # trainer, read when fit builds its function (keras/src/backend/tensorflow/trainer.py).
    model.unrolled_steps_per_execution = unrolled_steps
    dataset = make_train_dataset(train_images, train_labels, BATCH_SIZE, SHUFFLE_SEED).repeat()
    timer = StepTimer(steps_per_execution)

    def run(num_steps: int) -> float:
        # Whole calls only, at least three: the first is not timed (see StepTimer).
        calls = max(3, -(-num_steps // steps_per_execution))
        model.fit(
            dataset,
            epochs=1,
            steps_per_epoch=calls * steps_per_execution,
            shuffle=False,
            verbose=0,
            callbacks=[timer],
        )
        return timer.seconds_per_step

    return run


def trainer_loop(
    train_images: np.ndarray,
    train_labels: np.ndarray,
    jit_compile: bool = True,
    steps_per_execution: int = STEPS_PER_EXECUTION,
) -> Run:
    """(d) This project's Trainer, driven a group of steps per call as stages.train does."""
    strategy = make_strategy("none")
    trainer = Trainer(
        build_model("tutorial"),
        keras.optimizers.Adam(),
        strategy,
        BATCH_SIZE,
        jit_compile,
        steps_per_execution,
    )
    dataset = make_train_dataset(train_images, train_labels, BATCH_SIZE, SHUFFLE_SEED).repeat()
    # One iterator for the whole run, where run_epoch makes one per epoch: refilling the
    # shuffle buffer (~0.1 s, once per 1718 steps) would weigh on every short timing.
    iterator = iter(strategy.experimental_distribute_dataset(dataset))

    def run(num_steps: int) -> float:
        calls = max(1, num_steps // steps_per_execution)
        start = time.perf_counter()
        for _ in range(calls):
            trainer.run_steps(iterator)
            if not np.isfinite(float(trainer.train_loss.result())):
                raise ValueError("(d): training diverged, the loss is not finite")
        return (time.perf_counter() - start) / (calls * steps_per_execution)

    return run


def input_pipeline(data_dir: Path) -> dict[str, float]:
    """(e) Examples/s of each part of the way from TFRecords to batches of 32."""
    shards = [str(path) for path in sorted(data_dir.glob("train-*.tfrecord.gz"))]
    start = time.perf_counter()
    parsed = tf.data.TFRecordDataset(shards, compression_type=records.COMPRESSION)
    shape = records.data_meta(data_dir).shape
    parsed_count = sum(
        len(labels)
        for _, labels in parsed.batch(records.PARSE_BATCH).map(
            lambda batch: records.parse_batch(batch, shape)
        )
    )
    parse_seconds, start = time.perf_counter() - start, time.perf_counter()
    images, labels = records.load_split(data_dir, "train")
    load_seconds, start = time.perf_counter() - start, time.perf_counter()
    batches = make_train_dataset(images, labels, BATCH_SIZE, SHUFFLE_SEED)
    batched_count = sum(len(batch_labels) for _, batch_labels in batches)
    batch_seconds = time.perf_counter() - start
    return {
        "raw TFRecord parse (tf.data, GZIP, parse_batch)": parsed_count / parse_seconds,
        "records.load_split (parse into NumPy, checks)": len(images) / load_seconds,
        "make_train_dataset, one epoch of batches": batched_count / batch_seconds,
        "both: load_split + one epoch of batches": batched_count / (load_seconds + batch_seconds),
    }


def memory_gbps(megabytes: int) -> Callable[[], float]:
    """(g) GB/s of an XLA-compiled `y = 2 * x` over `megabytes` of float32 each.

    Every byte of x is read once and every byte of y written once, as in an optimizer's
    update; far larger than the caches, like the training step's 11 MB arrays together.
    """
    x = tf.random.normal([megabytes * 2**20 // 4])
    y = tf.Variable(tf.zeros_like(x))

    @tf.function(jit_compile=True)
    def double() -> tf.Tensor:
        y.assign(2 * x)
        return tf.constant(0)  # one number to wait for, not a copy of y

    def run() -> float:
        start = time.perf_counter()
        for _ in range(COPIES_PER_RUN):
            double().numpy()
        seconds = time.perf_counter() - start
        return 2 * megabytes * 2**20 * COPIES_PER_RUN / seconds / 1e9

    return run


def matmul_gflops(size: int) -> Callable[[], float]:
    """(f) GFLOP/s of float32 [size, size] x [size, size] matmuls."""
    a, b = tf.random.normal([size, size]), tf.random.normal([size, size])

    @tf.function
    def product_sum(a: tf.Tensor, b: tf.Tensor) -> tf.Tensor:
        return tf.reduce_sum(tf.matmul(a, b))  # one number to wait for, not a 16 MB copy

    def run() -> float:
        start = time.perf_counter()
        for _ in range(MATMULS_PER_RUN):
            product_sum(a, b).numpy()
        return 2 * size**3 * MATMULS_PER_RUN / (time.perf_counter() - start) / 1e9

    return run
