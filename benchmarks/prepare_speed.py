"""prepare_speed: images per second, prepare against Keras' image_dataset_from_directory.

On the same image folders, in one process, taking turns: Keras' reader
(`keras.utils.image_dataset_from_directory` of the folder's train/, iterated to its end:
every image decoded, resized and batched), this project's `prepare` (the whole stage:
decoding on every core, the validation split, the GZIP-compressed TFRecord shards and
their hashes), the decoding alone (`survey.load`), and `check_data`'s check (every image
decoded once more). Three folders: tests/data/digits (1,797 real 8x8 grey PNGs), the same
digits copied ten times (17,970 files: fixed costs such as starting the decoding workers
weigh ten times less), and generated colour JPEGs of several sizes, resized to one
(dataset.yaml image_size; Keras resizes too, to the same size). TensorFlow is imported
once, before any timing: each reader's time is its work, without the ~3 s a fresh process
spends importing TensorFlow. The medians of --repeats turns are reported, with their
range, the load average (1 minute) seen during the turns and the priority the run had
(`scheduling`: on a machine other jobs keep busy, run it under `setsid` at a higher
priority, as benchmarks/README.md shows, so that they take less of its time).
Writes benchmarks/results/<machine>/prepare_speed.json (benchmarks/machine.py).
Run    python -m benchmarks.prepare_speed [--repeats 5] [--photos 2000] [--copies 10]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import loopline

loopline.import_tensorflow_quietly()

import keras  # noqa: E402
import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from benchmarks.machine import describe, write_results  # noqa: E402
from loopline.survey import load, survey  # noqa: E402
from stages.prepare import prepare  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
DIGITS = REPO / "tests/data/digits"
PARAMS = {
    "seed": 42,
    "validation_size": None,
    "max_train_examples": None,
    "examples_per_shard": 5000,
}
PHOTO_SIZE = (64, 64)  # what the photos are resized to, by both readers
PHOTO_SIDES = (320, 480, 640)  # the photos' own sizes (width; height is 3/4 of it)


def write_photos(folder: Path, count: int, classes: int = 10) -> Path:
    """`count` colour JPEGs in train/<class>/, of PHOTO_SIDES sizes: smooth random
    gradients with noise, which compress like photos rather than like white noise."""
    rng = np.random.default_rng(0)
    for index in range(count):
        width = PHOTO_SIDES[index % len(PHOTO_SIDES)]
        height = width * 3 // 4
        rows, columns = np.mgrid[0:height, 0:width]
        slope = rng.uniform(-1, 1, 3) * (rows[..., None] + columns[..., None])
        base = rng.uniform(0, 255, 3) + slope
        pixels = np.clip(base + rng.normal(0, 12, (height, width, 3)), 0, 255).astype(np.uint8)
        path = folder / "train" / f"class {index % classes}" / f"{index:05d}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels).save(path, quality=90)
    (folder / "dataset.yaml").write_text(f"image_size: {list(PHOTO_SIZE)}\n")
    return folder


def copy_digits(folder: Path, copies: int) -> Path:
    """tests/data/digits' images `copies` times over, each copy under its own file name."""
    for source in sorted((DIGITS / "train").rglob("*.png")):
        target = folder / source.relative_to(DIGITS).parent
        target.mkdir(parents=True, exist_ok=True)
        for copy in range(copies):
            shutil.copyfile(source, target / f"{source.stem}-{copy}.png")
    return folder


def keras_reader(folder: Path, size: tuple[int, int], channels: int) -> Callable[[], int]:
    def run() -> int:
        dataset = keras.utils.image_dataset_from_directory(
            folder / "train",
            image_size=size,
            color_mode="grayscale" if channels == 1 else "rgb",
            shuffle=False,
            verbose=False,
        )
        return sum(len(labels) for _, labels in dataset)

    return run


def prepare_stage(folder: Path, scratch: Path) -> Callable[[], int]:
    def run() -> int:
        out = scratch / "prepared"
        meta = prepare(folder, out, PARAMS)
        shutil.rmtree(out)
        return sum(split["examples"] for split in meta["splits"].values())

    return run


def decoding(folder: Path, scratch: Path) -> Callable[[], int]:
    def run() -> int:
        data = load(folder, scratch / "decoded")
        count = sum(len(labels) for labels in data.labels.values())
        del data
        shutil.rmtree(scratch / "decoded")
        return count

    return run


def checking(folder: Path) -> Callable[[], int]:
    def run() -> int:
        return sum(split["examples"] for split in survey(folder).splits.values())

    return run


def timed(function: Callable[[], int]) -> tuple[float, int]:
    start = time.perf_counter()
    count = function()
    return time.perf_counter() - start, count


def measure(folder: Path, size: tuple[int, int], channels: int, repeats: int) -> dict:
    """Every reader's images per second on `folder`, taking turns `repeats` times."""
    loads = [os.getloadavg()[0]]
    with tempfile.TemporaryDirectory() as scratch:
        readers = {
            "keras image_dataset_from_directory": keras_reader(folder, size, channels),
            "prepare (whole stage)": prepare_stage(folder, Path(scratch)),
            "prepare's decoding alone": decoding(folder, Path(scratch)),
            "check_data (decode and check)": checking(folder),
        }
        for reader in readers.values():  # warm-up: page cache, imports, first traces
            reader()
        rates: dict[str, list[float]] = {name: [] for name in readers}
        names = list(readers)
        for repeat in range(repeats):
            for name in names[repeat % len(names) :] + names[: repeat % len(names)]:
                seconds, count = timed(readers[name])
                rates[name].append(count / seconds)
            loads.append(os.getloadavg()[0])
    images = sum(1 for path in (folder / "train").rglob("*") if path.is_file())
    medians = {name: statistics.median(values) for name, values in rates.items()}
    baseline = medians["keras image_dataset_from_directory"]
    return {
        "folder": str(folder.relative_to(REPO)) if folder.is_relative_to(REPO) else folder.name,
        "images": images,
        "size": list(size),
        "channels": channels,
        "images_per_second": {name: round(value) for name, value in medians.items()},
        "over_keras": {name: round(value / baseline, 2) for name, value in medians.items()},
        "repeats": {name: [round(value) for value in values] for name, values in rates.items()},
        "load_average": [round(min(loads), 1), round(max(loads), 1)],
    }


def scheduling() -> str:
    """This process's priority against the machine's other jobs: its nice value, and on
    Linux its autogroup's (a busy machine shares the CPU between groups, not processes)."""
    words = f"nice {os.nice(0)}"
    autogroup = Path("/proc/self/autogroup")
    if autogroup.exists():  # "/autogroup-354 nice -10"
        words += f", autogroup nice {autogroup.read_text().split()[-1]}"
    return words


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5, help="(default: %(default)s)")
    parser.add_argument("--photos", type=int, default=2000, help="(default: %(default)s)")
    parser.add_argument(
        "--copies", type=int, default=10, help="of the digits, for the larger folder (default: 10)"
    )
    parser.add_argument("--output", type=Path, help="(default: benchmarks/results/<machine>/)")
    arguments = parser.parse_args()
    machine = describe()
    with tempfile.TemporaryDirectory() as scratch:
        photos = write_photos(Path(scratch) / "photos", arguments.photos)
        copies = copy_digits(Path(scratch) / f"digits x{arguments.copies}", arguments.copies)
        folders = [(DIGITS, (8, 8), 1), (copies, (8, 8), 1), (photos, PHOTO_SIZE, 3)]
        results = [measure(*folder, arguments.repeats) for folder in folders]
    for result in results:
        low, high = result["load_average"]
        where = f"{result['folder']}: {result['images']} images -> {result['size']}"
        print(f"{where} (load average {low}-{high})")
        for name, rate in result["images_per_second"].items():
            print(f"  {name:<36} {rate:>8,} images/s  {result['over_keras'][name]:.2f}x Keras")
    path = write_results(
        "prepare_speed",
        {
            "cores_used": len(os.sched_getaffinity(0)),
            "scheduling": scheduling(),
            "folders": results,
        },
        machine,
        arguments.output,
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
