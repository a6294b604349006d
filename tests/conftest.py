"""Shared fixtures: tiny synthetic MNIST-format data sets and params files in tmp_path; and how
`make test` shares the tests between its two pytest-xdist workers.

Nothing here imports TensorFlow at module level: under `pytest -n 2` this file is also
loaded by the process that only hands tests to the workers, where the import would cost
3.5 s before either worker starts (and print TensorFlow's notices after the summary).
"""

from __future__ import annotations

import functools
import hashlib
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from xdist.scheduler import LoadScopeScheduling

from benchmarks.pipeline_timings import environment

REPO = Path(__file__).resolve().parents[1]
DEFAULT_PARAMS = yaml.safe_load((REPO / "params.yaml").read_text())


def run_without_tensorflow(arguments: list[str]) -> subprocess.CompletedProcess:
    """`python ARGUMENTS` in the repository, as a stage runs; the test fails unless it exits
    0 without importing any module of TensorFlow (`-X importtime` lists every import)."""
    result = subprocess.run(
        [sys.executable, "-X", "importtime", *arguments],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    imported = {line.split("|")[-1].strip() for line in result.stderr.splitlines()}
    assert not {name for name in imported if name.startswith("tensorflow")}
    return result


def scratch_env(**extra: str) -> dict[str, str]:
    """The environment for `git` and `dvc` in a scratch repository: this interpreter's
    `python` first on PATH (dvc.yaml's commands call `python`) and a git identity."""
    return {
        **environment(),
        "GIT_AUTHOR_NAME": "test",
        "GIT_AUTHOR_EMAIL": "test@example.invalid",
        "GIT_COMMITTER_NAME": "test",
        "GIT_COMMITTER_EMAIL": "test@example.invalid",
        **extra,
    }


def files(directory: Path) -> dict[str, bytes]:
    """Every file under `directory`, by its path relative to it, as bytes."""
    return {
        path.relative_to(directory).as_posix(): path.read_bytes()
        for path in sorted(directory.rglob("*"))
        if path.is_file()
    }


def saved_epoch(checkpoints: Path) -> int:
    """The epoch of the checkpoint that the manager's state file in `checkpoints` names
    (0 before the first): train's checkpoints, as a test watching a run sees them."""
    state = checkpoints / "checkpoint"  # written whole (renamed into place) by TensorFlow
    if not state.exists():
        return 0
    found = re.search(r'model_checkpoint_path: "ckpt-(\d+)"', state.read_text())
    return int(found[1]) if found else 0


def write_params(path: Path, **overrides) -> Path:
    """params.yaml with the repository's values, some overridden."""
    path.write_text(yaml.safe_dump({**DEFAULT_PARAMS, **overrides}, sort_keys=False))
    return path


def synthetic_arrays(train: int = 240, test: int = 60, seed: int = 0) -> dict[str, np.ndarray]:
    """MNIST-shaped arrays whose digits are learnable: a bright bar at a label-given row."""
    rng = np.random.default_rng(seed)
    arrays = {}
    for split, count in (("train", train), ("test", test)):
        labels = (np.arange(count) % 10).astype(np.uint8)
        images = rng.integers(0, 40, (count, 28, 28), dtype=np.uint8)
        for index, label in enumerate(labels):
            images[index, 2 + 2 * label : 4 + 2 * label, 4:24] = 255
        arrays[f"x_{split}"], arrays[f"y_{split}"] = images, labels
    return arrays


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def write_raw(directory: Path, arrays: dict[str, np.ndarray], **description) -> Path:
    """A data set folder as prepare expects it: an .npz of `arrays` and its dataset.yaml
    (digit classes, the file's SHA-256, and `description`'s keys); returns the folder."""
    directory.mkdir(parents=True, exist_ok=True)
    raw = directory / "mnist.npz"
    np.savez_compressed(raw, **arrays)
    document = {
        "classes": [str(digit) for digit in range(10)],
        "framing": "digit",
        "checksums": {raw.name: sha256(raw)},
        **description,
    }
    (directory / "dataset.yaml").write_text(yaml.safe_dump(document, sort_keys=False))
    return directory


@pytest.fixture
def raw_data(tmp_path: Path) -> tuple[Path, dict[str, np.ndarray]]:
    arrays = synthetic_arrays()
    return write_raw(tmp_path / "raw", arrays), arrays


# prepare's params for the synthetic data sets: 200 training examples, 64 to a file (four
# files), 40 validation and 60 test ones.
PREPARE_PARAMS = {
    "seed": 0,
    "validation_size": 40,
    "max_train_examples": None,
    "examples_per_shard": 64,
}


def prepare_synthetic(raw: Path, out: Path) -> Path:
    """The data set folder `raw` (of synthetic_arrays()) prepared at `out`."""
    from stages.prepare import prepare  # TensorFlow: in a worker only (see the top)

    prepare(raw, out, PREPARE_PARAMS)
    return out


@pytest.fixture
def prepared(tmp_path: Path, raw_data) -> Path:
    raw, _ = raw_data
    return prepare_synthetic(raw, tmp_path / "prepared")


def write_images(
    root: Path, images: dict[str, np.ndarray | tuple], extension: str = ".png"
) -> list[Path]:
    """Image files at root/<relative path>: each value is the pixels (uint8 [h, w] or
    [h, w, 3]) or (pixels, Pillow save options). Returns the paths."""
    from PIL import Image

    paths = []
    for relative, value in images.items():
        pixels, options = value if isinstance(value, tuple) else (value, {})
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels).save(path, **options)
        paths.append(path)
    return paths


def image_folder(
    root: Path,
    classes: int = 3,
    per_class: int = 8,
    shape: tuple[int, ...] = (12, 10),
    test: int = 0,
    seed: int = 0,
) -> Path:
    """A folder of learnable PNG images in the images layout: class k has a bright bar at
    row 2k (grey or colour by `shape`); `per_class` training images per class and, if
    `test`, a test/ folder with that many per class."""
    rng = np.random.default_rng(seed)
    images = {}
    for split, count in (("train", per_class), ("test", test)):
        for label in range(classes):
            for index in range(count):
                pixels = rng.integers(0, 40, shape, dtype=np.uint8)
                pixels[2 * label : 2 * label + 2] = 255
                images[f"{split}/class {label}/{index:03d}.png"] = pixels
    write_images(root, images)
    return root


# -- Two workers (`make test`: pytest -n 2) ------------------------------------------------
# A test goes to whichever worker is free, except that a file with a module-scoped fixture
# (a DVC project built once, a trained model) goes whole to one worker: split, each worker
# would build the fixture. The end-to-end file, a third of the suite's time, goes first, so
# the other worker runs everything else beside it. (pytest-xdist's `--dist loadgroup` would
# group by marks, but with pytest 9.2 it silently stops grouping: pytest-xdist#1386.)
LONGEST = "tests/test_end_to_end.py"


def file_of(nodeid: str) -> str:
    return nodeid.split("::", 1)[0]


@functools.cache
def has_module_fixture(path: str) -> bool:
    return 'scope="module"' in (REPO / path).read_text()


class WholeFileWithModuleFixture(LoadScopeScheduling):
    """pytest-xdist's scheduling by scope, a scope being a file or a single test."""

    def _split_scope(self, nodeid: str) -> str:
        path = file_of(nodeid)
        return path if has_module_fixture(path) else nodeid


class TwoWorkers:
    """pytest-xdist's hook, registered only when xdist is loaded (`-p no:xdist` runs without
    it: pytest refuses a hook that no plugin declares)."""

    @staticmethod
    def pytest_xdist_make_scheduler(config: pytest.Config, log):
        if config.getoption("dist") != "load":  # `-n 2` alone; `--dist loadfile` and the like win
            return None
        config.option.loadscopereorder = False  # in the order below, not by number of tests
        return WholeFileWithModuleFixture(config, log)


def pytest_configure(config: pytest.Config) -> None:
    if config.pluginmanager.hasplugin("xdist"):
        config.pluginmanager.register(TwoWorkers())


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The longest file, then the other files with a module fixture, then the rest."""

    def rank(item: pytest.Item) -> int:
        path = file_of(item.nodeid)
        return 0 if path == LONGEST else 1 if has_module_fixture(path) else 2

    items.sort(key=rank)  # stable: each file keeps its order
