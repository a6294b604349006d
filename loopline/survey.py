"""What a data set folder holds, checked, and its images and labels for prepare.

`survey(folder)` reads the whole data set once (every image decoded, every array read
through) and returns what check_data records in data/dataset.json: the classes, the
image shape, the examples per split and class. `load(folder, scratch)` gives prepare the
same data set as arrays, through the same checks. Pure Python: no TensorFlow.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from loopline import arrays, images
from loopline.dataset import (
    DESCRIPTION_FILE,
    Description,
    ImageFolder,
    find_layout,
    list_images,
    read_description,
    validation_count,
    verify_checksums,
)

SPLITS = ("train", "test")


@dataclass
class Survey:
    """A data set as check_data records it, and as prepare describes it in meta.json."""

    dataset: str
    layout: str
    classes: list[str]
    shape: list[int]  # [height, width] for grey images, [height, width, 3] for colour
    framing: str
    validation_size: int  # the data set's default, a count of training images
    splits: dict[str, dict]  # {"train": {"examples": n, "class_counts": [...]}, "test": ...}

    def to_json(self) -> dict:
        return asdict(self)


def _one_value(folder: Path, files: list[Path], values: list, what: str, fix: str) -> object:
    """The value every file shares, or a ValueError naming two files that differ."""
    first = values[0]
    for path, value in zip(files, values, strict=True):
        if value != first:
            raise ValueError(
                f"{folder}: images of {what}: {files[0].relative_to(folder)} is "
                f"{_shown(first, what)}, {path.relative_to(folder)} is {_shown(value, what)}; {fix}"
            )
    return first


def _shown(value: object, what: str) -> str:
    if what == "different sizes":
        return f"{value[1]}x{value[0]}"  # width x height, as image viewers say
    return "grey" if value == 1 else "colour"


def image_shape(
    folder: Path, files: list[Path], shapes: list[tuple[int, int, int]], description: Description
) -> list[int]:
    """The prepared images' shape: dataset.yaml's size and channels, else the images'
    own when they all agree."""
    path = folder / DESCRIPTION_FILE
    channels = description.channels or _one_value(
        folder,
        files,
        [shape[2] for shape in shapes],
        "grey and colour",
        f"set channels: 1 (grey) or channels: 3 (colour) in {path}",
    )
    size = description.image_size or _one_value(
        folder,
        files,
        [shape[:2] for shape in shapes],
        "different sizes",
        f"set image_size: [height, width] in {path} to resize them all to one size",
    )
    if description.framing == "digit" and channels != 1:
        raise ValueError(f"{path}: framing: digit is for grey images, but these are colour")
    return [*size, 3] if channels == 3 else list(size)


def _classes_and_labels(
    folder: Path, description: Description, labels: dict[str, np.ndarray]
) -> tuple[list[str], dict[str, np.ndarray]]:
    """The class names and each split's labels as class indices 0..n-1, checked."""
    path = folder / DESCRIPTION_FILE
    known = description.labels or tuple(range(len(description.classes or ())))
    if not description.classes:
        highest = max(int(values.max()) for values in labels.values())
        known = tuple(range(highest + 1))
    lookup = np.full(max(known) + 1, -1, np.int64)
    lookup[list(known)] = np.arange(len(known))
    mapped = {}
    for split, values in labels.items():
        outside = values[(values < 0) | (values > max(known))]
        unknown = outside if len(outside) else values[lookup[values] < 0]
        if len(unknown):
            raise ValueError(
                f"{folder}: y_{split} holds label {int(unknown[0])}, which classes in {path} "
                f"does not name ({len(known)} classes, labels {known[0]}..{known[-1]})"
            )
        mapped[split] = lookup[values]
    names = list(description.classes) if description.classes else [str(k) for k in known]
    return names, mapped


def _counts(labels: np.ndarray, classes: list[str]) -> dict:
    return {
        "examples": len(labels),
        "class_counts": np.bincount(labels, minlength=len(classes)).tolist(),
    }


def _check_classes(folder: Path, classes: list[str], counts: dict[str, dict]) -> None:
    """Every class has training images, and there are test images."""
    if len(classes) < 2:
        raise ValueError(f"{folder}: one class only ({classes[0]!r}); a classifier needs two")
    train_counts = counts["train"]["class_counts"]
    missing = [name for name, count in zip(classes, train_counts, strict=True) if not count]
    if missing:
        raise ValueError(
            f"{folder}: class {missing[0]!r} has no training images; add some, or leave its "
            f"label out of classes in {DESCRIPTION_FILE}"
        )
    if not counts["test"]["examples"]:
        raise ValueError(
            f"{folder}: no test images (each class is too small to hold one out); add a "
            "test/ folder or more images"
        )


def _describe(
    folder: Path,
    layout: str,
    description: Description,
    classes: list[str],
    shape: list[int],
    labels: dict[str, np.ndarray],
) -> Survey:
    counts = {split: _counts(labels[split], classes) for split in SPLITS}
    _check_classes(folder, classes, counts)
    default = validation_count(None, description.validation_size, counts["train"]["examples"])
    return Survey(folder.name, layout, classes, shape, description.framing, default, counts)


def survey(folder: Path) -> Survey:
    """Check the whole data set in `folder`: every file decoded or read through."""
    description = read_description(folder)
    layout = find_layout(folder)
    verify_checksums(folder, description.checksums)
    if layout == "images":
        found = list_images(folder, description)
        every = found.files["train"] + found.files["test"]
        shapes = images.inspect_all(every, description.image_size)
        shape = image_shape(folder, every, shapes, description)
        return _describe(folder, layout, description, list(found.classes), shape, found.labels)
    return _survey_arrays(folder, layout, description)[1]


def _survey_arrays(
    folder: Path, layout: str, description: Description
) -> tuple[dict[str, arrays.ArrayHeader], Survey, dict[str, np.ndarray]]:
    """The arrays read through and checked: their headers, the survey, the labels as class
    indices."""
    headers, raw_labels = arrays.check_arrays(folder, layout)
    arrays.check_shapes(folder, headers)
    shape = _array_shape(folder, headers["x_train"].shape, description)
    classes, labels = _classes_and_labels(
        folder, description, {split: raw_labels[f"y_{split}"] for split in SPLITS}
    )
    return headers, _describe(folder, layout, description, classes, shape, labels), labels


def _array_shape(folder: Path, shape: tuple[int, ...], description: Description) -> list[int]:
    """[height, width] or [height, width, 3], checked against dataset.yaml's."""
    height, width = shape[1:3]
    if description.transposed:
        height, width = width, height
    channels = shape[3] if len(shape) == 4 else 1
    path = folder / DESCRIPTION_FILE
    if description.image_size not in (None, (height, width)):
        raise ValueError(
            f"{path}: image_size: {list(description.image_size)}, but the arrays' images are "
            f"[{height}, {width}]; remove image_size (arrays are not resized)"
        )
    if description.channels not in (None, channels):
        raise ValueError(
            f"{path}: channels: {description.channels}, but the arrays hold images of "
            f"{channels} channel(s); remove channels"
        )
    if description.framing == "digit" and channels != 1:
        raise ValueError(f"{path}: framing: digit is for grey images, but these are colour")
    return [height, width, 3] if channels == 3 else [height, width]


@dataclass
class Loaded:
    """A data set read for prepare: the survey, and each split's images and labels."""

    survey: Survey
    images: dict[str, np.ndarray]
    labels: dict[str, np.ndarray]


def load(folder: Path, scratch: Path) -> Loaded:
    """The data set in `folder` as arrays (memory maps of files in `scratch`), checked as
    survey checks it, each image decoded once."""
    description = read_description(folder)
    layout = find_layout(folder)
    verify_checksums(folder, description.checksums)
    if layout == "images":
        return _load_images(folder, scratch, description, list_images(folder, description))
    headers, found, labels = _survey_arrays(folder, layout, description)
    shape = found.shape
    extracted = arrays.extract_arrays(folder, layout, scratch, headers)
    pixels = {split: extracted[f"x_{split}"] for split in SPLITS}
    if description.transposed:  # rows and columns swapped: a view, copied shard by shard
        pixels = {split: array.swapaxes(1, 2) for split, array in pixels.items()}
    pixels = {split: array.reshape(len(array), *shape) for split, array in pixels.items()}
    return Loaded(found, pixels, labels)


def _load_images(
    folder: Path, scratch: Path, description: Description, found: ImageFolder
) -> Loaded:
    every = found.files["train"] + found.files["test"]
    # The shape the first image (or dataset.yaml) gives; every image's own shape, known once
    # it is decoded, is checked against it below, as survey checks it.
    shape = image_shape(folder, every[:1], [images.read_header(every[0])], description)
    scratch.mkdir()
    # One array for both splits: their files decoded in one go, on every core.
    every_pixel = np.lib.format.open_memmap(
        scratch / "images.npy", "w+", np.uint8, (len(every), *shape)
    )
    shapes = images.load_all(every, every_pixel, tuple(shape[:2]), 1 if len(shape) == 2 else 3)
    image_shape(folder, every, shapes, description)
    described = _describe(folder, "images", description, list(found.classes), shape, found.labels)
    train = len(found.files["train"])
    pixels = {"train": every_pixel[:train], "test": every_pixel[train:]}
    return Loaded(described, pixels, found.labels)
