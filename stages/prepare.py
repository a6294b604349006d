"""prepare: the raw MNIST arrays -> sharded TFRecords for train, validation and test.

Reads  data/raw/mnist.npz (x_train, y_train, x_test, y_test), its checksums
       data/raw/checksums.json, and the params in PARAMS from params.yaml.
Writes data/prepared/{train,validation,test}-NNNNN-of-NNNNN.tfrecord.gz and
       data/prepared/meta.json (examples and class counts per split, shard hashes).
Run    dvc repro prepare
       (python -m stages.prepare data/raw/mnist.npz data/raw/checksums.json data/prepared)

The validation split is a seeded random sample of the training set; the test set is
written untouched. Same input and params give byte-identical files, so DVC sees no change
and the stages downstream do not re-run.

Memory does not grow with the data set's images: each array is copied out of the .npz to
an uncompressed .npy inside the output-to-be, CHUNK_BYTES at a time, and read through a
memory map one shard of images per core at a time (examples_per_shard x 784 bytes each).
Held whole, per image: the split's order (8 bytes) and the labels it selects (1 byte as
uint8), 7 MB for 800,000 images. The copies need the arrays' uncompressed size on disk
while prepare runs.
"""

from __future__ import annotations

import loopline

if __name__ == "__main__":  # the command line: before TensorFlow is imported below
    loopline.import_tensorflow_quietly()

import argparse
import errno
import hashlib
import json
import shutil
import zipfile
import zlib
from pathlib import Path

import numpy as np

from loopline import records
from loopline.files import WriteError, atomic_output, run_stage, write_json
from loopline.params import load_params

PARAMS = ("seed", "validation_size", "max_train_examples", "examples_per_shard")
ARRAYS = ("x_train", "y_train", "x_test", "y_test")
# Arrays are copied and hashed this many bytes at a time.
CHUNK_BYTES = 2**20


def sha256_of_array(array: np.ndarray) -> str:
    """SHA-256 of the array's bytes in C order, hashed a block of rows at a time."""
    digest = hashlib.sha256()
    rows = max(1, CHUNK_BYTES // max(1, array[:1].nbytes))
    for start in range(0, len(array), rows):
        digest.update(np.ascontiguousarray(array[start : start + rows]).tobytes())
    return digest.hexdigest()


def sha256_of_file(path: Path) -> str:
    with path.open("rb") as file:
        return hashlib.file_digest(file, "sha256").hexdigest()


def check_split(path: Path, images: np.ndarray, labels: np.ndarray, split: str) -> None:
    """Raise ValueError naming `path` and the array if a split is not MNIST-shaped."""
    size = records.IMAGE_SIZE
    if images.ndim != 3 or images.shape[1:] != (size, size) or images.dtype != np.uint8:
        raise ValueError(
            f"{path}: x_{split} has shape {images.shape} and dtype {images.dtype}, "
            f"expected (n, {size}, {size}) uint8"
        )
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(
            f"{path}: y_{split} has shape {labels.shape} and dtype {labels.dtype}, "
            "expected (n,) integers"
        )
    if len(images) != len(labels):
        raise ValueError(
            f"{path}: x_{split} has {len(images)} images but y_{split} {len(labels)} labels"
        )
    if len(images) == 0:
        raise ValueError(f"{path}: x_{split} is empty")
    if labels.min() < 0 or labels.max() >= records.NUM_CLASSES:
        raise ValueError(
            f"{path}: y_{split} has labels from {labels.min()} to {labels.max()}, "
            f"expected 0..{records.NUM_CLASSES - 1}"
        )


def _copy(source, copy: Path) -> None:
    """Stream `source` (an archive member) to `copy`; a failed write is an OSError naming
    `copy`, told apart from a damaged archive (which the caller reports as such)."""
    try:
        target = copy.open("wb")
    except OSError as error:
        raise WriteError(error.errno, error.strerror, str(copy)) from None
    with target:
        while chunk := source.read(CHUNK_BYTES):
            try:
                target.write(chunk)
            except OSError as error:
                raise WriteError(error.errno, error.strerror, str(copy)) from None


def extract_arrays(path: Path, directory: Path) -> dict[str, np.ndarray]:
    """The arrays of the .npz `path`, copied to .npy files in `directory` and memory-mapped.

    np.load of an .npz decompresses each array whole into memory; this streams it to disk
    in chunks instead, and the maps read only the rows that are used.
    """
    directory.mkdir()
    arrays = {}
    try:
        with zipfile.ZipFile(path) as archive:
            members = {info.filename: info for info in archive.infolist()}
            wanted = [members[f"{name}.npy"] for name in ARRAYS if f"{name}.npy" in members]
            check_free_space(path, directory, sum(info.file_size for info in wanted))
            for info in wanted:  # a missing one is named by load_raw
                copy = directory / info.filename
                with archive.open(info) as source:
                    _copy(source, copy)
                arrays[copy.stem] = np.load(copy, mmap_mode="r", allow_pickle=False)
    except WriteError:
        raise
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as error:
        raise ValueError(f"{path}: not a readable .npz archive ({error})") from None
    return arrays


def check_free_space(path: Path, directory: Path, needed: int) -> None:
    """Refuse at once, rather than half-way, when the uncompressed arrays cannot fit."""
    free = shutil.disk_usage(directory).free
    if needed > free:
        raise WriteError(
            errno.ENOSPC,
            f"No space left on device: the arrays of {path} need {needed / 2**20:,.0f} MB "
            f"uncompressed while prepare runs, {free / 2**20:,.0f} MB are free",
            str(directory),
        )


def read_checksums(path: Path) -> dict[str, str]:
    """checksums.json: a JSON object of array name -> SHA-256 (hex)."""
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file; it lists the SHA-256 of each raw array")
    try:
        checksums = json.loads(path.read_bytes())
    except (ValueError, RecursionError) as error:  # bad JSON, not UTF-8, nested too deep
        reason = str(error).splitlines()[0][:120] if str(error) else type(error).__name__
        raise ValueError(
            f"{path}: not valid JSON ({reason}); restore it with `git checkout`"
        ) from None
    if not isinstance(checksums, dict) or not all(
        isinstance(checksums.get(name), str) for name in ARRAYS
    ):
        raise ValueError(
            f"{path}: expected a JSON object with a SHA-256 string for each of "
            f"{', '.join(ARRAYS)}; restore it with `git checkout`"
        )
    return checksums


def load_raw(path: Path, checksums_path: Path, scratch: Path) -> dict[str, np.ndarray]:
    """The raw arrays (memory maps into `scratch`), checked: shapes, ranges and checksums."""
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file; it is committed with the repository")
    arrays = extract_arrays(path, scratch)
    missing = [name for name in ARRAYS if name not in arrays]
    if missing:
        raise ValueError(f"{path}: missing array {missing[0]!r}; expected {', '.join(ARRAYS)}")
    for split in ("train", "test"):
        check_split(path, arrays[f"x_{split}"], arrays[f"y_{split}"], split)
    expected = read_checksums(checksums_path)
    for name in ARRAYS:
        if sha256_of_array(arrays[name]) != expected[name]:
            raise ValueError(
                f"{path}: {name} does not match its SHA-256 in {checksums_path}; "
                "restore the file with `git checkout` or update the checksums for new data"
            )
    return arrays


def split_validation(
    num_images: int, validation_size: int, seed: int, max_train_examples: int | None
) -> dict[str, np.ndarray]:
    """The training set's indices, split: a seeded random sample for validation, the rest."""
    if validation_size >= num_images:
        raise ValueError(
            f"params.yaml: validation_size: got {validation_size}, expected fewer than the "
            f"{num_images} training images"
        )
    order = np.random.default_rng(seed).permutation(num_images)
    validation, train = order[:validation_size], order[validation_size:]
    if max_train_examples is not None:
        train = train[:max_train_examples]
    return {"train": train, "validation": validation}


def write_split(
    images: np.ndarray,
    labels: np.ndarray,
    indices: np.ndarray,
    directory: Path,
    split: str,
    examples_per_shard: int,
) -> dict:
    """Write the examples `indices` of `images` and `labels` as shards; return their meta."""
    names = records.write_shards(images, labels, directory, split, examples_per_shard, indices)
    print(f"prepare: {split:<10} {len(indices):>6} examples in {len(names)} shard(s)")
    return {
        "examples": len(indices),
        "class_counts": np.bincount(labels[indices], minlength=records.NUM_CLASSES).tolist(),
        "shards": {name: sha256_of_file(directory / name) for name in names},
    }


def prepare(raw_path: Path, checksums_path: Path, out_dir: Path, params: dict) -> dict:
    """Write the three splits as TFRecord shards under `out_dir`; return the metadata."""
    with atomic_output(out_dir) as temporary:
        temporary.mkdir()
        # The uncompressed copies sit inside the output-to-be: removed below, or with it
        # if prepare fails, or by the next run if this one is killed.
        scratch = temporary / "raw-arrays.tmp"
        arrays = load_raw(raw_path, checksums_path, scratch)
        order = split_validation(
            len(arrays["x_train"]),
            params["validation_size"],
            params["seed"],
            params["max_train_examples"],
        )
        splits = {
            "train": (arrays["x_train"], arrays["y_train"], order["train"]),
            "validation": (arrays["x_train"], arrays["y_train"], order["validation"]),
            "test": (arrays["x_test"], arrays["y_test"], np.arange(len(arrays["x_test"]))),
        }
        meta = {
            "source": {"file": raw_path.name, "sha256": sha256_of_file(raw_path)},
            "splits": {
                split: write_split(*splits[split], temporary, split, params["examples_per_shard"])
                for split in records.SPLITS
            },
        }
        del arrays, splits  # unmap the copies before removing them
        shutil.rmtree(scratch)
        write_json(temporary / "meta.json", meta)
    return meta


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("raw", type=Path, help="the raw MNIST .npz")
    parser.add_argument("checksums", type=Path, help="JSON of each array's SHA-256")
    parser.add_argument("out", type=Path, help="directory for the TFRecords and meta.json")
    parser.add_argument("--params", default="params.yaml", help="(default: %(default)s)")
    arguments = parser.parse_args()
    params = load_params(PARAMS, arguments.params)
    prepare(arguments.raw, arguments.checksums, arguments.out, params)


if __name__ == "__main__":
    run_stage(main)
