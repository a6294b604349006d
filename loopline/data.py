"""The tf.data pipelines that feed the training loop and its validation.

Every batch has the same shape, so nothing retraces or recompiles: training drops the last
partial batch, evaluation pads its last batch and gives the padding zero weight. Each
worker of a distributed run reads only its own share of the training shards.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import tensorflow as tf


def in_memory_options() -> tf.data.Options:
    """tf.data options for the pipelines here, which serve arrays already in memory.

    No autotuning model: these pipelines have nothing for it to tune (prefetch sizes its
    buffer by itself), and deleting an iterator waits for the model's background thread:
    with TF 2.21, training the tutorial model, seconds after most epochs, and none with the
    model off, at the same speed.
    """
    options = tf.data.Options()
    options.autotune.enabled = False
    return options


def make_train_dataset(
    images: np.ndarray, labels: np.ndarray, batch_size: int, seed: int
) -> tf.data.Dataset:
    """Shuffled full batches for one epoch; `seed` fixes this epoch's order."""
    return (
        tf.data.Dataset.from_tensor_slices((images, labels))
        .shuffle(len(images), seed=seed)
        .batch(batch_size, drop_remainder=True)
        .prefetch(tf.data.AUTOTUNE)
        .with_options(in_memory_options())
    )


def make_eval_dataset(images: np.ndarray, labels: np.ndarray, batch_size: int) -> tf.data.Dataset:
    """(images, labels, weights) in equal batches; padding examples weigh 0, real ones 1."""
    batch_size = min(batch_size, len(images))
    padding = -len(images) % batch_size
    weights = np.concatenate([np.ones(len(images), np.float32), np.zeros(padding, np.float32)])
    images = np.concatenate([images, np.zeros((padding, *images.shape[1:]), images.dtype)])
    labels = np.concatenate([labels, np.zeros(padding, labels.dtype)])
    # Several workers split the batches between them (the padding weights travel with
    # them) and the metrics add up over the workers. Tensors in memory have no files to
    # shard by: say DATA rather than let AUTO try FILE first and log a warning.
    options = in_memory_options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return (
        tf.data.Dataset.from_tensor_slices((images, labels, weights))
        .batch(batch_size, drop_remainder=True)
        .prefetch(tf.data.AUTOTUNE)
        .with_options(options)
    )


def distribute_train_dataset(
    strategy: tf.distribute.Strategy,
    load_shards: Callable[[int, int], tuple[np.ndarray, np.ndarray]],
    global_batch_size: int,
    seed: int,
) -> tf.distribute.DistributedDataset:
    """One epoch of training batches for every replica; a worker reads only its shards.

    `load_shards(index, count)` returns the examples of the training shard files
    index::count. Sharding by file, by hand: each worker (input pipeline) decodes only its
    own files, where auto-sharding an in-memory dataset would make every worker load all
    of them. With one worker (`none`, `mirrored`) the batches are make_train_dataset's,
    the same for every strategy; replicas on one worker take turns at them.
    """

    def dataset_fn(context: tf.distribute.InputContext) -> tf.data.Dataset:
        images, labels = load_shards(context.input_pipeline_id, context.num_input_pipelines)
        batch_size = context.get_per_replica_batch_size(global_batch_size)
        # Every worker must run the same number of steps (each one is collective), but
        # their shares differ by up to a shard: one that runs out starts its share again.
        return make_train_dataset(images, labels, batch_size, seed).repeat()

    return strategy.distribute_datasets_from_function(dataset_fn)
