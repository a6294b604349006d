"""The tf.data pipelines that feed the training loop and its validation.

Training reads its split one of two ways (train's `max_in_memory_mb` param picks one):
held whole in memory, shuffled whole every epoch (make_train_dataset), or streamed from
the shard files through a shuffle buffer (stream_train_dataset), which holds a bounded
number of images however large the split. Validation always streams: it reads in order,
so streaming changes nothing but the memory it takes.

Every batch has the same shape, so nothing retraces or recompiles: training drops the last
partial batch, evaluation pads its last batch and gives the padding zero weight. Each
worker of a distributed run reads only its own share of the training shards.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
import tensorflow as tf

from loopline import records

# Streaming. prepare wrote the training split in a seeded random order, so each shard is a
# random sample of it already: an epoch reads the shards in a seeded order, this many at
# once, their records interleaved one by one, then through a seeded shuffle buffer. Each
# epoch's order depends on the seed and the epoch alone, so a resumed run sees the batches
# an uninterrupted one would.
INTERLEAVED_SHARDS = 4
# The shuffle buffer: this many images, or fewer when they would take more than SHUFFLE_BYTES
# (224x224 colour images: 445 of them).
SHUFFLE_IMAGES = 10_000
SHUFFLE_BYTES = 64 * 2**20
# Records are parsed a batch at a time (about 20x faster than one by one), in batches of
# at most PARSE_BYTES of pixels.
PARSE_BYTES = 4 * 2**20


def fits_in_memory(examples: int, shape: tuple[int, ...], max_in_memory_mb: int) -> bool:
    """Whether `examples` images of `shape` (uint8) take at most `max_in_memory_mb` MB."""
    return examples * math.prod(shape) <= max_in_memory_mb * 10**6


def shuffle_buffer_size(shape: tuple[int, ...]) -> int:
    """The streamed training split's shuffle buffer, in images of `shape`."""
    return max(1, min(SHUFFLE_IMAGES, SHUFFLE_BYTES // math.prod(shape)))


def pipeline_options(shard_policy: tf.data.experimental.AutoShardPolicy | None = None):
    """tf.data options for the pipelines here: no autotuning model, deterministic order.

    The pipelines have nothing for the model to tune (their parallelism is set, and
    prefetch sizes its buffer by itself), and deleting an iterator waits for the model's
    background thread: with TF 2.21, training the tutorial model, seconds after most
    epochs, and none with the model off, at the same speed.
    """
    options = tf.data.Options()
    options.autotune.enabled = False
    options.deterministic = True
    if shard_policy is not None:
        options.experimental_distribute.auto_shard_policy = shard_policy
    return options


def make_train_dataset(
    images: np.ndarray, labels: np.ndarray, batch_size: int, seed: int
) -> tf.data.Dataset:
    """Shuffled full batches for one epoch of a split in memory; `seed` fixes the order."""
    return (
        tf.data.Dataset.from_tensor_slices((images, labels))
        .shuffle(len(images), seed=seed)
        .batch(batch_size, drop_remainder=True)
        .prefetch(tf.data.AUTOTUNE)
        .with_options(pipeline_options())
    )


def stream_train_dataset(
    paths: list[Path], shape: tuple[int, ...], batch_size: int, seed: int
) -> tf.data.Dataset:
    """Shuffled full batches for one epoch, streamed from the shard files `paths` (see
    INTERLEAVED_SHARDS); `seed` fixes the order of the shards, and of the examples."""
    files = [str(paths[index]) for index in np.random.default_rng(seed).permutation(len(paths))]
    interleaved = min(INTERLEAVED_SHARDS, len(files))
    parse_size = max(1, min(records.PARSE_BATCH, PARSE_BYTES // math.prod(shape)))
    return (
        tf.data.Dataset.from_tensor_slices(files)
        .interleave(
            lambda path: tf.data.TFRecordDataset(path, compression_type=records.COMPRESSION),
            cycle_length=interleaved,
            num_parallel_calls=interleaved,
            deterministic=True,
        )
        .batch(parse_size)
        .map(lambda batch: records.parse_batch(batch, shape), num_parallel_calls=2)
        .unbatch()
        .shuffle(shuffle_buffer_size(shape), seed=seed)
        .batch(batch_size, drop_remainder=True)
        .prefetch(tf.data.AUTOTUNE)
        .with_options(pipeline_options())
    )


def make_eval_dataset(
    paths: list[Path], shape: tuple[int, ...], examples: int, batch_size: int
) -> tf.data.Dataset:
    """(images, labels, weights) in equal batches, streamed in order from the `examples`
    examples of the shard files `paths`; padding examples weigh 0, real ones 1."""
    batch_size = max(1, min(batch_size, examples))

    def pad(images: tf.Tensor, labels: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
        real = tf.shape(labels)[0]
        padding = [[0, batch_size - real]]
        images = tf.pad(images, padding + [[0, 0]] * len(shape))
        weights = tf.pad(tf.ones([real], tf.float32), padding)
        return (
            tf.ensure_shape(images, [batch_size, *shape]),
            tf.ensure_shape(tf.pad(labels, padding), [batch_size]),
            tf.ensure_shape(weights, [batch_size]),
        )

    # Several workers split the batches between them (the padding weights travel with
    # them) and the metrics add up over the workers: DATA, as a worker may have no file of
    # its own (AUTO would try FILE first, and log a warning).
    return (
        records.read_dataset(paths, shape, batch_size)
        .map(pad)
        .prefetch(tf.data.AUTOTUNE)
        .with_options(pipeline_options(tf.data.experimental.AutoShardPolicy.DATA))
    )


# One epoch of one worker's training batches: make_share(worker, workers, batch_size, seed).
ShareDataset = Callable[[int, int, int, int], tf.data.Dataset]


def distribute_train_dataset(
    strategy: tf.distribute.Strategy,
    make_share: ShareDataset,
    global_batch_size: int,
    seed: int,
) -> tf.distribute.DistributedDataset:
    """One epoch of training batches for every replica; a worker reads only its shards.

    `make_share(index, count, batch_size, seed)` returns the batches of the training shard
    files index::count. Sharding by file, by hand: each worker (input pipeline) reads only
    its own files, where auto-sharding a dataset in memory would make every worker load
    all of them. With one worker (`none`, `mirrored`) the batches are the same for every
    strategy; replicas on one worker take turns at them.
    """

    def dataset_fn(context: tf.distribute.InputContext) -> tf.data.Dataset:
        batch_size = context.get_per_replica_batch_size(global_batch_size)
        share = make_share(context.input_pipeline_id, context.num_input_pipelines, batch_size, seed)
        # Every worker must run the same number of steps (each one is collective), but
        # their shares differ by up to a shard: one that runs out starts its share again.
        return share.repeat()

    return strategy.distribute_datasets_from_function(dataset_fn)


def load_training_shards(data_dir: Path, part: int, parts: int) -> tuple[np.ndarray, np.ndarray]:
    """Worker `part` of `parts`: its training shard files (all of them for a single worker)."""
    images, labels = records.load_split(data_dir, "train", part, parts)
    if parts > 1:
        print(f"train: worker {part} of {parts}: {len(images)} examples from its training shards")
    return images, labels


def training_files(data_dir: Path, part: int, parts: int) -> list[Path]:
    """Worker `part` of `parts`: its training shard files, checked, to stream."""
    paths = records.split_files(data_dir, "train", part, parts)
    if parts > 1:
        names = ", ".join(path.name.split("-")[1] for path in paths)
        print(f"train: worker {part} of {parts}: streams its training shards {names}")
    return paths


def training_shares(data_dir: Path, max_in_memory_mb: int) -> ShareDataset:
    """How each epoch reads the training split: held in memory (decoded once, shuffled
    whole) if its pixels take at most `max_in_memory_mb` MB, else streamed from its shards."""
    examples, _ = records.split_shards(data_dir, "train")
    shape = records.data_meta(data_dir).shape
    megabytes = f"{examples:,} training images ({examples * math.prod(shape) / 1e6:,.1f} MB)"
    if fits_in_memory(examples, shape, max_in_memory_mb):
        print(f"train: {megabytes} held in memory")
        load = functools.cache(functools.partial(load_training_shards, data_dir))
        return lambda part, parts, batch_size, seed: make_train_dataset(
            *load(part, parts), batch_size, seed
        )
    print(
        f"train: {megabytes} streamed from their shards (over max_in_memory_mb: "
        f"{max_in_memory_mb}), shuffled {shuffle_buffer_size(shape):,} at a time"
    )
    files = functools.cache(functools.partial(training_files, data_dir))
    return lambda part, parts, batch_size, seed: stream_train_dataset(
        files(part, parts), shape, batch_size, seed
    )


def validation_dataset(data_dir: Path, eval_batch_size: int) -> tf.data.Dataset:
    """The validation split, streamed in order every epoch (its shards checked first)."""
    examples, _ = records.split_shards(data_dir, "validation")
    paths = records.split_files(data_dir, "validation")
    return make_eval_dataset(paths, records.data_meta(data_dir).shape, examples, eval_batch_size)
