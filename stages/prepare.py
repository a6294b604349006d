"""prepare: a data set folder -> sharded TFRecords for train, validation and test.

Reads  data/raw/<dataset>/ (images in train/<class>/ and test/<class>/, an .npz, or IDX
       files; its dataset.yaml if any: loopline/dataset.py), and the params in PARAMS
       from params.yaml.
Writes data/prepared/{train,validation,test}-NNNNN-of-NNNNN.tfrecord.gz and
       data/prepared/meta.json (the class names, the image shape, examples and class
       counts per split, shard hashes, and the SHA-256 of its own content).
Run    dvc repro prepare
       (python -m stages.prepare data/raw/mnist data/prepared)

The validation split is a seeded random sample of the training set; the test set is
written as the data set has it. Same input and params give byte-identical files, so DVC
sees no change and the stages downstream do not re-run.

Memory does not grow with the data set's images: arrays are copied out of an .npz (or IDX
files) to uncompressed .npy files inside the output-to-be, CHUNK_BYTES at a time, and
image files are decoded on every core into such a file (loopline/images.py: this process
and worker processes that import no TensorFlow); the shards of all three splits are then
written from a memory map, one shard of images per core at a time. Held whole, per image:
the split's order (8 bytes) and its label (8 bytes). The copies need the images'
uncompressed size on disk while prepare runs.
"""

from __future__ import annotations

import loopline

if __name__ == "__main__":  # the command line: before TensorFlow is imported below
    loopline.import_tensorflow_quietly()

import argparse
import hashlib
import shutil
from pathlib import Path

import numpy as np

from loopline import records
from loopline.dataset import validation_count
from loopline.files import atomic_output, run_stage, seal, write_json
from loopline.params import load_params
from loopline.survey import load

PARAMS = ("seed", "validation_size", "max_train_examples", "examples_per_shard")


def sha256_of_file(path: Path) -> str:
    with path.open("rb") as file:
        return hashlib.file_digest(file, "sha256").hexdigest()


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


def write_splits(splits: dict, directory: Path, examples_per_shard: int, classes: int) -> dict:
    """Write each split's (images, labels, indices) as shards under `directory`; return each
    split's entry of meta.json: its examples, class counts and shard hashes."""
    names = records.write_splits(splits, directory, examples_per_shard)
    entries = {}
    for split, (_, labels, indices) in splits.items():
        print(f"prepare: {split:<10} {len(indices):>6} examples in {len(names[split])} shard(s)")
        entries[split] = {
            "examples": len(indices),
            "class_counts": np.bincount(labels[indices], minlength=classes).tolist(),
            "shards": {name: sha256_of_file(directory / name) for name in names[split]},
        }
    return entries


def prepare(raw_dir: Path, out_dir: Path, params: dict) -> dict:
    """Write the three splits of the data set in `raw_dir` as TFRecord shards under
    `out_dir`; return the metadata."""
    with atomic_output(out_dir) as temporary:
        temporary.mkdir()
        # The uncompressed copies sit inside the output-to-be: removed below, or with it
        # if prepare fails, or by the next run if this one is killed.
        scratch = temporary / "raw-arrays.tmp"
        data = load(raw_dir, scratch)
        survey = data.survey
        train_images, train_labels = data.images["train"], data.labels["train"]
        size = validation_count(
            params["validation_size"], survey.validation_size, len(train_images)
        )
        order = split_validation(
            len(train_images), size, params["seed"], params["max_train_examples"]
        )
        splits = {
            "train": (train_images, train_labels, order["train"]),
            "validation": (train_images, train_labels, order["validation"]),
            "test": (data.images["test"], data.labels["test"], np.arange(len(data.labels["test"]))),
        }
        meta = {
            "dataset": survey.dataset,
            "classes": survey.classes,
            "shape": survey.shape,
            "framing": survey.framing,
            "splits": write_splits(
                splits, temporary, params["examples_per_shard"], len(survey.classes)
            ),
        }
        del data, train_images, splits  # unmap the copies before removing them
        shutil.rmtree(scratch)
        write_json(temporary / "meta.json", seal(meta))
    return meta


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("raw", type=Path, help="the data set's folder (data/raw/<dataset>)")
    parser.add_argument("out", type=Path, help="directory for the TFRecords and meta.json")
    parser.add_argument("--params", default="params.yaml", help="(default: %(default)s)")
    arguments = parser.parse_args()
    params = load_params(PARAMS, arguments.params)
    prepare(arguments.raw, arguments.out, params)


if __name__ == "__main__":
    run_stage(main)
