"""The real pipeline: `dvc repro`, `dvc exp run -S ...`, metrics and plots, in a scratch repo.

One module-scoped project on a subset of real MNIST (5,000 training and 2,000 test digits
of the shipped file, 3,000 of them trained on for 2 epochs), so the whole file runs in
about two minutes: the six stages through DVC itself, the first `dvc repro` killed with
SIGKILL during training and resumed, two queued experiments (one of them on another data
set: the real handwritten digits of tests/data/digits, tracked with `dvc add` as users
track their folders), a round trip through a DVC remote into a fresh clone, and
experiments in the workspace that switch data sets and back from DVC's run-cache. The
tests run in order, each on what the previous ones left.
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

import numpy as np
import pytest

from tests.conftest import REPO, files, saved_epoch, scratch_env, write_params, write_raw

SMALL = {"max_train_examples": 3000, "validation_size": 1000, "epochs": 2}
# The other data set, as `dvc exp run -S ...` sets it: 1,797 real 8x8 digits.
DIGITS = ["-S", "dataset=digits", "-S", "epochs=10"]
# The first images of the shipped data set: 1,000 of the training ones go to validation,
# 3,000 of the other 4,000 to training (max_train_examples), and every test one is tested.
TRAIN_IMAGES, TEST_IMAGES = 5000, 2000
COPIED = ["stages", "loopline", "dvc.yaml", ".gitignore", ".dvcignore", "vendor"]


def run(command: list[str], cwd: Path, env: dict, timeout: int = 300) -> str:
    """Run `command`, fail the test if it fails; return its standard output."""
    result = subprocess.run(
        command, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )
    assert result.returncode == 0, f"{' '.join(command)} failed:\n{result.stdout}\n{result.stderr}"
    return result.stdout


def make_project(root: Path, **params) -> dict:
    """A git + DVC repository at `root` with this project's code, DVC settings, `params`,
    a subset of the shipped MNIST (with its checksums, as prepare checks them) in git, and
    the digits folder tracked by DVC (`dvc add`)."""
    for name in COPIED:
        source, target = REPO / name, root / name
        if source.is_dir():
            shutil.copytree(source, target, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(source, target)
    with np.load(REPO / "data/raw/mnist/mnist.npz") as mnist:
        subset = {
            name: mnist[name][: TRAIN_IMAGES if name.endswith("train") else TEST_IMAGES]
            for name in ("x_train", "y_train", "x_test", "y_test")
        }
    write_raw(root / "data/raw/mnist", subset)
    shutil.copytree(REPO / "tests/data/digits", root / "data/raw/digits")
    write_params(root / "params.yaml", **params)
    env = scratch_env()
    run(["git", "init", "-q", "-b", "main"], root, env)
    run(["dvc", "init", "-q"], root, env)
    # The project's DVC settings: no analytics, no update check, the offline plots page.
    shutil.copy(REPO / ".dvc/config", root / ".dvc/config")
    run(["dvc", "add", "-q", "data/raw/digits"], root, env)  # as docs/own-data.md says
    run(["git", "add", "-A"], root, env)
    run(["git", "commit", "-qm", "project"], root, env)
    return env


def results(root: Path) -> dict[str, bytes]:
    """Every metrics file of `root` (none holds a wall-clock time), by path."""
    return files(root / "metrics")


def experiments(root: Path, env: dict) -> dict[str, dict]:
    """The rows of `dvc exp show --csv` by name: workspace, main and each experiment."""
    rows = csv.DictReader(run(["dvc", "exp", "show", "--csv"], root, env).splitlines())
    return {row["Experiment"] or row["rev"]: row for row in rows}


def last_epoch_saved(checkpoints: Path) -> int:
    """The last epoch saved in any run's folder under `checkpoints`, if any."""
    return max((saved_epoch(run) for run in checkpoints.glob("*")), default=0)


def repro_killed_after_epoch_one(root: Path, env: dict, log: Path) -> dict:
    """Start `dvc repro`, kill DVC and the stage with SIGKILL once train has saved the
    checkpoint of its first epoch; return its output and what it left."""
    checkpoints = root / ".checkpoints"
    with log.open("w") as output:
        process = subprocess.Popen(
            ["dvc", "repro"],
            cwd=root,
            env=env,
            start_new_session=True,  # its own process group: DVC and the stage, killed together
            stdout=output,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 240
        while last_epoch_saved(checkpoints) < 1 and time.monotonic() < deadline:
            assert process.poll() is None, f"dvc repro ended, not killed:\n{log.read_text()}"
            time.sleep(0.02)
    finally:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    return {
        "output": log.read_text(),
        "epoch": last_epoch_saved(checkpoints),
        "model": (root / "models/mnist").exists(),
    }


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """The project after its first `dvc repro`, killed during training, and the second,
    which resumed it; both committed, with a DVC remote (a directory) in git before any
    experiment, as docs/experiments.md says (`dvc exp push` sends an experiment's outputs
    to the remote its own commit names)."""
    root = tmp_path_factory.mktemp("project")
    env = make_project(root, **SMALL)
    storage = tmp_path_factory.mktemp("storage")
    run(["dvc", "remote", "add", "--default", "storage", str(storage)], root, env)
    killed = repro_killed_after_epoch_one(root, env, tmp_path_factory.mktemp("log") / "repro")
    output = run(["dvc", "repro"], root, env)
    run(["git", "add", "-A"], root, env)
    run(["git", "commit", "-qm", "repro"], root, env)
    return root, env, killed, output


def test_repro_runs_every_stage_and_writes_the_outputs(project):
    root, _, killed, output = project
    for stage in ("check_data", "validate", "prepare", "train"):
        assert f"Running stage '{stage}'" in killed["output"]
    for stage in ("train", "evaluate", "export"):
        assert f"Running stage '{stage}'" in output
    evaluation = json.loads((root / "metrics/eval.json").read_text())
    assert evaluation["accuracy"] > 0.85  # 3,000 training images, 2 epochs
    per_class = json.loads((root / "metrics/per_class.json").read_text())
    assert [row["class"] for row in per_class] == [str(digit) for digit in range(10)]
    assert sum(row["examples"] for row in per_class) == TEST_IMAGES
    training = json.loads((root / "metrics/train/metrics.json").read_text())
    assert training["validation"]["accuracy"] > 0.8 and training["step"] == 2
    losses = (root / "metrics/train/plots/metrics/validation/loss.tsv").open()
    history = list(csv.DictReader(losses, delimiter="\t"))
    assert [row["step"] for row in history] == ["1", "2"]
    assert len((root / "metrics/confusion.csv").read_text().splitlines()) == TEST_IMAGES + 1
    export = json.loads((root / "metrics/export.json").read_text())
    assert abs(export["tflite_accuracy"] - evaluation["accuracy"]) < 0.01  # int8 weights


def test_a_killed_repro_resumes_at_its_last_epoch(project):
    """SIGKILL during train's second epoch (DVC and the stage at once): the stages before it
    are recorded in dvc.lock, train's checkpoint of epoch 1 survives DVC deleting its
    outputs, and the next `dvc repro` resumes there, then removes the checkpoint. (That a
    resumed run ends with an uninterrupted run's weights to the bit is test_train's; that
    the same weights give the same SavedModel bytes, so the same hash in dvc.lock,
    test_export's.)"""
    root, _, killed, output = project
    assert killed["epoch"] >= 1 and not killed["model"], killed["output"]
    assert "Running stage 'prepare'" not in output  # finished before the kill
    assert re.search(r"train: resuming after epoch [12] ", output), output
    assert not any((root / ".checkpoints").iterdir()), "a finished run's checkpoints are removed"


def test_tf_serving_loader_gives_the_classes_evaluate_wrote(project, tmp_path):
    """`saved_model_cli run`, TensorFlow's own CLI, loads the SavedModel through the graph
    loader that TensorFlow Serving shares (not tf.saved_model.load, which evaluate and
    export use in their own fresh processes, without the training code)."""
    root, env, _, _ = project
    with np.load(root / "data/raw/mnist/mnist.npz") as mnist:
        np.save(tmp_path / "images.npy", mnist["x_test"][:100])
    command = [
        *(sys.executable, "-m", "tensorflow.python.tools.saved_model_cli", "run"),
        *("--dir", "models/mnist", "--tag_set", "serve", "--signature_def", "serving_default"),
        *("--inputs", f"images={tmp_path / 'images.npy'}"),
    ]
    output = run(command, root, env)
    printed = re.search(r"Result for output key classes:\s*\[([\d\s]+)\]", output)
    assert printed, output[-2000:]
    confusion = csv.DictReader((root / "metrics/confusion.csv").read_text().splitlines())
    evaluated = [int(row["predicted"]) for row in confusion][:100]
    assert [int(digit) for digit in printed[1].split()] == evaluated


def test_repro_right_after_is_a_no_op(project):
    root, env, _, _ = project
    output = run(["dvc", "repro"], root, env)
    assert "Running stage" not in output
    assert "up to date" in output
    assert run(["git", "status", "--porcelain"], root, env) == ""


def test_a_refused_value_keeps_every_output(project):
    root, env, _, _ = project
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
    # Recovery, as docs/troubleshooting.md says: the committed params back, and nothing re-runs.
    # (Not with `git checkout HEAD -- params.yaml`: after the refused run, git's index may hold the
    # committed hash with the new file's timestamp, and git then sees nothing to restore.)
    run(["sh", "-c", "git show HEAD:params.yaml > params.yaml"], root, env)
    assert "epochs: 2" in (root / "params.yaml").read_text()
    output = run(["dvc", "repro"], root, env)
    assert not re.search(r"Running stage '(prepare|train|evaluate|export)'", output), output
    assert run(["git", "status", "--porcelain"], root, env) == ""


def test_metrics_and_plots_commands(project):
    root, env, _, _ = project
    metrics = run(["dvc", "metrics", "show", "--json"], root, env)
    assert '"accuracy"' in metrics and "metrics/eval.json" in metrics
    run(["dvc", "plots", "show"], root, env)
    page = (root / "dvc_plots/index.html").read_text()
    assert "Loss per epoch" in page and "Test set confusion matrix" in page
    assert "inlined so\n         that the page renders with no network" in page  # vendor/vega
    # Images are copied next to the page, not drawn from data: it must be the stage's file.
    # (The page is the project's offline template, whose inlined Vega has an `<img src="$`.)
    assert re.findall(r'<img src="([^"$]+)">', page) == ["static/workspace_metrics_mistakes.png"]
    shown = (root / "dvc_plots/static/workspace_metrics_mistakes.png").read_bytes()
    assert shown == (root / "metrics/mistakes.png").read_bytes()
    assert shown.startswith(b"\x89PNG")


def follow(root: Path, env: dict, name: str, deadline: float) -> str:
    """The output of queued experiment `name`, once it has run (`dvc queue logs --follow`
    follows a running experiment to its end, in one process, where polling `dvc queue
    status` would start one a second; it refuses one that has not started yet)."""
    while True:
        result = subprocess.run(
            ["dvc", "queue", "logs", "--follow", name],
            cwd=root,
            env=env,
            capture_output=True,
            text=True,
            timeout=max(1, deadline - time.monotonic()),
        )
        if result.returncode == 0:
            return result.stdout
        # Between the end of one queued experiment and the start of the next, DVC may also
        # answer that the next one's run file does not exist yet.
        starting = "No such file or directory" in result.stderr and "exps/run" in result.stderr
        assert "has not been started" in result.stderr or starting, result.stderr
        assert time.monotonic() < deadline, f"the queue did not start {name} in time"
        time.sleep(1)


def test_queued_experiments_run_in_a_copy_of_what_git_and_dvc_track(project):
    root, env, _, _ = project
    # As in the sweeps of docs/experiments.md. The queue runs each experiment in a temporary copy of
    # the repository holding only what git and DVC track (a git-ignored input would be missing
    # there): one retrains MNIST reading the 1e-05 that DVC writes back for 1e-5, the other runs
    # every stage on the digits folder, which only DVC tracks.
    names = []
    for overrides in (["-S", "epochs=1", "-S", "learning_rate=1e-5"], DIGITS):
        output = run(["dvc", "exp", "run", "--queue", *overrides], root, env)
        names += re.findall(r"Queued experiment '([\w-]+)'", output)
    assert len(names) == 2, names
    # Its output not captured: the workers it starts keep whatever it writes to open until
    # they exit, idle a while after the queue is empty.
    start = ["dvc", "queue", "start"]
    subprocess.run(start, cwd=root, env=env, stdout=subprocess.DEVNULL, check=True, timeout=60)
    try:
        deadline = time.monotonic() + 360
        logs = [follow(root, env, name, deadline) for name in names]
        # The queue may record an experiment's end a moment after its log ends.
        status = run(["dvc", "queue", "status"], root, env)
        while "Running" in status and time.monotonic() < deadline:
            time.sleep(1)
            status = run(["dvc", "queue", "status"], root, env)
    finally:
        stop = ["dvc", "queue", "stop", "--kill"]
        subprocess.run(stop, cwd=root, env=env, capture_output=True, timeout=60)
    for name, log in zip(names, logs, strict=True):
        assert re.search(rf"{name}.*Success", status), status
        for stage in ("train", "evaluate", "export"):
            assert f"Running stage '{stage}'" in log, log
    assert "Running stage 'prepare'" not in logs[0], logs[0]
    assert "check_data: digits: 10 classes, 1,438 train, 359 test images (8x8 grey" in logs[1]
    rows = experiments(root, env)
    assert rows[names[0]]["learning_rate"] == "1e-05"
    assert rows[names[0]]["epochs"] == "1"
    assert float(rows[names[0]]["accuracy"]) < float(rows["main"]["accuracy"])  # 100x smaller
    assert rows[names[1]]["dataset"] == "digits"
    assert float(rows[names[1]]["accuracy"]) > 0.9  # 359 real test digits, 10 epochs


def test_push_then_pull_into_a_fresh_clone_leaves_nothing_to_run(project, tmp_path):
    """The remote round trip as docs/experiments.md shows it: `dvc push` and `dvc exp push`
    in one clone; `git clone`, `dvc pull` and `dvc exp pull` in another, which then has
    every output."""
    first, env, _, _ = project
    second, origin = tmp_path / "second", tmp_path / "origin.git"  # clone, git server
    assert run(["git", "status", "--porcelain"], first, env) == ""
    # The experiment that travels below: the queued one.
    rows = experiments(first, env)
    retrained = [name for name, row in rows.items() if row["learning_rate"] == "1e-05"]
    assert retrained, f"no experiment with learning_rate: 1e-05: {rows}"
    experiment = retrained[0]
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
    assert "learning_rate: 1e-05" in (second / "params.yaml").read_text()
    output = run(["dvc", "repro"], second, env)
    assert "Running stage" not in output, output
    accuracy = json.loads((second / "metrics/eval.json").read_text())["accuracy"]
    assert accuracy == pytest.approx(float(rows[experiment]["accuracy"]))
    assert results(second) != results(first)


def test_experiment_in_the_workspace_comes_from_the_run_cache(project):
    root, env, _, _ = project
    # As users type it. The queue trained these params already: DVC's run-cache restores
    # train's outputs (and evaluate's and export's) instead of running them again.
    output = run(["dvc", "exp", "run", "-S", "epochs=1", "-S", "learning_rate=1e-5"], root, env)
    assert "Stage 'train' is cached - skipping run" in output, output
    assert not re.search(r"Running stage '(prepare|train|evaluate|export)'", output), output
    assert "learning_rate: 1e-05" in (root / "params.yaml").read_text()
    assert "epochs: 1" in (root / "params.yaml").read_text()
    rows = experiments(root, env)
    accuracies = [row["accuracy"] for row in rows.values()]
    assert accuracies.count(rows["workspace"]["accuracy"]) == 3  # its own and the queue's


def test_switching_data_sets_and_back_comes_from_the_run_cache(project):
    """The digits experiment again, in the workspace: every stage is restored from the
    run-cache (the queue ran them), the outputs name the digits' classes and the model is
    models/digits; then back to MNIST with main's params, restored too, with main's
    results."""
    root, env, _, _ = project
    main_results = {
        path: run(["git", "show", f"HEAD:metrics/{path}"], root, env)
        for path in ("eval.json", "per_class.json", "confusion.csv")
    }
    output = run(["dvc", "exp", "run", *DIGITS, "-S", "learning_rate=0.001"], root, env)
    assert "Running stage" not in output, output
    for stage in ("check_data", "prepare", "train", "evaluate", "export"):
        assert f"Stage '{stage}' is cached - skipping run" in output, output
    assert (root / "models/digits/saved_model.pb").is_file()
    assert (root / "models/digits.tflite").is_file() and not (root / "models/mnist").exists()
    card = json.loads((root / "models/digits/assets.extra/loopline.json").read_text())
    assert card["classes"] == [str(digit) for digit in range(10)]
    assert card["input"]["shape"] == [None, 8, 8] and card["input"]["framing"] == "resize"
    summary = json.loads((root / "data/dataset.json").read_text())
    assert (summary["dataset"], summary["layout"], summary["shape"]) == ("digits", "images", [8, 8])
    rows = len((root / "metrics/confusion.csv").read_text().splitlines())
    assert rows == 359 + 1  # the digits' test split

    back = ["-S", "dataset=mnist", "-S", "epochs=2", "-S", "learning_rate=0.001"]
    output = run(["dvc", "exp", "run", *back], root, env)
    assert "Running stage" not in output, output
    assert "Stage 'train' is cached - skipping run" in output, output
    assert (root / "models/mnist/saved_model.pb").is_file() and not (
        root / "models/digits"
    ).exists()
    for path, committed in main_results.items():
        assert (root / "metrics" / path).read_text() == committed, path
