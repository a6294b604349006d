"""The training loop: the reference tutorial's train_step, and what makes it fast.

Read from the top. `Trainer.train_step` is the tutorial's step (GradientTape, Keras loss,
optimizer and metrics); `train_steps` runs `steps_per_execution` of them, one after the
other, in one compiled program; `run_steps` feeds that program the next batches on every
replica. `run_epoch` calls `run_steps` once per group of steps, so a step is three calls
from the epoch loop (and stops a run whose loss runs away).

What makes it fast, without hiding the step:
- XLA (`jit_compile`) compiles each group of steps into one program, where it plans the
  steps' buffers together (docs/results.md, Speed, measures 4 steps per program against
  1);
- Python is entered once per group, not once per step;
- every batch has the same shape: training drops the last partial batch (and an epoch is a
  whole number of groups), evaluation pads its last batch and gives the padding zero
  weight, so nothing retraces or recompiles;
- the data is decoded once into memory (uint8), or streamed from its shards when it is
  larger than `max_in_memory_mb`, and served by tf.data with prefetching, without the
  autotuning model (data.py).
The same code runs under any tf.distribute strategy (distribute.py): per-example losses
averaged over the global batch, metrics updated inside the replica function, variables
created in the strategy's scope.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING

import keras
import tensorflow as tf

from loopline.distribute import supports_xla
from loopline.model import build_model
from loopline.params import check_train_params, dispatch_table
from loopline.records import DataMeta, split_shards

if TYPE_CHECKING:  # only annotates run_epoch: the loop needs no DVCLive
    from loopline.progress import Progress


class Trainer:
    """The model, its optimizer and metrics, and the compiled steps that update them."""

    def __init__(
        self,
        model: keras.Model,
        optimizer: keras.Optimizer,
        strategy: tf.distribute.Strategy,
        global_batch_size: int,
        jit_compile: bool,
        steps_per_execution: int = 1,
        label_smoothing: float = 0.0,
    ) -> None:
        self.model, self.optimizer, self.strategy = model, optimizer, strategy
        self.global_batch_size = global_batch_size
        self.steps_per_execution = steps_per_execution
        self.loss_function = keras.losses.SparseCategoricalCrossentropy(
            from_logits=True, reduction=None
        )
        self.train_loss_function = (
            smoothed_cross_entropy(label_smoothing) if label_smoothing else self.loss_function
        )
        self.train_loss = keras.metrics.Mean(name="train_loss")
        self.train_accuracy = keras.metrics.SparseCategoricalAccuracy(name="train_accuracy")
        self.eval_loss = keras.metrics.Mean(name="eval_loss")
        self.eval_accuracy = keras.metrics.SparseCategoricalAccuracy(name="eval_accuracy")
        # Create every variable now, not inside the first traced step: otherwise the step
        # traces twice (and the first step fails under MirroredStrategy).
        model(tf.zeros((1, *model.input_shape[1:]), model.input.dtype))
        optimizer.build(model.trainable_variables)
        self.compiled_train_steps = tf.function(self.train_steps, jit_compile=jit_compile)
        self.compiled_eval_step = tf.function(self.eval_step, jit_compile=jit_compile)

    def train_step(self, images: tf.Tensor, labels: tf.Tensor) -> None:
        """The tutorial's step, on one replica's share of the global batch."""
        with tf.GradientTape() as tape:
            # Under mixed precision the model computes in bfloat16: the loss and the
            # metrics take float32 logits.
            logits = tf.cast(self.model(images, training=True), tf.float32)
            per_example_loss = self.train_loss_function(labels, logits)
            # Summed over the replicas, these shares make the global batch's mean loss.
            loss = tf.nn.compute_average_loss(
                per_example_loss, global_batch_size=self.global_batch_size
            )
        gradients = tape.gradient(loss, self.model.trainable_variables)
        self.optimizer.apply_gradients(zip(gradients, self.model.trainable_variables, strict=True))
        self.train_loss.update_state(per_example_loss)
        self.train_accuracy.update_state(labels, logits)

    def train_steps(self, batches: list[tuple[tf.Tensor, tf.Tensor]]) -> None:
        """One train_step per batch, in order; compiled as one program (compiled_train_steps)."""
        for images, labels in batches:
            self.train_step(images, labels)

    @tf.function
    def run_steps(self, iterator) -> None:
        """The next `steps_per_execution` steps: one call from Python, one compiled program."""
        batches = [next(iterator) for _ in range(self.steps_per_execution)]
        self.strategy.run(self.compiled_train_steps, args=(batches,))

    def eval_step(self, images: tf.Tensor, labels: tf.Tensor, weights: tf.Tensor) -> None:
        logits = tf.cast(self.model(images, training=False), tf.float32)
        self.eval_loss.update_state(self.loss_function(labels, logits), sample_weight=weights)
        self.eval_accuracy.update_state(labels, logits, sample_weight=weights)

    @tf.function
    def _evaluate(self, iterator) -> None:
        # An iterator, not the distributed dataset: looping over that one inside
        # tf.function reads its options in graph mode, and TF 2.21 warns every time.
        for batch in iterator:
            self.strategy.run(self.compiled_eval_step, args=batch)

    def evaluate(self, dataset: tf.data.Dataset) -> tuple[float, float]:
        """Mean loss and accuracy over every (non-padding) example of `dataset`."""
        self.eval_loss.reset_state()
        self.eval_accuracy.reset_state()
        self._evaluate(iter(self.strategy.experimental_distribute_dataset(dataset)))
        return float(self.eval_loss.result()), float(self.eval_accuracy.result())

    def reset_metrics(self) -> None:
        self.train_loss.reset_state()
        self.train_accuracy.reset_state()

    @property
    def is_chief(self) -> bool:
        """Whether this process writes the outputs: all but non-chief workers do."""
        return self.strategy.extended.should_checkpoint


def smoothed_cross_entropy(label_smoothing: float):
    """Per-example cross-entropy against targets with `label_smoothing` of the probability
    spread evenly over the classes, the rest on the true one (Szegedy et al. 2016)."""
    categorical = keras.losses.CategoricalCrossentropy(
        from_logits=True, label_smoothing=label_smoothing, reduction=None
    )

    def loss(labels: tf.Tensor, logits: tf.Tensor) -> tf.Tensor:
        return categorical(tf.one_hot(labels, tf.shape(logits)[-1]), logits)

    return loss


# Runaway training stops when the mean loss of the epoch so far is not finite or exceeds 10x
# an untrained model's: uniform logits over 10 classes cost ln(10) = 2.30 per example (over
# n classes, ln(n)), and a mean above 23 needs the true class at odds below 1e-10 on
# average: confidently wrong.
# Measured on MNIST (batch 32, checked every 4 steps as run_epoch does), healthy runs peak
# at their first check and fall from there: tutorial model at learning_rate 0.001, 0.003,
# 0.01: 2.13, 2.13, 3.37; convnet: 2.53, 2.30, 2.30; even the tutorial model at 0.03
# peaks at 10.1 and trains (0.72 over 400 steps). At learning_rate 1000: 4.5e13 at once.
RUNAWAY_FACTOR = 10


def untrained_loss(classes: int) -> float:
    """The cross-entropy of uniform logits over `classes` classes."""
    return math.log(classes)


class RunawayTrainingError(ValueError):
    """The loss ran away (see RUNAWAY_FACTOR): a learning rate too high for this model."""


def run_epoch(
    trainer: Trainer, dataset: tf.distribute.DistributedDataset, steps: int, progress: Progress
) -> None:
    """One pass over the training data, `steps_per_execution` steps per call."""
    iterator = iter(dataset)
    untrained = untrained_loss(trainer.model.output_shape[-1])
    for done in range(trainer.steps_per_execution, steps + 1, trainer.steps_per_execution):
        trainer.run_steps(iterator)
        loss = float(trainer.train_loss.result())  # the mean over this epoch's steps so far
        if not loss <= RUNAWAY_FACTOR * untrained:  # nan too
            raise RunawayTrainingError(
                f"params.yaml: learning_rate: training ran away in {progress.description}: "
                f"mean loss {loss:.3g} over its first {done} steps, where an untrained model's "
                f"is {untrained:.2f}; lower learning_rate"
            )
        progress.update(done, loss)


def steps_per_epoch(data_dir: Path, params: dict, replicas: int) -> int:
    """Full batches per epoch in whole groups of steps_per_execution, once params are checked.

    At most steps_per_execution - 1 full batches are left out of each epoch (a different few
    each epoch, as the order is shuffled): no partial group, so one compiled program.
    """
    train_examples, _ = split_shards(data_dir, "train")
    check_train_params(params, train_examples, replicas)
    group = params["steps_per_execution"]
    return train_examples // params["batch_size"] // group * group


# One-cycle (Smith and Topin's "super-convergence", as fast.ai's fit_one_cycle uses it): a
# short linear warm-up from a small learning rate lets a high peak rate be used without the
# first steps of a fresh model (and fresh batch-norm statistics) diverging; the cosine decay
# to 0 then settles the weights within a few epochs. The start, peak / 25, is fast.ai's
# default (div=25); the 20 % warm-up is what the measured `make best` runs used (fast.ai:
# 25 %). Common practice, not tuned per model, so not params of their own.
ONECYCLE_WARMUP_FRACTION = 0.2
ONECYCLE_START_DIVISOR = 25


def one_cycle(learning_rate: float, total_steps: int) -> keras.optimizers.schedules.CosineDecay:
    """Linear warm-up from learning_rate / 25 to learning_rate over the first 20 % of the
    steps, then a cosine decay to 0 at `total_steps`."""
    warmup_steps = int(ONECYCLE_WARMUP_FRACTION * total_steps)
    return keras.optimizers.schedules.CosineDecay(
        learning_rate / ONECYCLE_START_DIVISOR,
        decay_steps=total_steps - warmup_steps,
        alpha=0.0,
        warmup_target=learning_rate,
        warmup_steps=warmup_steps,
    )


# The `learning_rate_schedule` param's choices: Adam's learning rate, given the peak (for
# constant and cosine: initial) one and the number of steps of the whole run.
SCHEDULES = dispatch_table(
    "learning_rate_schedule",
    constant=lambda learning_rate, total_steps: learning_rate,
    cosine=lambda learning_rate, total_steps: keras.optimizers.schedules.CosineDecay(
        learning_rate, decay_steps=total_steps
    ),
    onecycle=one_cycle,
)


def build_trainer(
    params: dict, strategy: tf.distribute.Strategy, steps: int, data: DataMeta
) -> Trainer:
    """The model for `data`'s images and classes, its optimizer and metrics, created in the
    strategy's scope."""
    jit_compile = params["jit_compile"] and supports_xla(strategy)
    if jit_compile != params["jit_compile"]:
        replicas = strategy.num_replicas_in_sync
        print(
            f"train: jit_compile off: XLA cannot run {replicas} replicas on CPU (see distribute.py)"
        )
    schedule = SCHEDULES[params["learning_rate_schedule"]]
    learning_rate = schedule(params["learning_rate"], params["epochs"] * steps)
    with strategy.scope():
        return Trainer(
            build_model(params["model"], data.shape, len(data.classes), params["precision"]),
            keras.optimizers.Adam(learning_rate, beta_2=params["adam_beta_2"]),
            strategy,
            params["batch_size"],
            jit_compile,
            params["steps_per_execution"],
            params["label_smoothing"],
        )
