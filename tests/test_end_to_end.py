"""The real pipeline: `dvc repro`, `dvc exp run -S ...`, metrics and plots, in a scratch repo.

One module-scoped project on real MNIST, capped to a small training subset so the whole
file runs in about a minute and a half: the five stages through DVC itself, a retraining
killed with SIGKILL and resumed, an experiment, a queued sweep, and a round trip through a
DVC remote into a fresh clone. The tests run in order, each on what the previous ones left.
"""

import csv
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import REPO, scratch_env, write_params

SMALL = {"max_train_examples": 3000, "validation_size": 1000, "epochs": 2}
COPIED = [
    "stages",
    "dvc.yaml",
    "data/raw/mnist.npz",
    "data/raw/checksums.json",
    ".gitignore",
    ".dvcignore",
]


def run(command: list[str], cwd: Path, env: dict, timeout: int = 300) -> str:
    """Run `command`, fail the test if it fails; return its standard output."""
    result = subprocess.run(
        command, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )
    assert result.returncode == 0, f"{' '.join(command)} failed:\n{result.stdout}\n{result.stderr}"
    return result.stdout


def make_project(root: Path, **params) -> dict:
    """A git + DVC repository at `root` with this project's code, data and `params`."""
    for name in COPIED:
        source, target = REPO / name, root / name
        target.parent.mkdir(parents=True, exist_ok=True)
        if source.is_dir():
            shutil.copytree(source, target, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(source, target)
    write_params(root / "params.yaml", **params)
    env = scratch_env()
    run(["git", "init", "-q", "-b", "main"], root, env)
    run(["dvc", "init", "-q"], root, env)
    run(["dvc", "config", "core.analytics", "false"], root, env)
    run(["git", "add", "-A"], root, env)
    run(["git", "commit", "-qm", "project"], root, env)
    return env


def results(root: Path) -> dict:
    """Every metrics file of `root` (none holds a wall-clock time), by path."""
    metrics = root / "metrics"
    return {
        path.relative_to(metrics).as_posix(): path.read_bytes()
        for path in sorted(metrics.rglob("*"))
        if path.is_file()
    }


def experiments(root: Path, env: dict) -> list[dict]:
    """The rows of `dvc exp show --csv`: the workspace, the baseline and its experiments."""
    return list(csv.DictReader(run(["dvc", "exp", "show", "--csv"], root, env).splitlines()))


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    root = tmp_path_factory.mktemp("project")
    env = make_project(root, **SMALL)
    # A DVC remote (a directory) in git before any experiment, as README says: `dvc exp push`
    # sends an experiment's outputs to the remote its own commit names.
    storage = tmp_path_factory.mktemp("storage")
    run(["dvc", "remote", "add", "--default", "storage", str(storage)], root, env)
    output = run(["dvc", "repro"], root, env)
    run(["git", "add", "-A"], root, env)
    run(["git", "commit", "-qm", "repro"], root, env)
    return root, env, output


def test_repro_runs_every_stage_and_writes_the_outputs(project):
    root, _, output = project
    for stage in ("prepare", "train", "evaluate"):
        assert f"Running stage '{stage}'" in output
    evaluation = json.loads((root / "metrics/eval.json").read_text())
    assert evaluation["accuracy"] > 0.85  # 3,000 training images, 2 epochs
    per_class = json.loads((root / "metrics/per_class.json").read_text())
    assert [row["digit"] for row in per_class] == [str(digit) for digit in range(10)]
    assert sum(row["examples"] for row in per_class) == 10_000
    training = json.loads((root / "metrics/train/metrics.json").read_text())
    assert training["validation"]["accuracy"] > 0.8 and training["step"] == 2
    losses = (root / "metrics/train/plots/metrics/validation/loss.tsv").open()
    history = list(csv.DictReader(losses, delimiter="\t"))
    assert [row["step"] for row in history] == ["1", "2"]
    assert len((root / "metrics/confusion.csv").read_text().splitlines()) == 10_001
    assert not (root / ".checkpoints").exists() or not any((root / ".checkpoints").iterdir())


def test_saved_model_serves_with_plain_tensorflow(project):
    root, env, _ = project
    # A fresh interpreter in a directory without this project's code: TensorFlow only.
    script = """
import json, sys, numpy as np, tensorflow as tf
serve = tf.saved_model.load("model").signatures["serving_default"]
data = np.load("mnist.npz")
classes = np.concatenate([serve(images=tf.constant(data["x_test"][i:i + 1000]))["classes"]
                          for i in range(0, 10000, 1000)])
print(json.dumps(float(np.mean(classes == data["y_test"]))))
"""
    scratch = root.parent / "plain"
    scratch.mkdir()
    shutil.copytree(root / "models/mnist", scratch / "model")
    shutil.copy(root / "data/raw/mnist.npz", scratch / "mnist.npz")
    output = run([sys.executable, "-c", script], scratch, {**env, "PYTHONPATH": ""})
    accuracy = json.loads(output.strip().splitlines()[-1])
    reported = json.loads((root / "metrics/eval.json").read_text())["accuracy"]
    assert accuracy == pytest.approx(reported)


def test_repro_right_after_is_a_no_op(project):
    root, env, _ = project
    output = run(["dvc", "repro"], root, env)
    assert "Running stage" not in output
    assert "up to date" in output


def test_a_refused_value_keeps_every_output(project):
    root, env, _ = project
    model = root / "models/mnist/saved_model.pb"
    before = {"model": model.read_bytes(), **results(root)}
    result = subprocess.run(
        ["dvc", "exp", "run", "-S", "epochs=0"], cwd=root, env=env, capture_output=True, text=True
    )
    assert result.returncode != 0
    assert "error: params.yaml: epochs: got 0, expected an integer from 1 to 10,000" in (
        result.stdout + result.stderr
    )
    assert "Running stage 'train'" not in result.stdout  # validate stopped DVC first
    assert {"model": model.read_bytes(), **results(root)} == before
    # Recovery, as README says: the committed params back, and nothing re-runs. (Not with
    # `git checkout HEAD -- params.yaml`: after the refused run, git's index may hold the
    # committed hash with the new file's timestamp, and git then sees nothing to restore.)
    run(["sh", "-c", "git show HEAD:params.yaml > params.yaml"], root, env)
    assert "epochs: 2" in (root / "params.yaml").read_text()
    output = run(["dvc", "repro"], root, env)
    assert not re.search(r"Running stage '(prepare|train|evaluate|export)'", output), output
    assert run(["git", "status", "--porcelain"], root, env) == ""


def test_metrics_and_plots_commands(project):
    root, env, _ = project
    metrics = run(["dvc", "metrics", "show", "--json"], root, env)
    assert '"accuracy"' in metrics and "metrics/eval.json" in metrics
    run(["dvc", "plots", "show"], root, env)
    page = (root / "dvc_plots/index.html").read_text()
    assert "Loss per epoch" in page and "Test set confusion matrix" in page
    # Images are copied next to the page, not drawn from data: it must be the stage's file.
    assert page.count("<img ") == 1
    assert '<img src="static/workspace_metrics_mistakes.png">' in page
    shown = (root / "dvc_plots/static/workspace_metrics_mistakes.png").read_bytes()
    assert shown == (root / "metrics/mistakes.png").read_bytes()
    assert shown.startswith(b"\x89PNG")


def last_epoch_saved(checkpoints: Path) -> int:
    """The epoch of the checkpoint the manager's state file points to, if any."""
    states = [path.read_text() for path in checkpoints.glob("*/checkpoint")]
    saved = [re.search(r'model_checkpoint_path: "ckpt-(\d+)"', state) for state in states]
    return max((int(match.group(1)) for match in saved if match), default=0)


def test_a_killed_retraining_resumes_and_ends_with_the_same_model(project):
    """A retraining killed with SIGKILL after its first epoch resumes there when run again,
    and ends with the model and metrics of the uninterrupted first run: the same bytes, so
    the same hash in dvc.lock, and evaluate and export are up to date."""
    root, env, _ = project
    model, checkpoints = root / "models/mnist/saved_model.pb", root / ".checkpoints"
    before = {"model": model.read_bytes(), **results(root)}
    # --force: the params are the first run's, whose outputs DVC's run-cache would restore.
    command = ["dvc", "repro", "--force", "--single-item", "train"]
    process = subprocess.Popen(
        command,
        cwd=root,
        env=env,
        start_new_session=True,  # its own process group: DVC and the stage, killed together
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 240
        while last_epoch_saved(checkpoints) < 1 and time.monotonic() < deadline:
            assert process.poll() is None, "dvc repro ended before it could be killed"
            time.sleep(0.02)
    finally:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    assert last_epoch_saved(checkpoints) >= 1, "no checkpoint of epoch 1 in time"
    assert not model.exists()  # killed before the end (DVC deletes outputs before a run)

    output = run(command, root, env)
    assert re.search(r"train: resuming after epoch [12] ", output), output
    assert not any(checkpoints.iterdir()), "a finished run's checkpoints are removed"
    assert {"model": model.read_bytes(), **results(root)} == before
    assert "up to date" in run(["dvc", "status"], root, env)
    assert run(["git", "status", "--porcelain"], root, env) == ""


def test_experiment_reruns_train_and_evaluate_but_not_prepare(project):
    root, env, _ = project
    # As users type it, including the 1e-5 that DVC writes back as 1e-05.
    output = run(["dvc", "exp", "run", "-S", "epochs=1", "-S", "learning_rate=1e-5"], root, env)
    assert "Running stage 'prepare'" not in output
    assert "Running stage 'train'" in output and "Running stage 'evaluate'" in output
    rows = experiments(root, env)
    assert {row["epochs"] for row in rows} >= {"1", "2"}
    assert any(row["learning_rate"] in ("1e-05", "1e-5") for row in rows)
    # Back to the committed params: DVC's run-cache restores the outputs, nothing trains.
    output = run(["dvc", "exp", "run", "-S", "epochs=2", "-S", "learning_rate=0.001"], root, env)
    assert "Stage 'train' is cached - skipping run" in output


def test_queued_sweep_runs_two_experiments_in_parallel(project):
    root, env, _ = project
    # As in README, one queued experiment per value; the queue runs each in a copy of the
    # repository holding only what git and DVC track. A sweep of the export's quantization
    # re-runs the least (validate and export): train's model comes from the DVC cache.
    output = run(["dvc", "exp", "run", "--queue", "-S", "quantization=float,int8"], root, env)
    names = set(re.findall(r"Queued experiment '([\w-]+)'", output))
    assert len(names) == 2, output
    run(["dvc", "queue", "start", "-j", "2"], root, env)  # returns once its workers started
    try:
        # `dvc queue logs -f` follows a running experiment to its end (one process each,
        # where polling `dvc queue status` would start one a second); it refuses one that
        # has not started yet.
        deadline = time.monotonic() + 240
        logs = {}
        for name in sorted(names):
            while name not in logs:
                assert time.monotonic() < deadline, f"the queue did not finish in 240 s: {name}"
                follow = subprocess.run(
                    ["dvc", "queue", "logs", "--follow", name],
                    cwd=root,
                    env=env,
                    capture_output=True,
                    text=True,
                    timeout=max(1, deadline - time.monotonic()),
                )
                if follow.returncode == 0:
                    logs[name] = follow.stdout
                else:
                    assert "has not been started" in follow.stderr, follow.stderr
                    time.sleep(1)
        status = run(["dvc", "queue", "status"], root, env)
    finally:
        subprocess.run(
            ["dvc", "queue", "stop", "--kill"], cwd=root, env=env, capture_output=True, timeout=60
        )
    assert all(re.search(rf"{name}.*Success", status) for name in names), status
    for log in logs.values():
        assert "Running stage 'export'" in log and "Running stage 'train'" not in log, log
    rows = {row["Experiment"]: row for row in experiments(root, env)}
    assert {rows[name]["quantization"] for name in names} == {"float", "int8"}
    sizes = {rows[name]["quantization"]: int(rows[name]["tflite_bytes"]) for name in names}
    assert sizes["float"] > 3 * sizes["int8"]  # 4-byte weights against 1-byte ones
    assert all(0.85 < float(rows[name]["tflite_accuracy"]) <= 1 for name in names)


def test_push_then_pull_into_a_fresh_clone_leaves_nothing_to_run(project, tmp_path):
    """The remote round trip as README shows it: `dvc push` and `dvc exp push` in one clone;
    `git clone`, `dvc pull` and `dvc exp pull` in another, which then has every output."""
    first, env, _ = project
    second, origin = tmp_path / "second", tmp_path / "origin.git"  # clone, git server
    assert run(["git", "status", "--porcelain"], first, env) == ""
    # The experiment that travels below: the queued sweep's `float` one (it ran just before).
    rows = experiments(first, env)
    floats = [row["Experiment"] for row in rows if row["quantization"] == "float"]
    assert len(floats) == 1, f"not one experiment with quantization: float: {rows}"
    experiment = floats[0]
    run(["git", "init", "-q", "--bare", "-b", "main", str(origin)], tmp_path, env)
    run(["git", "remote", "add", "origin", str(origin)], first, env)
    run(["git", "push", "-q", "origin", "main"], first, env)
    run(["dvc", "push"], first, env)

    run(["git", "clone", "-q", str(origin), str(second)], tmp_path, env)
    assert not (second / "models/mnist").exists()
    run(["dvc", "pull"], second, env)
    assert (second / "models/mnist/saved_model.pb").is_file()
    output = run(["dvc", "repro"], second, env)
    assert "Running stage" not in output and "up to date" in output, output
    assert results(second) == results(first)

    # An experiment travels the same way, with its outputs: applying it runs nothing.
    run(["dvc", "exp", "push", "origin", experiment], first, env)
    run(["dvc", "exp", "pull", "origin", experiment], second, env)
    assert experiment in run(["dvc", "exp", "list"], second, env)
    run(["dvc", "exp", "apply", experiment], second, env)
    assert "quantization: float" in (second / "params.yaml").read_text()
    output = run(["dvc", "repro"], second, env)
    assert "Running stage" not in output, output
    assert (second / "models/mnist.tflite").stat().st_size > 3 * (
        first / "models/mnist.tflite"
    ).stat().st_size  # float weights, against the committed dynamic-range (int8) ones
