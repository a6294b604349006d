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
"""

from __future__ import annotations

import argparse
import hashlib
import json
import zipfile
from pathlib import Path

import numpy as np

from stages import records
from stages.files import atomic_output, run_stage, write_json
from stages.params import load_params

PARAMS = ("seed", "validation_size", "max_train_examples", "examples_per_shard")
ARRAYS = ("x_train", "y_train", "x_test", "y_test")


def sha256_of_array(array: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(array).tobytes()).hexdigest()


def sha256_of_file(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


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


def load_raw(path: Path, checksums_path: Path) -> dict[str, np.ndarray]:
    """Load and check the raw arrays against their shapes, ranges and checksums."""
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file; it is committed with the repository")
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {name: archive[name] for name in archive.files if name in ARRAYS}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as error:
        raise ValueError(f"{path}: not a readable .npz archive ({error})") from None
    missing = [name for name in ARRAYS if name not in arrays]
    if missing:
        raise ValueError(f"{path}: missing array {missing[0]!r}; expected {', '.join(ARRAYS)}")
    for split in ("train", "test"):
        check_split(path, arrays[f"x_{split}"], arrays[f"y_{split}"], split)
    if not checksums_path.is_file():
        raise FileNotFoundError(
            f"{checksums_path}: no such file; it lists the SHA-256 of each array in {path}"
        )
    expected = json.loads(checksums_path.read_text())
    for name in ARRAYS:
        if sha256_of_array(arrays[name]) != expected.get(name):
            raise ValueError(
                f"{path}: {name} does not match its SHA-256 in {checksums_path}; "
                "restore the file with `git checkout` or update the checksums for new data"
            )
    return arrays


def split_validation(
    images: np.ndarray,
    labels: np.ndarray,
    validation_size: int,
    seed: int,
    max_train_examples: int | None,
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Carve a seeded random validation split out of the training set."""
    if validation_size >= len(images):
        raise ValueError(
            f"params.yaml: validation_size: got {validation_size}, expected fewer than the "
            f"{len(images)} training images"
        )
    order = np.random.default_rng(seed).permutation(len(images))
    validation, train = order[:validation_size], order[validation_size:]
    if max_train_examples is not None:
        train = train[:max_train_examples]
    return {
        "train": (images[train], labels[train]),
        "validation": (images[validation], labels[validation]),
    }


def prepare(raw_path: Path, checksums_path: Path, out_dir: Path, params: dict) -> dict:
    """Write the three splits as TFRecord shards under `out_dir`; return the metadata."""
    arrays = load_raw(raw_path, checksums_path)
    splits = split_validation(
        arrays["x_train"],
        arrays["y_train"],
        params["validation_size"],
        params["seed"],
        params["max_train_examples"],
    )
    splits["test"] = (arrays["x_test"], arrays["y_test"])
    meta = {"source": {"file": raw_path.name, "sha256": sha256_of_file(raw_path)}, "splits": {}}
    with atomic_output(out_dir) as temporary:
        temporary.mkdir()
        for split in records.SPLITS:
            images, labels = splits[split]
            names = records.write_shards(
                images, labels, temporary, split, params["examples_per_shard"]
            )
            meta["splits"][split] = {
                "examples": len(images),
                "class_counts": np.bincount(labels, minlength=records.NUM_CLASSES).tolist(),
                "shards": {name: sha256_of_file(temporary / name) for name in names},
            }
            print(f"prepare: {split:<10} {len(images):>6} examples in {len(names)} shard(s)")
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
