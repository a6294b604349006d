"""A data set: the folder data/raw/NAME, its description file, its layout and its files.

A folder holds one of three layouts, recognised by what it contains:
- images: `train/<class>/<image>` and, optionally, `test/<class>/<image>` (TensorFlow
  Datasets' ImageFolder layout), any format Pillow reads, grey or colour; the class names
  are the subfolder names, sorted. Without `test/`, a share of each class is held out as
  the test split (test_size);
- npz: one `.npz` file holding `x_train`, `y_train`, `x_test`, `y_test` (MNIST's arrays);
- idx: the IDX files of MNIST, Fashion-MNIST, KMNIST or EMNIST (`*train-images-idx3-ubyte`,
  `*train-labels-idx1-ubyte`, `*t10k-...` or `*test-...`), optionally gzipped.

`dataset.yaml` beside the data says what cannot be seen in it (DESCRIPTION_FIELDS); a
folder of images that share one size and mode needs none. Hidden files and the ones that
file managers leave (.DS_Store, Thumbs.db, desktop.ini, __MACOSX) are skipped.
Pure Python: check_data, validate and prepare use it without TensorFlow.
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from loopline.files import check_file
from loopline.params import load_mapping

DESCRIPTION_FILE = "dataset.yaml"
SPLIT_FOLDERS = ("train", "test")
# Left by file managers and archivers, never data.
SKIPPED = frozenset({"Thumbs.db", "desktop.ini", "__MACOSX"})
FRAMINGS = ("resize", "digit")
# Without validation_size in params.yaml or dataset.yaml, this share of the training
# images validates; without a test/ folder or test_size, this share of each class tests.
DEFAULT_VALIDATION_FRACTION = 0.1
DEFAULT_TEST_FRACTION = 0.2
# Far above what one machine trains on; low enough to refuse a slip (an extra zero).
MAX_SIDE = 8192
IDX_NAMES = {
    ("train", "images"): re.compile(r"(.*[-_.])?train-images[-.]idx3-ubyte(\.gz)?"),
    ("train", "labels"): re.compile(r"(.*[-_.])?train-labels[-.]idx1-ubyte(\.gz)?"),
    ("test", "images"): re.compile(r"(.*[-_.])?(t10k|test)-images[-.]idx3-ubyte(\.gz)?"),
    ("test", "labels"): re.compile(r"(.*[-_.])?(t10k|test)-labels[-.]idx1-ubyte(\.gz)?"),
}
_HEX64 = re.compile(r"[0-9a-f]{64}")
# A class name printed in a table or a tab-separated line must not break it.
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


@dataclass(frozen=True)
class Description:
    """dataset.yaml, checked; every field optional."""

    text: str = ""
    classes: tuple[str, ...] | None = None
    labels: tuple[int, ...] | None = None  # the array label of each class, when mapped
    image_size: tuple[int, int] | None = None  # (height, width)
    channels: int | None = None
    framing: str = "resize"
    validation_size: int | float | None = None
    test_size: float | None = None
    transposed: bool = False  # arrays stored column by column (EMNIST's IDX files)
    checksums: dict[str, str] = field(default_factory=dict)


def _fraction_or_count(value: Any) -> bool:
    if isinstance(value, bool):
        return False
    if isinstance(value, float):
        return 0 < value < 1
    return isinstance(value, int) and value >= 1


def _class_names(value: Any) -> bool:
    names = list(value.values()) if isinstance(value, dict) else value
    if isinstance(value, dict) and not all(
        isinstance(label, int) and not isinstance(label, bool) and label >= 0 for label in value
    ):
        return False
    return (
        isinstance(names, list)
        and len(names) >= 2
        and all(
            isinstance(name, str) and name.strip() and not _CONTROL.search(name) for name in names
        )
        and len(set(names)) == len(names)
    )


def _size(value: Any) -> bool:
    sides = [value, value] if isinstance(value, int) else value
    return (
        isinstance(sides, list)
        and len(sides) == 2
        and all(isinstance(side, int) and not isinstance(side, bool) for side in sides)
        and all(1 <= side <= MAX_SIDE for side in sides)
    )


def _checksums(value: Any) -> bool:
    return isinstance(value, dict) and all(
        isinstance(name, str) and isinstance(digest, str) and _HEX64.fullmatch(digest)
        for name, digest in value.items()
    )


# Each field: its check and what the message says was expected.
DESCRIPTION_FIELDS = {
    "description": (lambda value: isinstance(value, str), "text"),
    "classes": (
        _class_names,
        "a list of at least 2 distinct names (label 0 first), or a mapping of label: name",
    ),
    "image_size": (_size, f"[height, width] or one side, in pixels from 1 to {MAX_SIDE}"),
    "channels": (lambda value: value in (1, 3) and not isinstance(value, bool), "1 or 3"),
    "framing": (lambda value: value in FRAMINGS, f"one of {', '.join(FRAMINGS)}"),
    "validation_size": (_fraction_or_count, "a count of images or a fraction between 0 and 1"),
    "test_size": (
        lambda value: isinstance(value, float) and 0 < value < 1,
        "a fraction between 0 and 1",
    ),
    "transposed": (lambda value: isinstance(value, bool), "true or false"),
    "checksums": (_checksums, "a mapping of file name: SHA-256 (64 hex digits)"),
}


def read_description(folder: Path) -> Description:
    """`folder`/dataset.yaml, checked; an empty Description when there is none."""
    path = folder / DESCRIPTION_FILE
    if not (path.exists() or path.is_symlink()):  # a link that leads nowhere is refused
        return Description()
    document = load_mapping(path, "restore it, or remove it (docs/own-data.md)")
    for key, value in document.items():
        if key not in DESCRIPTION_FIELDS:
            raise ValueError(
                f"{path}: unknown key {key!r:.40}; known keys are {', '.join(DESCRIPTION_FIELDS)}"
            )
        check, expected = DESCRIPTION_FIELDS[key]
        if not check(value):
            raise ValueError(f"{path}: {key}: got {value!r:.60}, expected {expected}")
    classes, labels = document.get("classes"), None
    if isinstance(classes, dict):
        labels, classes = tuple(sorted(classes)), [classes[label] for label in sorted(classes)]
    size = document.get("image_size")
    description = Description(
        text=document.get("description", ""),
        classes=tuple(classes) if classes else None,
        labels=labels,
        image_size=(size, size) if isinstance(size, int) else tuple(size) if size else None,
        channels=document.get("channels"),
        framing=document.get("framing", "resize"),
        validation_size=document.get("validation_size"),
        test_size=document.get("test_size"),
        transposed=document.get("transposed", False),
        checksums=document.get("checksums", {}),
    )
    if description.framing == "digit" and description.channels == 3:
        raise ValueError(
            f"{path}: framing: digit is for grey images of one digit, but channels is 3; "
            "remove one of them"
        )
    return description


def is_skipped(name: str) -> bool:
    """Whether a file or folder name is one that data sets never hold (hidden, OS litter)."""
    return name.startswith(".") or name in SKIPPED


def find_layout(folder: Path) -> str:
    """`folder`'s layout: images, npz or idx; one line naming the folder if none or several."""
    if not folder.is_dir():
        raise FileNotFoundError(
            f"{folder}: no such folder; put the data set there (see docs/own-data.md) or set "
            "dataset in params.yaml to a folder of data/raw"
        )
    names = [path.name for path in folder.iterdir() if not is_skipped(path.name)]
    found = {
        "images": (folder / "train").is_dir(),
        "npz": any(name.endswith(".npz") for name in names),
        "idx": any(pattern.fullmatch(name) for pattern in IDX_NAMES.values() for name in names),
    }
    layouts = [layout for layout, present in found.items() if present]
    if not layouts:
        raise ValueError(
            f"{folder}: no data set found: expected train/<class>/ folders of images, an .npz "
            "with x_train, y_train, x_test, y_test, or IDX files (see docs/own-data.md)"
        )
    if len(layouts) > 1:
        raise ValueError(
            f"{folder}: holds more than one data set ({' and '.join(layouts)}); keep one per folder"
        )
    return layouts[0]


def verify_checksums(folder: Path, checksums: dict[str, str]) -> None:
    """Raise unless each file named in dataset.yaml's checksums has that SHA-256."""
    for name, expected in sorted(checksums.items()):
        path = folder / name
        if not path.is_file() or not path.resolve().is_relative_to(folder.resolve()):
            raise FileNotFoundError(
                f"{folder / DESCRIPTION_FILE}: checksums: {name!r:.60} is not a file in "
                f"{folder}; remove it from checksums or restore the file"
            )
        with path.open("rb") as file:
            actual = hashlib.file_digest(file, "sha256").hexdigest()
        if actual != expected:
            raise ValueError(
                f"{path}: its SHA-256 is not the one in {DESCRIPTION_FILE} ({actual[:12]}... "
                f"instead of {expected[:12]}...); restore the file (`dvc checkout`, `git "
                "checkout`) or, for new data, update checksums"
            )


def validation_count(value: int | float | None, default: int | float | None, train: int) -> int:
    """How many of the `train` training images validate: params.yaml's validation_size
    (a count or a fraction), else dataset.yaml's, else DEFAULT_VALIDATION_FRACTION."""
    for size in (value, default, DEFAULT_VALIDATION_FRACTION):
        if size is not None:
            return max(1, round(size * train)) if isinstance(size, float) else size
    raise AssertionError("unreachable")


@dataclass
class ImageFolder:
    """The image files of a folder in the images layout, per split, with their labels."""

    classes: tuple[str, ...]
    files: dict[str, list[Path]]
    labels: dict[str, np.ndarray]


def _class_files(directory: Path, above: tuple[Path, ...] = ()) -> list[Path]:
    """Every file under `directory`, recursively, sorted, skipping hidden and OS files;
    `above` holds the folders it is in, resolved (a link back to one of them loops)."""
    found = []
    here = (*above, directory.resolve())
    # Each entry of os.scandir knows whether it is a file or a folder without a stat of its
    # own (except through links): listing a folder of small images costs less than decoding.
    with os.scandir(directory) as scan:
        entries = sorted(scan, key=lambda entry: entry.name)
    for entry in entries:
        if is_skipped(entry.name):
            continue
        path = directory / entry.name
        try:
            is_folder, is_file = entry.is_dir(), entry.is_file()
        except OSError:  # a link to itself: neither (as Path.is_dir says), check_file tells
            is_folder = is_file = False
        if is_folder:
            if path.resolve() in here:
                raise ValueError(f"{path}: a link to a folder it is in (a loop); remove it")
            found.extend(_class_files(path, here))
        elif is_file:
            found.append(path)
        else:  # a FIFO would block the decoder forever; a broken link has no image
            check_file(path, "remove it, or put the image there")
    return found


def _is_utf8(name: str) -> bool:
    """Whether a file name decoded from the file system is valid UTF-8 (Python keeps other
    bytes as lone surrogates, which no UTF-8 file can hold)."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _split_folder(folder: Path, split: str) -> dict[str, list[Path]]:
    """The files of each class folder of `folder`/`split`, by class name."""
    directory = folder / split
    classes = {}
    for path in sorted(directory.iterdir()):
        if is_skipped(path.name):
            continue
        if not path.is_dir():
            raise ValueError(
                f"{path}: a file directly in {split}/; put each image in its class folder, "
                f"{split}/<class>/{path.name}"
            )
        if _CONTROL.search(path.name):
            raise ValueError(f"{path}: a class folder name with a control character; rename it")
        if not _is_utf8(path.name):  # names travel to JSON, the model card and predict's output
            raise ValueError(f"{path}: a class folder name that is not UTF-8 text; rename it")
        classes[path.name] = _class_files(path)
        if not classes[path.name]:
            raise ValueError(
                f"{path}: an empty class folder (no images, hidden files aside); add images "
                "or remove it"
            )
    return classes


def _held_out(files: list[Path], folder: Path, fraction: float) -> set[Path]:
    """The test share of one class: the files whose path hashes lowest, so that the split
    depends on the file names alone (adding images moves none of the others' roles), and
    at least one file stays for training."""
    count = min(len(files) - 1, int(fraction * len(files) + 0.5))
    depth = len(folder.parts)  # the path's own parts follow the folder's
    ranked = sorted(
        files, key=lambda path: hashlib.sha256("/".join(path.parts[depth:]).encode()).digest()
    )
    return set(ranked[:count])


def list_images(folder: Path, description: Description) -> ImageFolder:
    """The image files of `folder` per split and class, checked for the layout's rules."""
    extra = [
        path.name
        for path in folder.iterdir()
        if path.is_dir() and not is_skipped(path.name) and path.name not in SPLIT_FOLDERS
    ]
    if extra:
        raise ValueError(
            f"{folder / sorted(extra)[0]}: an unexpected folder; images go in train/<class>/ "
            "and test/<class>/ (without test/, a share of train/ tests)"
        )
    train = _split_folder(folder, "train")
    if len(train) < 2:
        raise ValueError(
            f"{folder / 'train'}: {len(train)} class folder(s); a classifier needs at least 2 "
            "(train/<class>/ for each class)"
        )
    classes = tuple(sorted(train))
    if description.classes is not None and description.classes != classes:
        raise ValueError(
            f"{folder / DESCRIPTION_FILE}: classes: lists {list(description.classes)!r:.80}, "
            f"but the class folders of train/ are {list(classes)!r:.80}; remove classes (the "
            "folder names are the class names) or rename the folders"
        )
    if description.transposed:
        raise ValueError(
            f"{folder / DESCRIPTION_FILE}: transposed: is for arrays (EMNIST's IDX files); "
            "image files are read as they are shown: remove it"
        )
    splits = {"train": train}
    test = folder / "test"
    if (test.exists() or test.is_symlink()) and not test.is_dir():
        raise ValueError(f"{test}: not a folder; the test images go in test/<class>/")
    if test.is_dir():
        if description.test_size is not None:
            raise ValueError(
                f"{folder / DESCRIPTION_FILE}: test_size: given, but {folder / 'test'} holds "
                "the test images; remove one of them"
            )
        splits["test"] = _split_folder(folder, "test")
        unknown = sorted(set(splits["test"]) - set(classes))
        if unknown:
            raise ValueError(
                f"{folder / 'test' / unknown[0]}: a test class that train/ lacks; add "
                f"train/{unknown[0]}/ or remove it"
            )
    else:
        fraction = description.test_size or DEFAULT_TEST_FRACTION
        held = {name: _held_out(train[name], folder, fraction) for name in classes}
        splits["test"] = {name: [p for p in train[name] if p in held[name]] for name in classes}
        splits["train"] = {
            name: [p for p in train[name] if p not in held[name]] for name in classes
        }
    files = {
        split: [p for name in classes for p in splits[split].get(name, [])] for split in splits
    }
    labels = {
        split: np.concatenate(
            [
                np.full(len(splits[split].get(name, [])), index, np.int64)
                for index, name in enumerate(classes)
            ]
        )
        for split in splits
    }
    return ImageFolder(classes, files, labels)
