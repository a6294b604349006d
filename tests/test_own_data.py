"""Data sets of one's own: image folders, IDX files and dataset.yaml, read, checked and
prepared; each bad input refused in one line naming the file (or key) and the fix.

Every folder is generated here, tiny, in tmp_path (the real data set no one here made,
tests/data/digits, is trained in tests/test_end_to_end.py).
"""

from __future__ import annotations

import gzip
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from loopline import images as images_module
from loopline import records
from loopline.dataset import validation_count
from loopline.files import StageError, seal
from loopline.survey import load, survey
from stages import predict
from stages.check_data import check_data
from stages.prepare import prepare
from stages.validate import validate
from tests.conftest import (
    PREPARE_PARAMS,
    REPO,
    image_folder,
    run_without_tensorflow,
    sha256,
    synthetic_arrays,
    write_images,
    write_params,
)

GREY = np.arange(12 * 10, dtype=np.uint8).reshape(12, 10)
COLOUR = np.random.default_rng(0).integers(0, 256, (12, 10, 3), dtype=np.uint8)


def describe(folder: Path, **fields) -> Path:
    (folder / "dataset.yaml").write_text(yaml.safe_dump(fields, allow_unicode=True))
    return folder


def refused(folder: Path, message: str, error=ValueError) -> str:
    """survey's one-line refusal of `folder`, which must match `message`; prepare's reading
    (load, which decodes each image once) refuses it in the same words."""
    with pytest.raises(error) as caught:
        survey(folder)
    text = str(caught.value)
    assert "\n" not in text and re.search(message, text), text
    with tempfile.TemporaryDirectory() as scratch, pytest.raises(error) as caught:
        load(folder, Path(scratch) / "arrays")
    assert str(caught.value) == text
    return text


# -- what a folder holds -----------------------------------------------------------------


def test_a_colour_folder_with_a_test_split(tmp_path):
    folder = image_folder(tmp_path / "pets", classes=3, per_class=4, shape=(12, 10, 3), test=2)
    found = survey(folder)
    assert (found.dataset, found.layout) == ("pets", "images")
    assert found.classes == ["class 0", "class 1", "class 2"]  # the folder names, sorted
    assert found.shape == [12, 10, 3]
    assert found.splits["train"] == {"examples": 12, "class_counts": [4, 4, 4]}
    assert found.splits["test"] == {"examples": 6, "class_counts": [2, 2, 2]}
    assert found.validation_size == 1  # a tenth of 12, rounded


def test_without_test_a_share_of_each_class_is_held_out_by_file_name(tmp_path):
    folder = image_folder(tmp_path / "grey", classes=2, per_class=10)
    found = survey(folder)
    assert found.shape == [12, 10]
    assert found.splits["test"]["class_counts"] == [2, 2]  # a fifth of each class
    assert found.splits["train"]["class_counts"] == [8, 8]
    meta = prepare(folder, tmp_path / "prepared", {**PREPARE_PARAMS, "validation_size": None})
    held_out = _test_files(folder, tmp_path / "prepared")
    # The share depends on the file names, not on params: a new seed keeps the test set;
    # and adding images to a class moves none of the others into or out of it.
    prepare(folder, tmp_path / "reseeded", {**PREPARE_PARAMS, "validation_size": None, "seed": 9})
    assert _test_files(folder, tmp_path / "reseeded") == held_out
    assert meta["splits"]["validation"]["examples"] == 2  # a tenth of 16
    write_images(folder, {"train/class 0/zz-new.png": GREY})
    found = survey(folder)
    assert found.splits["train"]["class_counts"][0] + found.splits["test"]["class_counts"][0] == 11


def _test_files(folder: Path, prepared: Path) -> set[bytes]:
    test_images, _ = records.load_split(prepared, "test")
    return {image.tobytes() for image in test_images}


def test_odd_file_names_and_formats_are_read(tmp_path):
    folder = tmp_path / "odd"
    write_images(
        folder,
        {
            "train/Ünïcödé class/a file with spaces.PNG": GREY,
            "train/Ünïcödé class/UPPER.JPG": (GREY, {"format": "JPEG", "quality": 95}),
            "train/Ünïcödé class/nested/deeper.jpeg": (GREY, {"format": "JPEG"}),
            "train/b/x.bmp": GREY,
            "train/b/y.gif": GREY,
            "train/b/z.webp": (GREY, {"lossless": True}),
            "train/b/.hidden.png": GREY,
        },
    )
    (folder / "train/b/Thumbs.db").write_bytes(b"\xd0\xcf\x11\xe0")
    (folder / "train/b/.DS_Store").write_bytes(b"\0\0\0\1Bud1")
    (folder / "train/__MACOSX").mkdir()
    (folder / "train/__MACOSX/._x.png").write_bytes(b"junk")
    (folder / "README.md").write_text("provenance")
    describe(folder, test_size=0.4, channels=1)
    found = survey(folder)
    assert found.classes == ["b", "Ünïcödé class"]
    assert found.splits["train"]["examples"] + found.splits["test"]["examples"] == 6


def test_grey_variants_and_transparency_become_grey_pixels(tmp_path):
    folder = tmp_path / "modes"
    rgba = np.zeros((12, 10, 4), np.uint8)  # transparent black, as drawing apps save it
    rgba[:, :5] = (0, 0, 0, 255)
    wide = (GREY.astype(np.uint16) * 257).astype(np.uint16)
    write_images(folder, {"train/a/wide.png": wide, "train/a/one.png": GREY, "train/b/x.png": GREY})
    describe(folder, channels=1, test_size=0.5)
    write_images(folder, {"train/b/drawing.png": rgba})
    found = survey(folder)
    assert found.shape == [12, 10]
    np.testing.assert_array_equal(
        images_module.load_image(folder / "train/a/wide.png", None, 1), GREY
    )
    drawing = images_module.load_image(folder / "train/b/drawing.png", None, 1)
    assert drawing[0, 0] == 0 and drawing[0, 9] == 255  # black ink, transparent -> white


def test_a_photo_stored_rotated_is_read_upright(tmp_path):
    pixels = np.zeros((12, 10), np.uint8)
    pixels[0, :] = 255  # a bright top row
    image = Image.fromarray(pixels).rotate(90, expand=True)  # stored on its side: 10x12
    exif = Image.Exif()
    exif[images_module.ORIENTATION] = 6  # "turn 90 degrees clockwise to view"
    path = tmp_path / "photo.jpg"
    image.save(path, exif=exif, quality=100)
    upright = images_module.load_image(path, None, 1)
    assert upright.shape == (12, 10) and upright[0].mean() > 200 and upright[-1].mean() < 50
    assert images_module.read_header(path) == images_module.inspect_image(path) == (12, 10, 1)


def test_mixed_sizes_and_modes_need_a_description(tmp_path):
    folder = tmp_path / "mixed"
    big = np.full((24, 20), 200, np.uint8)
    write_images(folder, {"train/a/small.png": GREY, "train/b/big.png": big})
    write_images(folder, {"train/a/s2.png": GREY, "train/b/b2.png": big})
    refused(
        folder,
        r"images of different sizes: train/a/s2.png is 10x12, train/b/b.*png is "
        r"20x24; set image_size: \[height, width\] in .*dataset.yaml",
    )
    describe(folder, image_size=[6, 5], test_size=0.5)
    assert survey(folder).shape == [6, 5]
    write_images(folder, {"train/b/colour.png": COLOUR})
    refused(folder, "images of grey and colour: .* set channels: 1 .* or channels: 3")
    describe(folder, image_size=[6, 5], channels=3, test_size=0.5)
    assert survey(folder).shape == [6, 5, 3]


# -- bad folders -------------------------------------------------------------------------


def _bad_file(kind: str, path: Path) -> None:
    if kind == "truncated PNG":
        Image.fromarray(GREY).save(path)
        path.write_bytes(path.read_bytes()[:-30])
    elif kind == "truncated JPEG":
        Image.fromarray(COLOUR).save(path, format="JPEG")
        path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])
    elif kind == "damaged PNG":  # zeros in the middle of its compressed pixels
        Image.fromarray(np.tile(np.arange(64, dtype=np.uint8) * 4, (64, 1))).save(path)
        data = bytearray(path.read_bytes())
        data[len(data) // 2 : len(data) // 2 + 8] = bytes(8)
        path.write_bytes(bytes(data))
    elif kind == "text":
        path.write_text("not an image\n")
    elif kind == "empty file":
        path.write_bytes(b"")


@pytest.mark.parametrize(
    "kind", ["truncated PNG", "truncated JPEG", "damaged PNG", "text", "empty file"]
)
def test_a_bad_image_is_named(tmp_path, kind):
    folder = image_folder(tmp_path / "data", classes=2, per_class=3)
    bad = folder / "train/class 1/bad file.png"
    _bad_file(kind, bad)
    refused(folder, f"^{re.escape(str(bad))}: not a readable image")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda f: (f / "train/class 2").mkdir(), "train/class 2: an empty class folder"),
        (
            lambda f: write_images(f, {"test/class 9/x.png": GREY}),
            "test/class 9: a test class that train/ lacks; add train/class 9/",
        ),
        (lambda f: write_images(f, {"train/loose.png": GREY}), "loose.png: a file directly in"),
        (lambda f: (f / "val/a").mkdir(parents=True), "val: an unexpected folder"),
        (
            lambda f: (
                [p.unlink() for p in (f / "train/class 1").iterdir()]
                and (f / "train/class 1").rmdir()
            ),
            r"train: 1 class folder\(s\); a classifier needs at least 2",
        ),
        (lambda f: np.savez(f / "extra.npz", x=GREY), "holds more than one data set"),
    ],
)
def test_a_bad_layout_is_named(tmp_path, change, message):
    folder = image_folder(tmp_path / "data", classes=2, per_class=3)
    change(folder)
    refused(folder, message)


def test_a_folder_without_a_data_set(tmp_path):
    (tmp_path / "empty").mkdir()
    refused(tmp_path / "empty", "empty: no data set found: expected train/<class>/ folders")
    refused(tmp_path / "nowhere", "nowhere: no such folder", FileNotFoundError)
    (tmp_path / "empty/train").mkdir()
    refused(tmp_path / "empty", r"0 class folder\(s\)")


def test_too_few_images_to_hold_a_test_share(tmp_path):
    folder = image_folder(tmp_path / "data", classes=2, per_class=2)
    refused(folder, "no test images")


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"colour": 3}, "unknown key 'colour'; known keys are description, classes"),
        ({"channels": 2}, "channels: got 2, expected 1 or 3"),
        ({"image_size": [0, 5]}, r"image_size: got \[0, 5\], expected \[height, width\]"),
        ({"image_size": "big"}, "image_size: got 'big'"),
        ({"classes": ["a", "a"]}, "classes: got .*, expected a list of at least 2 distinct"),
        ({"classes": ["class 0", "other"]}, "classes: lists .* but the class folders of train/"),
        ({"framing": "digit", "channels": 3}, "framing: digit is for grey images of one digit"),
        ({"test_size": 1.5}, "test_size: got 1.5, expected a fraction between 0 and 1"),
        ({"validation_size": -1}, "validation_size: got -1"),
        ({"checksums": {"x.png": "abc"}}, "checksums: got .*expected a mapping of file name"),
        ({"checksums": {"../../etc/passwd": "0" * 64}}, "checksums: '../../etc/passwd' is not a"),
    ],
)
def test_a_bad_description_names_the_file_and_the_key(tmp_path, fields, message):
    folder = describe(image_folder(tmp_path / "data", classes=2, per_class=5), **fields)
    text = refused(folder, message, (ValueError, FileNotFoundError))
    assert text.startswith(str(folder / "dataset.yaml"))


def test_test_size_with_a_test_folder_is_a_contradiction(tmp_path):
    folder = describe(image_folder(tmp_path / "d", classes=2, per_class=3, test=1), test_size=0.3)
    refused(folder, "test_size: given, but .* holds the test images; remove one of them")


def test_broken_yaml_is_one_line(tmp_path):
    folder = image_folder(tmp_path / "data", classes=2, per_class=5)
    (folder / "dataset.yaml").write_text("classes: [a, b\n")
    refused(folder, r"dataset.yaml: malformed YAML at line \d")


def test_a_changed_file_fails_its_checksum(tmp_path):
    folder = image_folder(tmp_path / "data", classes=2, per_class=5)
    listed = folder / "train/class 0/000.png"
    describe(folder, checksums={"train/class 0/000.png": sha256(listed)})
    survey(folder)
    write_images(folder, {"train/class 0/000.png": GREY})
    refused(folder, f"^{re.escape(str(listed))}: its SHA-256 is not the one in dataset.yaml")


# -- arrays: .npz and IDX ----------------------------------------------------------------


def _write_idx(path: Path, array: np.ndarray, compress: bool) -> None:
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(
        int(side).to_bytes(4, "big") for side in array.shape
    )
    content = header + np.ascontiguousarray(array, np.uint8).tobytes()
    path.write_bytes(gzip.compress(content, mtime=0) if compress else content)


@pytest.mark.parametrize("compress", [True, False])
def test_idx_files_give_what_the_npz_gives(tmp_path, compress):
    arrays = synthetic_arrays(train=60, test=20)
    suffix = ".gz" if compress else ""
    folder = tmp_path / "fashion"
    folder.mkdir()
    for name, stem in [
        ("x_train", "train-images-idx3-ubyte"),
        ("y_train", "train-labels-idx1-ubyte"),
        ("x_test", "t10k-images-idx3-ubyte"),
        ("y_test", "t10k-labels-idx1-ubyte"),
    ]:
        _write_idx(folder / f"{stem}{suffix}", arrays[name], compress)
    names = ["T-shirt", "Trouser", "Pullover", "Dress", "Coat"] + [f"c{i}" for i in range(5)]
    describe(folder, classes=names, validation_size=10)
    found = survey(folder)
    assert (found.layout, found.classes, found.shape) == ("idx", names, [28, 28])
    params = {**PREPARE_PARAMS, "validation_size": None}
    meta = prepare(folder, tmp_path / "prepared", params)
    assert meta["classes"] == names and meta["splits"]["validation"]["examples"] == 10
    test_images, test_labels = records.load_split(tmp_path / "prepared", "test")
    np.testing.assert_array_equal(test_images, arrays["x_test"])
    np.testing.assert_array_equal(test_labels, arrays["y_test"])
    # A labels file whose header promises 60 labels and holds none.
    header_only = np.zeros((0,), np.uint8)
    _write_idx(folder / f"train-labels-idx1-ubyte{suffix}", header_only, compress)
    labels = folder / f"train-labels-idx1-ubyte{suffix}"
    content = gzip.decompress(labels.read_bytes()) if compress else labels.read_bytes()
    content = content[:4] + (60).to_bytes(4, "big")
    labels.write_bytes(gzip.compress(content, mtime=0) if compress else content)
    refused(folder, "y_train holds 0 bytes of data, its header says 60")


def test_emnist_files_stored_transposed_are_turned_back(tmp_path):
    arrays = synthetic_arrays(train=40, test=10)
    folder = tmp_path / "emnist"
    folder.mkdir()
    for split in ("train", "test"):
        transposed = arrays[f"x_{split}"][:, :, :20].swapaxes(1, 2)  # 28x20 stored as 20x28
        _write_idx(folder / f"emnist-digits-{split}-images-idx3-ubyte.gz", transposed, True)
        _write_idx(
            folder / f"emnist-digits-{split}-labels-idx1-ubyte.gz", arrays[f"y_{split}"], True
        )
    assert survey(folder).shape == [20, 28]  # as stored
    describe(folder, transposed=True, framing="digit")
    assert survey(folder).shape == [28, 20]
    prepare(folder, tmp_path / "prepared", {**PREPARE_PARAMS, "validation_size": 5})
    test_images, _ = records.load_split(tmp_path / "prepared", "test")
    np.testing.assert_array_equal(test_images, arrays["x_test"][:, :, :20])
    image_folder(tmp_path / "images", classes=2, per_class=5)
    refused(describe(tmp_path / "images", transposed=True), "transposed: is for arrays")


def test_labels_named_by_a_mapping_are_numbered_in_order(tmp_path):
    # EMNIST letters: labels 1..26, none 0. Here labels 1..3 named a, b, c.
    arrays = {key: value for key, value in synthetic_arrays(train=30, test=9).items()}
    for split in ("train", "test"):
        arrays[f"y_{split}"] = arrays[f"y_{split}"] % 3 + 1
    folder = tmp_path / "letters"
    folder.mkdir()
    np.savez(folder / "letters.npz", **arrays)
    refused(folder, "class '0' has no training images; add some, or leave its label out")
    describe(folder, classes={1: "a", 2: "b", 3: "c"})
    found = survey(folder)
    assert found.classes == ["a", "b", "c"]
    assert found.splits["train"]["class_counts"] == [12, 9, 9]
    describe(folder, classes=[f"name {index}" for index in range(12)])
    refused(folder, "class 'name 0' has no training images")
    describe(folder, classes={1: "a", 2: "b"})
    refused(folder, r"y_train holds label 3, which classes in .* does not name")


# -- prepare, predict and the command lines ----------------------------------------------


def test_prepare_and_predict_give_the_same_pixels_for_the_same_file(tmp_path):
    folder = tmp_path / "photos"
    rng = np.random.default_rng(5)
    pictures = {
        f"train/{name}/{index}.{extension}": (
            rng.integers(0, 256, (size, size + 7, 3), dtype=np.uint8),
            {"format": "JPEG"} if extension == "jpg" else {},
        )
        for name in ("cats", "dogs")
        # The large JPEG is decoded at a quarter of its size (draft) before it is resized.
        for index, (size, extension) in enumerate([(30, "png"), (17, "jpg"), (130, "jpg")])
    }
    write_images(folder, pictures)
    describe(folder, image_size=[16, 20], test_size=0.4)
    prepare(folder, tmp_path / "prepared", {**PREPARE_PARAMS, "validation_size": 1})
    prepared = np.concatenate(
        [records.load_split(tmp_path / "prepared", split)[0] for split in records.SPLITS]
    )
    card = predict.Card(("cats", "dogs"), (16, 20, 3), "resize", "photos")
    served = [predict.prepare_image(path, card) for path in sorted(folder.rglob("*.*g"))]
    assert prepared.shape == (6, 16, 20, 3)
    assert sorted(image.tobytes() for image in prepared) == sorted(x.tobytes() for x in served)


def test_decoding_on_every_core_gives_the_same_pixels(tmp_path, monkeypatch):
    folder = image_folder(tmp_path / "many", classes=2, per_class=30, shape=(9, 7, 3))
    paths = sorted(folder.rglob("*.png"))
    serial = np.stack([images_module.load_image(path, (9, 7), 3) for path in paths])
    monkeypatch.setattr(images_module, "CHUNK_FILES", 16)
    monkeypatch.setattr(images_module, "workers", lambda: 2)
    parallel = np.zeros_like(serial)
    images_module.load_all(paths, parallel, (9, 7), 3)
    np.testing.assert_array_equal(parallel, serial)
    assert images_module.inspect_all(paths) == [(9, 7, 3)] * len(paths)
    bad = paths[37]
    bad.write_text("no")
    with pytest.raises(images_module.ImageError, match=f"^{re.escape(str(bad))}: not a"):
        images_module.inspect_all(paths)
    assert not _child_processes()  # the worker ended with the error


def _child_processes() -> list[str]:
    task = Path(f"/proc/{os.getpid()}/task")
    return [pid for thread in task.iterdir() for pid in (thread / "children").read_text().split()]


def test_a_decoding_worker_answers_as_this_process_would(tmp_path):
    folder = image_folder(tmp_path / "few", classes=2, per_class=3, shape=(9, 7, 3))
    paths = sorted(folder.rglob("*.png"))
    bad = folder / "train/class 1/bad.png"
    bad.write_bytes(b"\x89PNG\r\n")
    worker = images_module._Worker()
    try:
        assert worker.ready()
        pixels, shapes = worker.run("decode", paths, ((4, 5), 1))
        assert shapes == [(9, 7, 3)] * len(paths)
        expected = np.stack([images_module.load_image(path, (4, 5), 1) for path in paths])
        assert pixels == expected.tobytes()
        error = worker.run("inspect", [paths[0], bad], (None,))
        assert isinstance(error, images_module.ImageError)
        with pytest.raises(images_module.ImageError) as caught:
            images_module.inspect_image(bad)
        assert str(error) == str(caught.value)
        worker.process.kill()  # as the system does when memory runs out
        with pytest.raises(StageError, match=r"class 0/000.png: the worker .* SIGKILL, as when"):
            worker.run("inspect", paths, (None,))
    finally:
        worker.close()
    assert worker.process.returncode is not None


def test_check_data_is_one_line_and_imports_no_tensorflow(tmp_path):
    folder = image_folder(tmp_path / "data", classes=2, per_class=5)
    result = run_without_tensorflow(
        ["-m", "stages.check_data", str(folder), str(tmp_path / "dataset.json")]
    )
    assert (
        result.stdout
        == "check_data: data: 2 classes, 8 train, 2 test images (10x12 grey, images)\n"
    )
    summary = json.loads((tmp_path / "dataset.json").read_text())
    assert summary["classes"] == ["class 0", "class 1"]
    (folder / "train/class 0/004.png").write_bytes(b"\x89PNG\r\n")
    result = subprocess.run(
        [sys.executable, "-m", "stages.check_data", str(folder), str(tmp_path / "dataset.json")],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    assert result.stderr.splitlines() == [
        f"error: {folder / 'train/class 0/004.png'}: not a readable image "
        "(cannot identify image file)"
    ]


def test_validate_checks_params_against_the_data(tmp_path):
    folder = image_folder(tmp_path / "small", classes=2, per_class=20)
    check_data(folder, tmp_path / "dataset.json")
    modules = [REPO / "stages/prepare.py"]

    def run(**params) -> None:
        path = write_params(tmp_path / "params.yaml", dataset="small", **params)
        validate(path, tmp_path / "dataset.json", tmp_path / "checked", modules)

    run(validation_size=None, batch_size=8, steps_per_execution=1)
    with pytest.raises(ValueError, match=r"validation_size: got 0.99 \(32 images\), expected"):
        run(validation_size=0.99, batch_size=8, steps_per_execution=1)
    with pytest.raises(ValueError, match="batch_size: got 32, expected at most the 29 training"):
        run(validation_size=None, batch_size=32, steps_per_execution=1)
    with pytest.raises(ValueError, match="dataset: 'mnist', but data/dataset.json describes"):
        path = write_params(tmp_path / "params.yaml", dataset="mnist")
        validate(path, tmp_path / "dataset.json", tmp_path / "checked", modules)
    summary = json.loads((tmp_path / "dataset.json").read_text())
    summary["shape"] = [224, 224, 3]
    (tmp_path / "dataset.json").write_text(json.dumps(seal(summary)))
    with pytest.raises(ValueError, match="model: tutorial would hold .* choose model: convnet"):
        run(validation_size=None, batch_size=8, steps_per_execution=1)
    assert validation_count(0.25, 5000, 100) == 25 and validation_count(None, None, 100) == 10
