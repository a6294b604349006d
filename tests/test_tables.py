"""The tables people read in a terminal fit 120 columns: `dvc metrics show`, and the
experiments table of `make exps` (docs/experiments.md), with this project's dvc.yaml and params.

A scratch git + DVC repository holds dvc.yaml, params.yaml, the stages' sources and
stand-ins for the data and model (so that dvc.lock names every dependency, as a real run's
does), and metrics files of the shape the stages write: evaluate's from its own
compute_metrics, train's final losses and accuracies. Two experiments are saved with
`dvc exp save` after changing params, so nothing trains.
"""

import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import yaml

from stages.evaluate import compute_metrics
from tests.conftest import DEFAULT_PARAMS, REPO, scratch_env, write_params
from tests.test_end_to_end import run

WIDTH = 120
PIPELINE = yaml.safe_load((REPO / "dvc.yaml").read_text())


def exps_command() -> list[str]:
    """`make exps`'s command, as the Makefile spells it."""
    output = subprocess.run(
        ["make", "--dry-run", "--always-make", "exps"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    line = next(line for line in output.splitlines() if line.startswith("dvc exp show"))
    return re.findall(r"'[^']*'|\S+", line)


def metrics_files() -> list[str]:
    return [
        path
        for stage in PIPELINE["stages"].values()
        for entry in stage.get("metrics", [])
        for path in (entry if isinstance(entry, dict) else {entry: None})
    ]


def write_metrics(root: Path, seed: int) -> None:
    """Every metrics file dvc.yaml names, with values that differ from seed to seed."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 10, 100)
    evaluation = compute_metrics(labels, rng.normal(size=(100, 10)).astype(np.float32))
    training = {
        split: {"loss": float(rng.random()), "accuracy": float(rng.random())}
        for split in ("train", "validation")
    }
    for path in metrics_files():
        target = root / path
        target.parent.mkdir(parents=True, exist_ok=True)
        name = Path(path).name
        if name == "eval.json":
            document = evaluation
        elif name == "export.json":  # the keys stages/export.py writes
            document = {"tflite_accuracy": evaluation["accuracy"], "tflite_bytes": 2_800_000 + seed}
        elif name == "metrics.json":  # what loopline/progress.py leaves of DVCLive's summary
            document = {"validation": {"accuracy": training["validation"]["accuracy"]}, "step": 4}
        elif name == "train.json":
            document = training
        else:
            raise AssertionError(f"{path}: a new metrics file; give this test its keys")
        target.write_text(json.dumps(document))


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    root = tmp_path_factory.mktemp("tables")
    # COLUMNS: the terminal width rich lays the tables out for.
    env = scratch_env(COLUMNS=str(WIDTH))
    for package in ("stages", "loopline"):
        shutil.copytree(
            REPO / package, root / package, ignore=shutil.ignore_patterns("__pycache__")
        )
    for name in ("dvc.yaml", ".gitignore", ".dvcignore"):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(REPO / name, root / name)
    write_params(root / "params.yaml")
    # Stand-ins for every other dependency and output, so that dvc.lock lists them all.
    for stage in PIPELINE["stages"].values():
        plots = [path for entry in stage.get("plots", []) for path in entry]
        for path in [*stage.get("deps", []), *stage.get("outs", []), *plots]:
            path = path.replace("${dataset}", DEFAULT_PARAMS["dataset"])
            # A name with a suffix is a file; data/prepared and models/mnist are directories.
            target = root / path if Path(path).suffix else root / path / "stand-in"
            if not target.exists():
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_text(path)
    write_metrics(root, seed=0)
    run(["git", "init", "-q", "-b", "main"], root, env)
    run(["dvc", "init", "-q"], root, env)
    run(["dvc", "config", "core.analytics", "false"], root, env)
    run(["dvc", "commit", "--force", "--quiet"], root, env)
    run(["git", "add", "-A"], root, env)
    run(["git", "commit", "-qm", "baseline"], root, env)
    experiments = ({"learning_rate": 0.0005}, {"model": "convnet", "epochs": 15})
    for seed, changes in enumerate(experiments, start=1):
        write_params(root / "params.yaml", **changes)
        write_metrics(root, seed)
        run(["dvc", "commit", "--force", "--quiet"], root, env)
        run(["dvc", "exp", "save", "--quiet", "--name", f"experiment-{seed}"], root, env)
    run(["dvc", "exp", "apply", "experiment-1"], root, env)  # a workspace unlike main
    return root, env


def assert_fits(table: str) -> None:
    widest = max(table.splitlines(), key=len)
    assert len(widest) <= WIDTH, f"{len(widest)} columns:\n{table}"
    assert "…" not in table, f"columns squeezed to fit:\n{table}"


def test_metrics_show_fits(project):
    root, env = project
    table = run(["dvc", "metrics", "show"], root, env)
    assert "validation.accuracy" in table and "tflite_accuracy" in table
    assert_fits(table)


def test_make_exps_fits_and_shows_what_changed(project):
    root, env = project
    command = [part.strip("'") for part in exps_command()]
    table = run([*command, "--no-pager"], root, env)
    assert_fits(table)
    header = table.splitlines()[1].split()
    assert {"validation.accuracy", "learning_rate", "epochs", "model"} <= set(header)
    assert {"accuracy", "metrics/eval.json:accuracy"} & set(header), f"no test accuracy: {header}"
    for row in ("workspace", "main", "experiment-1", "experiment-2"):
        assert row in table
