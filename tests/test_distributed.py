"""tf.distribute on this CPU: `mirrored` over two logical devices, and two local workers.

A strategy is fixed when TensorFlow initialises its devices, so each run is a fresh
`python -m stages.train` process, as dvc.yaml runs it. Every process has a time limit,
and when one fails the others are killed: a worker whose peer is gone waits for ever.
"""

from __future__ import annotations

import csv
import json
import os
import signal
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from stages import records
from stages import train as train_stage
from stages.model import export_saved_model
from tests.conftest import DEFAULT_PARAMS, REPO, synthetic_arrays, write_params

# 200 training examples in batches of 32: 4 steps per epoch (a group of 4), 12 in all. Few
# steps, as every one exchanges the tutorial model's 11 MB of gradients between the
# processes; a learning rate small enough that on the synthetic digits the loss falls over
# all three epochs instead of reaching zero in the first, so the trajectories are compared
# all along.
SMALL = {
    "epochs": 3,
    "batch_size": 32,
    "learning_rate": 3e-4,
    "steps_per_execution": 4,
    "eval_batch_size": 32,
    "seed": 3,
}
TIME_LIMIT = 120  # seconds, for each group of processes; they take 5-15 s here
# `none` and `mirrored` add the same numbers in a different order (two half-batch
# gradients summed across replicas): 1.2e-7 relative apart here after 3 epochs (12 steps);
# the gap grows with the steps (1e-3 after 250 steps of real MNIST).
LOSS_TOLERANCE = 1e-4


def free_ports(count: int) -> list[int]:
    """Loopback ports nobody listens on now (the OS picks them; released before use)."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def environment(**variables: str) -> dict:
    env = {name: value for name, value in os.environ.items() if name != "TF_CONFIG"}
    return {**env, "PYTHONPATH": str(REPO), **variables}


def train_command(data: Path, out: Path, params: Path) -> list[str]:
    """The train stage's command line, as in dvc.yaml, writing under `out`."""
    return [
        sys.executable,
        "-m",
        "stages.train",
        str(data),
        str(out / "model"),
        str(out / "metrics"),
        "--params",
        str(params),
        "--checkpoints",
        str(out / "checkpoints"),
    ]


@contextmanager
def running(commands: list[tuple[list[str], dict]], cwd: Path, logs: list[Path]):
    """Start `commands` (command, environment) at once, each writing to its log; yield the
    processes, and kill whichever is still running on the way out."""
    processes = []
    try:
        for (command, env), log in zip(commands, logs, strict=True):
            with log.open("w") as file:
                processes.append(
                    subprocess.Popen(
                        command,
                        cwd=cwd,
                        env=env,
                        stdout=file,
                        stderr=subprocess.STDOUT,
                        start_new_session=True,  # its own process group, killed whole
                    )
                )
        yield processes
    finally:
        for process in processes:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def run_together(
    commands: list[tuple[list[str], dict]], cwd: Path, time_limit: float = TIME_LIMIT
) -> list[str]:
    """Run `commands` (command, environment) at once; return each one's output.

    Fails the test as soon as one exits with an error, or when `time_limit` runs out,
    after killing every process still running.
    """
    logs = [cwd / f"process-{index}.log" for index in range(len(commands))]
    with running(commands, cwd, logs) as processes:
        deadline = time.monotonic() + time_limit
        while time.monotonic() < deadline:
            codes = [process.poll() for process in processes]
            if None not in codes or any(code not in (None, 0) for code in codes):
                break
            time.sleep(0.1)
    outputs = [log.read_text() for log in logs]
    codes = [process.returncode for process in processes]
    if codes != [0] * len(commands):
        report = "\n".join(f"--- process {i} ---\n{out[-3000:]}" for i, out in enumerate(outputs))
        pytest.fail(f"exit codes {codes} (negative: killed; limit {time_limit} s)\n{report}")
    return outputs


def read_history(live: Path) -> dict[str, np.ndarray]:
    """The per-epoch metrics DVCLive wrote under `live`, by name (train/loss, ...)."""
    history = {}
    for path in sorted((live / "plots/metrics").rglob("*.tsv")):
        rows = list(csv.DictReader(path.open(), delimiter="\t"))
        name = path.relative_to(live / "plots/metrics").with_suffix("").as_posix()
        history["epoch"] = np.array([int(row["step"]) for row in rows])
        history[name] = np.array([float(row[path.stem]) for row in rows])
    return history


def classify(model: Path, images: np.ndarray) -> dict[str, np.ndarray]:
    signature = tf.saved_model.load(str(model)).signatures["serving_default"]
    return {name: value.numpy() for name, value in signature(images=tf.constant(images)).items()}


def test_mirrored_follows_the_single_device_trajectory(prepared, tmp_path):
    # XLA cannot run replicas on CPU devices, so `mirrored` turns it off: compare it with
    # `none` without XLA, the same computation on one device (here, in this process).
    params = write_params(tmp_path / "mirrored.yaml", **SMALL, distribute="mirrored")
    command = train_command(prepared, tmp_path / "mirrored", params)
    (output,) = run_together([(command, environment())], tmp_path)
    assert "jit_compile off: XLA cannot run 2 replicas on CPU" in output
    none = {**DEFAULT_PARAMS, **SMALL, "distribute": "none", "jit_compile": False}
    run = train_stage.train(prepared, none, tmp_path / "checkpoints", tmp_path / "none/metrics")
    export_saved_model(run.trainer.model, tmp_path / "none/model")

    runs = ("none", "mirrored")
    single, mirrored = (read_history(tmp_path / name / "metrics") for name in runs)
    assert list(mirrored["epoch"]) == [1, 2, 3]
    assert single["train/loss"][-1] < 0.5 * single["train/loss"][0]  # a real trajectory
    for key in ("train/loss", "validation/loss"):
        np.testing.assert_allclose(mirrored[key], single[key], rtol=LOSS_TOLERANCE)
    for key in ("train/accuracy", "validation/accuracy"):  # at most one example apart
        np.testing.assert_allclose(mirrored[key], single[key], atol=1 / 40)

    # The same SavedModel interface, and nearly the same predictions.
    images = synthetic_arrays(test=20)["x_test"][:20]
    signatures = [
        tf.saved_model.load(str(tmp_path / name / "model")).signatures["serving_default"]
        for name in runs
    ]
    assert signatures[0].structured_input_signature == signatures[1].structured_input_signature
    assert signatures[0].structured_outputs.keys() == signatures[1].structured_outputs.keys()
    expected, got = (classify(tmp_path / name / "model", images) for name in runs)
    np.testing.assert_allclose(got["probabilities"], expected["probabilities"], atol=1e-3)
    np.testing.assert_array_equal(got["classes"], expected["classes"])


def worker_commands(prepared: Path, out: Path, params: Path, workers: int = 2) -> list:
    """The same command for each worker; TF_CONFIG on free loopback ports tells them apart."""
    cluster = {"worker": [f"127.0.0.1:{port}" for port in free_ports(workers)]}
    return [
        (
            train_command(prepared, out, params),
            environment(
                TF_CONFIG=json.dumps({"cluster": cluster, "task": {"type": "worker", "index": i}})
            ),
        )
        for i in range(workers)
    ]


def test_two_workers_train_one_model(prepared, tmp_path):
    params = write_params(tmp_path / "params.yaml", **SMALL, distribute="multi_worker")
    out = tmp_path / "run"
    outputs = run_together(worker_commands(prepared, out, params), tmp_path)

    # Each worker decoded only its own training shards (0 and 2, 1 and 3 of four).
    shares = [
        int(output.split(f"train: worker {index} of 2: ")[1].split()[0])
        for index, output in enumerate(outputs)
    ]
    assert shares == [128, 72] and sum(shares) == 200
    # They trained one model: the metrics they print are the same (summed over both).
    epochs = [
        [line.split("  ")[:-2] for line in output.splitlines() if line.startswith("epoch ")]
        for output in outputs
    ]
    assert len(epochs[0]) == 3 and epochs[0] == epochs[1]

    # One SavedModel, written by the chief only; nothing left of the others' copies.
    files = sorted(path.name for path in out.iterdir())
    assert files == ["checkpoints", "metrics", "model"]
    assert not any((out / "checkpoints").iterdir())  # the chief's and the others' epochs
    metrics = json.loads((out / "metrics/metrics.json").read_text())  # the chief's only
    assert metrics["step"] == 3
    assert metrics["validation"]["accuracy"] > 0.5  # 10 classes: chance is 0.1
    # The workers split the validation batches and summed their metrics: the SavedModel,
    # on the whole validation split with NumPy, gives the same numbers.
    images, labels = records.load_split(prepared, "validation")
    probabilities = classify(out / "model", images)["probabilities"]
    loss = -np.log(probabilities[np.arange(len(labels)), labels]).mean()
    losses = (out / "metrics/plots/metrics/validation/loss.tsv").read_text().splitlines()
    assert float(losses[-1].split("\t")[-1]) == pytest.approx(loss, rel=1e-4)
    accuracy = np.mean(probabilities.argmax(axis=1) == labels)
    assert metrics["validation"]["accuracy"] == pytest.approx(accuracy)


def test_a_worker_killed_mid_run_fails_the_other_instead_of_hanging_it(prepared, tmp_path):
    # Enough epochs that the run is still going when worker 1 dies after its first.
    params = write_params(
        tmp_path / "params.yaml", **{**SMALL, "epochs": 500}, distribute="multi_worker"
    )
    commands = worker_commands(prepared, tmp_path / "run", params)
    logs = [tmp_path / f"worker-{index}.log" for index in range(2)]
    with running(commands, tmp_path, logs) as processes:
        deadline = time.monotonic() + TIME_LIMIT
        while "epoch 1/500 " not in logs[1].read_text() and time.monotonic() < deadline:
            assert processes[0].poll() is None and processes[1].poll() is None
            time.sleep(0.2)
        os.killpg(processes[1].pid, signal.SIGKILL)
        killed = time.monotonic()
        # Worker 0 is in a collective step with a peer that is gone: it must fail, not wait.
        code = processes[0].wait(timeout=TIME_LIMIT)
        waited = time.monotonic() - killed
    assert code != 0, logs[0].read_text()[-2000:]
    assert waited < 60
    assert not (tmp_path / "run" / "model").exists()  # nothing half-written


def test_workers_share_the_training_files_between_them(prepared):
    whole_images, whole_labels = records.load_split(prepared, "train")
    shares = [records.load_split(prepared, "train", part, 3) for part in range(3)]
    # Files 0 and 3, then 1, then 2 (64 examples each, 8 in the last): all, once each.
    assert [len(labels) for _, labels in shares] == [72, 64, 64]
    images = np.concatenate([share_images for share_images, _ in shares])
    assert sorted(map(bytes, images)) == sorted(map(bytes, whole_images))
    labels = np.concatenate([share_labels for _, share_labels in shares])
    assert sorted(labels) == sorted(whole_labels)


def test_more_workers_than_files_is_refused(prepared):
    with pytest.raises(ValueError, match=r"1 validation shard\(s\) for 2 workers"):
        records.load_split(prepared, "validation", 1, 2)
