"""Shared fixtures: tiny synthetic MNIST-format data and params files in tmp_path."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from benchmarks.pipeline_timings import environment
from stages.prepare import prepare

REPO = Path(__file__).resolve().parents[1]
DEFAULT_PARAMS = yaml.safe_load((REPO / "params.yaml").read_text())


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


def write_raw(directory: Path, arrays: dict[str, np.ndarray]) -> tuple[Path, Path]:
    """An .npz of `arrays` and its checksums file, as prepare expects them."""
    directory.mkdir(parents=True, exist_ok=True)
    raw, checksums = directory / "mnist.npz", directory / "checksums.json"
    np.savez_compressed(raw, **arrays)
    sums = {name: hashlib.sha256(array.tobytes()).hexdigest() for name, array in arrays.items()}
    checksums.write_text(json.dumps(sums))
    return raw, checksums


@pytest.fixture
def raw_data(tmp_path: Path) -> tuple[Path, Path, dict[str, np.ndarray]]:
    arrays = synthetic_arrays()
    raw, checksums = write_raw(tmp_path / "raw", arrays)
    return raw, checksums, arrays


@pytest.fixture
def prepared(tmp_path: Path, raw_data) -> Path:
    """Prepared TFRecords of the synthetic data: 200 train, 40 validation, 60 test."""
    raw, checksums, _ = raw_data
    params = {
        "seed": 0,
        "validation_size": 40,
        "max_train_examples": None,
        "examples_per_shard": 64,
    }
    out = tmp_path / "prepared"
    prepare(raw, checksums, out, params)
    return out
