"""The prepared data's TFRecord format: the writer and the parser side by side.

One `tf.train.Example` per image: `image` holds its raw uint8 pixels (row-major; for colour
images, R, G, B per pixel) and `label` its class index. Shards are GZIP-compressed (an MNIST
digit: 175 bytes instead of 838) and named `{split}-{index:05d}-of-{count:05d}.tfrecord.gz`.
meta.json beside them says what the pixels are (the image shape, the class names) and
lists each split's shards with their SHA-256; it holds the SHA-256 of its own content too
(files.seal). Readers check both before they use anything (read_meta, verify_shards).
"""

from __future__ import annotations

import functools
import math
import os
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tensorflow as tf

from loopline.dataset import FRAMINGS
from loopline.files import check_file, file_sha256, read_sealed_json

SPLITS = ("train", "validation", "test")
COMPRESSION = "GZIP"
FEATURES = {
    "image": tf.io.FixedLenFeature([], tf.string),
    "label": tf.io.FixedLenFeature([], tf.int64),
}
# Parse this many records per call: whole batches decode ~20x faster than single examples.
PARSE_BATCH = 1024


def shard_name(split: str, index: int, count: int) -> str:
    return f"{split}-{index:05d}-of-{count:05d}.tfrecord.gz"


def serialize_example(image: np.ndarray, label: int) -> bytes:
    """The tf.train.Example of `image`'s raw bytes and its `label`, serialized."""
    pixels = image.tobytes()
    before, after = _framing(len(pixels), int(label))
    return before + pixels + after


@functools.lru_cache(maxsize=1024)
def _framing(size: int, label: int) -> tuple[bytes, bytes]:
    """What precedes and what follows an image's `size` raw bytes in its serialized Example:
    the same for every image of that size and label, so protobuf makes them once, around
    `size` zeros. (Building each Example costs about 10 us, a fifth of MNIST's prepare.)
    Before the pixels come tags, the name "image" and lengths of at least 1, none of them a
    zero byte: the first zero is the pixels' first byte."""
    feature = {
        "image": tf.train.Feature(bytes_list=tf.train.BytesList(value=[bytes(size)])),
        "label": tf.train.Feature(int64_list=tf.train.Int64List(value=[label])),
    }
    example = tf.train.Example(features=tf.train.Features(feature=feature))
    # `feature` is a protobuf map, serialized in hash order unless asked to be deterministic.
    whole = example.SerializeToString(deterministic=True)
    start = whole.index(0)
    return whole[:start], whole[start + size :]


def write_shards(
    images: np.ndarray,
    labels: np.ndarray,
    directory: Path,
    split: str,
    examples_per_shard: int,
    indices: np.ndarray | None = None,
) -> list[str]:
    """Write `images` [n, height, width(, 3)] uint8 and `labels` [n] as shards; return their
    names. `indices` picks the examples and their order (default: all, as they are)."""
    indices = np.arange(len(images)) if indices is None else indices
    return write_splits({split: (images, labels, indices)}, directory, examples_per_shard)[split]


def write_splits(
    splits: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]],
    directory: Path,
    examples_per_shard: int,
) -> dict[str, list[str]]:
    """Write each split's (images, labels, indices) as shards, the examples `indices` picks
    in that order; return each split's shard names.

    The shards of all splits are written one per core at a time, the largest first, each
    reading only its own images, so the images may be memory maps of any size.
    """
    options = tf.io.TFRecordOptions(compression_type=COMPRESSION)
    names: dict[str, list[str]] = {}
    shards = []  # (split, file name, the examples' indices)
    for split, (_, _, indices) in splits.items():
        count = max(1, math.ceil(len(indices) / examples_per_shard))
        names[split] = [shard_name(split, index, count) for index in range(count)]
        for index, name in enumerate(names[split]):
            selected = indices[index * examples_per_shard : (index + 1) * examples_per_shard]
            shards.append((split, name, selected))

    def write_shard(shard: tuple[str, str, np.ndarray]) -> None:
        split, name, selected = shard
        images, labels, _ = splits[split]
        with tf.io.TFRecordWriter(str(directory / name), options) as writer:
            for image, label in zip(images[selected], labels[selected], strict=True):
                writer.write(serialize_example(image, label))

    # Most of the time goes to GZIP inside TFRecordWriter.write, which releases the GIL:
    # on 2 cores, 2 threads write MNIST's shards in 0.65 s instead of 1.2 s. A split of one
    # shard compresses on one core, so the longest go first, beside the shorter ones.
    workers = min(len(shards), len(os.sched_getaffinity(0)))
    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(write_shard, sorted(shards, key=lambda shard: -len(shard[2]))))
    return names


def parse_batch(serialized: tf.Tensor, shape: tuple[int, ...]) -> tuple[tf.Tensor, tf.Tensor]:
    """Serialized examples [n] -> (uint8 images [n, *shape], int32 labels [n])."""
    example = tf.io.parse_example(serialized, FEATURES)
    images = tf.io.decode_raw(example["image"], tf.uint8)
    images = tf.reshape(images, [-1, *shape])
    return images, tf.cast(example["label"], tf.int32)


def read_dataset(paths: list[Path], shape: tuple[int, ...], batch_size: int) -> tf.data.Dataset:
    """The records of `paths`, in order, as (uint8 images [n, *shape], int32 labels [n])
    batches of `batch_size` (the last may be short), parsed a whole batch at a time."""
    return (
        tf.data.TFRecordDataset([str(path) for path in paths], compression_type=COMPRESSION)
        .batch(batch_size)
        .map(lambda batch: parse_batch(batch, shape))
    )


def read_file(
    path: Path, shape: tuple[int, ...], batch_size: int = PARSE_BATCH
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """One shard's examples, `batch_size` at a time, as NumPy arrays; a damaged file
    becomes a ValueError naming it."""
    try:
        for images, labels in read_dataset([path], shape, batch_size):
            yield images.numpy(), labels.numpy()
    except (tf.errors.DataLossError, tf.errors.InvalidArgumentError) as error:
        reason = error.message.splitlines()[0][:200]
        raise ValueError(
            f"{path}: not a readable shard of {shape} images ({reason}); "
            "re-create it with `dvc repro -f prepare`"
        ) from None


def read_arrays(paths: list[Path], shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """Read whole shards of images of `shape` into NumPy arrays; a damaged file becomes a
    ValueError naming it."""
    batches = [batch for path in paths for batch in read_file(path, shape)]
    if not batches:
        return np.zeros((0, *shape), np.uint8), np.zeros((0,), np.int32)
    return tuple(np.concatenate(arrays) for arrays in zip(*batches, strict=True))


def rebatch(
    chunks: Iterable[tuple[np.ndarray, np.ndarray]], batch_size: int
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(images, labels) chunks of any sizes -> the same examples in batches of exactly
    `batch_size`, in order; the last may be short. Holds at most a batch and a chunk."""
    images, labels, held = [], [], 0
    for chunk_images, chunk_labels in chunks:
        images.append(chunk_images)
        labels.append(chunk_labels)
        held += len(chunk_labels)
        if held < batch_size:
            continue
        all_images, all_labels = np.concatenate(images), np.concatenate(labels)
        whole = held - held % batch_size
        for start in range(0, whole, batch_size):
            yield all_images[start : start + batch_size], all_labels[start : start + batch_size]
        images, labels, held = [all_images[whole:]], [all_labels[whole:]], held - whole
    if held:
        yield np.concatenate(images), np.concatenate(labels)


def read_meta(directory: str | Path) -> dict:
    """The prepared data's meta.json, as prepare wrote it: its seal checked (a value changed
    since is refused), its fields not yet."""
    path = Path(directory) / "meta.json"
    if not (path.exists() or path.is_symlink()):
        raise FileNotFoundError(f"{path}: no such file; run `dvc repro prepare` to create it")
    return read_sealed_json(path, f"restore it with `dvc checkout {path.parent}` or {_REMAKE}")


# The fix for prepared data that is not what prepare wrote.
_REMAKE = "re-create it with `dvc repro -f prepare`"
_HEX = frozenset("0123456789abcdef")


@dataclass(frozen=True)
class DataMeta:
    """What meta.json says of the whole data set: its name, class names and image shape."""

    dataset: str
    classes: tuple[str, ...]
    shape: tuple[int, ...]  # (height, width) for grey images, (height, width, 3) for colour
    framing: str

    @property
    def channels(self) -> int:
        return 3 if len(self.shape) == 3 else 1


def data_meta(directory: str | Path) -> DataMeta:
    """meta.json's description of the data set, checked."""
    meta = read_meta(directory)
    path = Path(directory) / "meta.json"
    classes, shape, framing = meta.get("classes"), meta.get("shape"), meta.get("framing")
    if not (
        isinstance(classes, list)
        and len(classes) >= 2
        and all(isinstance(name, str) and name for name in classes)
        and len(set(classes)) == len(classes)
    ):
        raise ValueError(f"{path}: classes is {classes!r:.60}, expected 2 or more names; {_REMAKE}")
    if not (
        isinstance(shape, list)
        and len(shape) in (2, 3)
        and all(_is_count(side) and side > 0 for side in shape)
        and shape[2:] in ([], [3])
    ):
        raise ValueError(
            f"{path}: shape is {shape!r:.40}, expected [height, width] or [height, width, 3]; "
            f"{_REMAKE}"
        )
    if framing not in FRAMINGS:
        raise ValueError(
            f"{path}: framing is {framing!r:.40}, expected one of {FRAMINGS}; {_REMAKE}"
        )
    return DataMeta(str(meta.get("dataset", "")), tuple(classes), tuple(shape), framing)


@dataclass(frozen=True)
class SplitMeta:
    """One split as meta.json describes it: its shard files in order, with their hashes."""

    examples: int
    class_counts: list[int]
    shards: dict[Path, str]


def _is_count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def split_meta(directory: str | Path, split: str) -> SplitMeta:
    """A split's entry in meta.json, checked: types, counts, shard names and their hashes.

    Shard names must be exactly the ones prepare writes ({split}-00000-of-0000N, ...): no
    other name, and so no path that leaves the directory, can be read.
    """
    directory = Path(directory)
    meta_path = directory / "meta.json"

    def refuse(what: str) -> ValueError:
        return ValueError(f"{meta_path}: {what}; {_REMAKE}")

    classes = len(data_meta(directory).classes)
    splits = read_meta(directory).get("splits")
    if not isinstance(splits, dict) or not isinstance(splits.get(split), dict):
        raise refuse(f"no {split} split")
    entry = splits[split]
    examples, class_counts, shards = (entry.get(k) for k in ("examples", "class_counts", "shards"))
    if not _is_count(examples):
        raise refuse(f"{split}.examples is {examples!r:.40}, expected an integer >= 0")
    if not (
        isinstance(class_counts, list)
        and len(class_counts) == classes
        and all(map(_is_count, class_counts))
        and sum(class_counts) == examples
    ):
        raise refuse(
            f"{split}.class_counts is {class_counts!r:.60}, expected {classes} "
            f"integers >= 0 that add up to {split}.examples ({examples})"
        )
    if not isinstance(shards, dict) or not shards:
        raise refuse(f"{split}.shards is {shards!r:.40}, expected a mapping of name: SHA-256")
    expected_names = [shard_name(split, index, len(shards)) for index in range(len(shards))]
    if sorted(shards) != expected_names:
        unexpected = sorted(set(shards) - set(expected_names), key=str)[:1] or ["(a gap)"]
        raise refuse(
            f"{split}.shards names {unexpected[0]!r:.60}, expected exactly "
            f"{expected_names[0]} to {expected_names[-1]}"
        )
    for name, digest in shards.items():
        if not (isinstance(digest, str) and len(digest) == 64 and set(digest) <= _HEX):
            raise refuse(f"{split}.shards[{name!r}] is {digest!r:.40}, expected a SHA-256 (hex)")
    return SplitMeta(
        examples, class_counts, {directory / name: shards[name] for name in expected_names}
    )


def _inside(path: Path, directory: Path) -> bool:
    """Whether `path`, symlinks resolved, is in `directory` or is a DVC cache object.

    With `cache.type: symlink` DVC links each file of data/prepared to its cache,
    `<cache>/files/md5/<2 hex>/<30 hex>`: those links are DVC's own, and the hash check
    below still covers what they point to.
    """
    target = path.resolve()
    if target.parent == directory.resolve():
        return True
    parent = target.parent
    return (
        parent.parent.name == "md5"
        and len(parent.name) == 2
        and len(target.name) == 30
        and set(parent.name + target.name) <= _HEX
    )


def verify_shards(shards: dict[Path, str]) -> None:
    """Raise unless every shard is a file in its folder whose SHA-256 is the one recorded.

    Costs one extra read of the (compressed) shards: ~12 MB for all of MNIST, hashed at
    about 1-2 GB/s; the page cache then serves the read that parses them.
    """
    for path, expected in shards.items():
        restore = f"restore it with `dvc checkout {path.parent}` or {_REMAKE}"
        if not (path.exists() or path.is_symlink()):
            raise FileNotFoundError(f"{path}: missing shard listed in meta.json; {restore}")
        check_file(path, restore)  # a folder, a link that leads nowhere, a FIFO, ...
        if not _inside(path, path.parent):
            raise ValueError(
                f"{path}: a link to {path.resolve()}, outside {path.parent}; {_REMAKE}"
            )
        if file_sha256(path, restore) != expected:
            raise ValueError(
                f"{path}: its SHA-256 is not the one in meta.json (the shard changed after "
                f"prepare wrote it); restore it with `dvc checkout {path.parent}` or {_REMAKE}"
            )


def split_shards(directory: str | Path, split: str) -> tuple[int, list[Path]]:
    """A split's example count and its shard files in order, as meta.json lists them."""
    meta = split_meta(directory, split)
    for path in meta.shards:
        if not path.is_file():
            raise FileNotFoundError(
                f"{path}: missing shard listed in meta.json; restore it with "
                f"`dvc checkout {path.parent}` or {_REMAKE}"
            )
    return meta.examples, list(meta.shards)


def split_files(directory: str | Path, split: str, part: int = 0, parts: int = 1) -> list[Path]:
    """A split's shard files, or with `parts` > 1 worker `part`'s share of them (files
    part::parts), in order, each first hashed against meta.json: data changed after
    prepare (even valid records with wrong labels) is refused before anything reads it."""
    directory = Path(directory)
    meta = split_meta(directory, split)
    paths = list(meta.shards)
    if parts > len(paths):
        raise ValueError(
            f"{directory}: {len(paths)} {split} shard(s) for {parts} workers, expected at least "
            "one each; lower examples_per_shard in params.yaml and re-run `dvc repro prepare`"
        )
    share = paths[part::parts]
    verify_shards({path: meta.shards[path] for path in share})
    return share


def read_batches(
    directory: str | Path, split: str, batch_size: int, part: int = 0, parts: int = 1
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """A split read in order, checked against meta.json, `batch_size` examples at a time
    (the last batch may be short): uint8 images [n, *shape], int32 labels [n].

    Holds one batch and one parse batch, never the split. Every shard is hashed before the
    first batch; the labels are checked batch by batch, and once the last batch is read,
    a whole split's count and class counts against meta.json (a share's size is not in
    meta.json: its shards are covered by their hashes).
    """
    directory = Path(directory)
    data = data_meta(directory)
    meta = split_meta(directory, split)
    paths = split_files(directory, split, part, parts)
    classes = len(data.classes)
    count, class_counts = 0, np.zeros(classes, np.int64)
    chunks = (chunk for path in paths for chunk in read_file(path, data.shape))
    for images, labels in rebatch(chunks, batch_size):
        if len(labels) and (labels.min() < 0 or labels.max() >= classes):
            raise ValueError(
                f"{directory}: {split} labels range from {labels.min()} to {labels.max()}, "
                f"expected 0..{classes - 1}; {_REMAKE}"
            )
        count += len(labels)
        class_counts += np.bincount(labels, minlength=classes)
        yield images, labels
    if parts == 1 and count != meta.examples:
        raise ValueError(
            f"{directory}: {count} {split} examples, but meta.json says {meta.examples}; {_REMAKE}"
        )
    if parts == 1 and class_counts.tolist() != meta.class_counts:
        raise ValueError(
            f"{directory}: the {split} labels' class counts differ from meta.json's; {_REMAKE}"
        )


def load_split(
    directory: str | Path, split: str, part: int = 0, parts: int = 1
) -> tuple[np.ndarray, np.ndarray]:
    """A split whole in memory, read and checked as read_batches reads it: uint8 images
    [n, *shape], labels [n]. With `parts` > 1, only worker `part`'s shard files."""
    batches = list(read_batches(directory, split, PARSE_BATCH, part, parts))
    if not batches:
        shape = data_meta(directory).shape
        return np.zeros((0, *shape), np.uint8), np.zeros((0,), np.int32)
    return tuple(np.concatenate(arrays) for arrays in zip(*batches, strict=True))
