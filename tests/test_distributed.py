"""tf.distribute on this CPU: `mirrored` over two logical devices, and two local workers
(one killed mid-run, then both restarted).

A strategy is fixed when TensorFlow initialises its devices, so each run is a fresh
`python -m stages.train` process, as dvc.yaml runs it. Every process has a time limit,
and when one fails the others are killed: at start-up, a worker waits for ever for a peer
that never comes.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
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

from loopline import distribute, records
from loopline.data import training_shares
from loopline.model import export_saved_model
from stages import train as train_stage
from tests.conftest import (
    DEFAULT_PARAMS,
    REPO,
    prepare_synthetic,
    saved_epoch,
    synthetic_arrays,
    write_params,
    write_raw,
)

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
TIME_LIMIT = 120  # seconds, for each group of processes; they take 5-15 s on 2 cores
# `none` and `mirrored` add the same numbers in a different order (two half-batch
# gradients summed across replicas): about 1e-7 relative apart after 3 epochs (12 steps);
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


def run_checkpoints(out: Path) -> Path:
    """The chief's checkpoint folder of the run writing under `out` (worker 1's inside it)."""
    return next((out / "checkpoints").glob("*"), out / "checkpoints" / "none-yet")


def saved_epochs(out: Path) -> list[int]:
    """Each worker's last saved epoch in the run writing under `out`."""
    chief = run_checkpoints(out)
    return [saved_epoch(chief), saved_epoch(chief / "worker-1")]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """Two `multi_worker` workers streaming their training shards (max_in_memory_mb 0)
    through a death and a restart, SMALL's 3 epochs:

    1. Both start. Once both have saved epoch 2, worker 1 is killed (SIGKILL); worker 0,
       waiting for it in epoch 3, must fail.
    2. Worker 1's checkpoints are put back as they were after its epoch 1: as if it had
       died in the instant between worker 0's save of epoch 2 and its own.
    3. Both start again, and must agree to resume after epoch 1 and finish the run.
    """
    root = tmp_path_factory.mktemp("cluster")
    raw = write_raw(root / "raw", synthetic_arrays())
    prepared = prepare_synthetic(raw, root / "prepared")
    params = write_params(
        root / "params.yaml", **SMALL, distribute="multi_worker", max_in_memory_mb=0
    )
    out = root / "run"
    logs = [root / f"first-{index}.log" for index in range(2)]
    behind = root / "worker-1-after-epoch-1"
    with running(worker_commands(prepared, out, params), root, logs) as processes:
        deadline = time.monotonic() + TIME_LIMIT
        while min(saved_epochs(out)) < 2:
            assert all(process.poll() is None for process in processes), logs[0].read_text()
            assert time.monotonic() < deadline, f"no epoch 2 in {TIME_LIMIT} s"
            if saved_epochs(out)[1] == 1 and not behind.exists():
                shutil.copytree(run_checkpoints(out) / "worker-1", behind)
            time.sleep(0.01)
        assert behind.exists(), "worker 1's epoch 1 was not seen (polled every 10 ms)"
        os.killpg(processes[1].pid, signal.SIGKILL)
        killed = time.monotonic()
        code = processes[0].wait(timeout=TIME_LIMIT)
        waited = time.monotonic() - killed
    first = [log.read_text() for log in logs]
    epochs_saved, model_after_death = saved_epochs(out), (out / "model").exists()
    shutil.rmtree(run_checkpoints(out) / "worker-1")
    shutil.copytree(behind, run_checkpoints(out) / "worker-1")
    second = run_together(worker_commands(prepared, out, params), root)
    return {
        "prepared": prepared,
        "out": out,
        "code": code,
        "waited": waited,
        "epochs_saved": epochs_saved,
        "model_after_death": model_after_death,
        "first": first,
        "second": second,
    }


def epoch_lines(output: str) -> list[str]:
    """The epoch lines a worker printed, without their timings."""
    return [
        "  ".join(line.split("  ")[:-2])
        for line in output.splitlines()
        if line.startswith("epoch ")
    ]


def test_a_worker_killed_mid_run_fails_the_other_in_one_line(cluster):
    # Worker 0 was in a collective step with a peer that is gone: it must fail, not wait,
    # and say so in one line (TensorFlow's report is a hundred).
    assert cluster["code"] == 1, cluster["first"][0][-3000:]
    assert cluster["waited"] < 60
    lines = cluster["first"][0].splitlines()
    assert lines[-1] == (
        "error: train: lost worker 1 (crashed, killed or cut off); every worker keeps its "
        "last finished epoch: start them all again to resume"
    ), "\n".join(lines[-20:])
    assert "Traceback" not in cluster["first"][0]
    # Its checkpoint of epoch 2 is kept, and no model is written.
    assert cluster["epochs_saved"] == [2, 2]
    assert not cluster["model_after_death"]


def test_a_restarted_cluster_resumes_after_the_last_epoch_every_worker_saved(cluster):
    for output in cluster["second"]:
        assert "the workers' last saved epochs differ (1 and 2): all start after epoch 1" in output
        assert "train: resuming after epoch 1 " in output
    # Resumed, epoch 2 is the same as before the death (the same weights, optimizer and
    # batches), and both workers train the same epochs.
    first, second = (epoch_lines(output) for output in (cluster["first"][0], cluster["second"][0]))
    assert [line.split()[1] for line in first] == ["1/3", "2/3"]
    assert second[0] == first[1]
    assert [line.split()[1] for line in second] == ["2/3", "3/3"]
    assert epoch_lines(cluster["second"][1]) == second


def test_two_workers_train_one_model(cluster):
    outputs, out, prepared = cluster["second"], cluster["out"], cluster["prepared"]
    # Each worker streamed only its own training shards (0 and 2, 1 and 3 of four).
    for index, output in enumerate(outputs):
        assert "200 training images (0.2 MB) streamed from their shards" in output
        shards = "00000, 00002" if index == 0 else "00001, 00003"
        assert f"train: worker {index} of 2: streams its training shards {shards}\n" in output

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
    assert len(losses) == 1 + 3  # the restored epoch too
    assert float(losses[-1].split("\t")[-1]) == pytest.approx(loss, rel=1e-4)
    accuracy = np.mean(probabilities.argmax(axis=1) == labels)
    assert metrics["validation"]["accuracy"] == pytest.approx(accuracy)


def test_workers_share_the_training_files_between_them(prepared):
    whole_images, whole_labels = records.load_split(prepared, "train")
    shares = [records.load_split(prepared, "train", part, 3) for part in range(3)]
    # Files 0 and 3, then 1, then 2 (64 examples each, 8 in the last): all, once each.
    assert [len(labels) for _, labels in shares] == [72, 64, 64]
    images = np.concatenate([share_images for share_images, _ in shares])
    assert sorted(map(bytes, images)) == sorted(map(bytes, whole_images))
    labels = np.concatenate([share_labels for _, share_labels in shares])
    assert sorted(labels) == sorted(whole_labels)


def test_a_streaming_worker_reads_only_its_training_files(prepared):
    shares = training_shares(prepared, max_in_memory_mb=0)
    for part in range(3):
        expected, expected_labels = records.load_split(prepared, "train", part, 3)
        # Batches of 1 drop nothing: the whole share, once, in a seeded order.
        batches = list(shares(part, 3, 1, 7))
        images = np.concatenate([images for images, _ in batches])
        assert sorted(map(bytes, images)) == sorted(map(bytes, expected))
        assert sorted(np.concatenate([labels for _, labels in batches])) == sorted(expected_labels)


def test_more_workers_than_files_is_refused(prepared):
    with pytest.raises(ValueError, match=r"1 validation shard\(s\) for 2 workers"):
        records.load_split(prepared, "validation", 1, 2)


@pytest.mark.parametrize(
    ("message", "expected"),
    [
        (  # TF 2.21's own words, seen by a worker whose peer died (test_a_restarted_...)
            "{{function_node __wrapped__CollectiveReduceV2_Nordering_token_1_device_/job:worker/"
            "replica:0/task:1/device:CPU:0}} Collective ops is aborted by: Socket closed\n"
            "Additional GRPC error information from remote target /job:worker/replica:0/task:0 "
            "while calling /tensorflow.WorkerService/RecvBuf:\n:UNKNOWN:Error received from peer"
            '  {grpc_message:"Socket closed", grpc_status:14}\nThe error could be from a '
            "previous operation. Restart your program to reset. [Op:CollectiveReduceV2] name: ",
            "worker 0",
        ),
        ("Connection reset by peer", "a peer"),
    ],
)
def test_a_lost_peer_is_named_when_tensorflow_names_it(message, expected):
    # The coordination service's shape ("unhealthy (stopped sending heartbeats)") is the
    # cluster fixture's, for real.
    error = tf.errors.UnavailableError(None, None, message)
    assert distribute.lost_peer(error).startswith(f"train: lost {expected} (crashed, ")
