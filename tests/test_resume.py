"""A `dvc repro train` killed with SIGKILL in the middle of training resumes at its last
epoch, and ends with the model and the files of an uninterrupted run.

In a project of its own (tests/test_end_to_end.py's helpers), so that pytest-xdist runs it
beside the module-scoped project of test_end_to_end.py. It reproduces up to train only:
what comes after train is the end-to-end test's.
"""

import os
import re
import signal
import subprocess
import time

from tests.test_end_to_end import SMALL, make_project, results, run


def test_killed_training_resumes_at_its_last_epoch(tmp_path):
    env = make_project(tmp_path, **{**SMALL, "epochs": 4})
    checkpoints = tmp_path / ".checkpoints"
    process = subprocess.Popen(
        ["dvc", "repro", "train"],
        cwd=tmp_path,
        env=env,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )

    def last_epoch_saved() -> int:
        """The epoch of the checkpoint the manager's state file points to, if any."""
        states = [path.read_text() for path in checkpoints.glob("*/checkpoint")]
        saved = [re.search(r'model_checkpoint_path: "ckpt-(\d+)"', state) for state in states]
        return max((int(match.group(1)) for match in saved if match), default=0)

    try:
        deadline = time.monotonic() + 240
        while last_epoch_saved() < 2 and time.monotonic() < deadline:
            assert process.poll() is None, "dvc repro ended before it could be killed"
            time.sleep(0.02)
    finally:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    assert last_epoch_saved() >= 2, "no checkpoint of epoch 2 in time"
    assert not (tmp_path / "models/mnist").exists()

    output = run(["dvc", "repro", "train"], tmp_path, env)
    assert re.search(r"train: resuming after epoch [2-4] ", output), output
    assert not any(checkpoints.iterdir()), "a finished run's checkpoints are removed"
    model = tmp_path / "models/mnist/saved_model.pb"
    resumed = {"model": model.read_bytes(), **results(tmp_path)}

    # The same, uninterrupted.
    output = run(["dvc", "repro", "--force", "--single-item", "train"], tmp_path, env)
    assert "Running stage 'train'" in output and "resuming" not in output
    assert {"model": model.read_bytes(), **results(tmp_path)} == resumed
