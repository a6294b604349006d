"""A DVC remote in a local directory: push from one clone, pull into a fresh one.

As README shows it: `dvc push` / `dvc exp push` in one clone; `git clone`, `dvc pull`,
`dvc exp pull` in another, which then has every output and nothing to re-run.
"""

import json

from tests.conftest import synthetic_arrays, write_raw
from tests.test_end_to_end import make_project, run

TINY = {
    "validation_size": 40,
    "examples_per_shard": 64,
    "epochs": 2,
    "batch_size": 16,
    "steps_per_execution": 4,
    "eval_batch_size": 32,
}


def test_push_then_pull_into_a_fresh_clone_leaves_nothing_to_run(tmp_path):
    first, second = tmp_path / "first", tmp_path / "second"
    origin, storage = tmp_path / "origin.git", tmp_path / "storage"  # git server, DVC remote
    env = make_project(first, **TINY)
    write_raw(first / "data/raw", synthetic_arrays())  # small data: the test is about DVC
    run(["dvc", "remote", "add", "--default", "storage", str(storage)], first, env)
    run(["dvc", "repro"], first, env)
    run(["git", "add", "-A"], first, env)
    run(["git", "commit", "-qm", "results"], first, env)
    run(["git", "init", "-q", "--bare", "-b", "main", str(origin)], tmp_path, env)
    run(["git", "remote", "add", "origin", str(origin)], first, env)
    run(["git", "push", "-q", "origin", "main"], first, env)
    run(["dvc", "push"], first, env)
    assert any(storage.rglob("*")), "dvc push stored nothing"

    run(["git", "clone", "-q", str(origin), str(second)], tmp_path, env)
    assert not (second / "models/mnist").exists()
    run(["dvc", "pull"], second, env)
    assert (second / "models/mnist/saved_model.pb").is_file()
    assert "up to date" in run(["dvc", "status"], second, env)
    output = run(["dvc", "repro"], second, env)
    assert "Running stage" not in output, output
    metrics = ["dvc", "metrics", "show", "--json"]
    assert json.loads(run(metrics, second, env)) == json.loads(run(metrics, first, env))

    # An experiment travels the same way, with its outputs: applying it trains nothing.
    run(["dvc", "exp", "run", "--name", "one-epoch", "-S", "epochs=1"], first, env)
    run(["dvc", "exp", "push", "origin", "one-epoch"], first, env)
    run(["dvc", "exp", "pull", "origin", "one-epoch"], second, env)
    assert "one-epoch" in run(["dvc", "exp", "list"], second, env)
    run(["dvc", "exp", "apply", "one-epoch"], second, env)
    assert "epochs: 1" in (second / "params.yaml").read_text()
    output = run(["dvc", "repro"], second, env)
    assert "Running stage" not in output, output
    assert json.loads(run(metrics, second, env)) == json.loads(run(metrics, first, env))
