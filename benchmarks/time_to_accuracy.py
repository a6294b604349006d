"""time_to_accuracy: `make best` against the tutorial's program, in wall time and accuracy.

In one invocation, taking turns --repeats times: (1) the reference tutorial's program,
5 epochs, as a fresh process (benchmarks/tutorial.py): its wall time and test accuracy;
(2) `make best`'s experiment, the whole `dvc exp run` with the Makefile's overrides, in a
fresh clone of this repository's HEAD whose `prepare` already ran (a seed other than
params.yaml's re-runs prepare too, and its seconds count); (3) with --default-repro, the
default `dvc repro` on another fresh clone. Repeat i runs the experiment with seed
SEEDS[i], so three repeats give the three-seed mean. Prints and writes
benchmarks/results/<machine id>/time_to_accuracy.json (benchmarks/machine.py): every run,
the medians and the ratio of the experiment's time to the tutorial's.
Run    python -m benchmarks.time_to_accuracy [--repeats 3] [--default-repro]
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from benchmarks import machine
from benchmarks.pipeline_timings import (
    REPO,
    environment,
    repro_on_a_fresh_clone,
    timed_run,
    tutorial,
)

SEEDS = (42, 43, 44)


def best_overrides() -> list[str]:
    """`make best`'s `-S key=value` arguments, read from the Makefile (their one source)."""
    printed = subprocess.run(
        ["make", "--no-print-directory", "-s", "print-best"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    )
    return shlex.split(printed.stdout)


def best_experiment(clone: Path, env: dict, overrides: list[str], seed: int) -> dict:
    """One whole `dvc exp run` of the best recipe with `seed`: seconds and test accuracy."""
    name = f"best-seed-{seed}"
    command = ["dvc", "exp", "run", "-n", name, *overrides, "-S", f"seed={seed}"]
    seconds, stages, _ = timed_run(command, clone, env)
    evaluation = json.loads((clone / "metrics/eval.json").read_text())
    return {
        "seed": seed,
        "seconds": seconds,
        "stage_seconds": stages,
        "test_accuracy": evaluation["accuracy"],
    }


def summary(runs: list[dict]) -> dict:
    accuracies = [run["test_accuracy"] for run in runs]
    return {
        "median_seconds": statistics.median(run["seconds"] for run in runs),
        "mean_test_accuracy": statistics.mean(accuracies),
        "min_test_accuracy": min(accuracies),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--repeats",
        type=int,
        default=3,
        help=f"turns of each, seeds {SEEDS} in order (default: %(default)s)",
    )
    parser.add_argument(
        "--default-repro",
        action="store_true",
        help="also time the default `dvc repro` on a fresh clone in every turn",
    )
    parser.add_argument(
        "--output",
        type=Path,
        help="where to write the results as JSON (default: "
        "benchmarks/results/<machine id>/time_to_accuracy.json)",
    )
    arguments = parser.parse_args()
    if not 1 <= arguments.repeats <= len(SEEDS):
        parser.error(f"--repeats must be from 1 to {len(SEEDS)}")
    this_machine = machine.describe()
    env = environment()
    overrides = best_overrides()
    tutorials, experiments, repros = [], [], []
    with tempfile.TemporaryDirectory() as scratch:
        clone = Path(scratch) / "loopline"
        subprocess.run(["git", "clone", "-q", str(REPO), str(clone)], check=True)
        timed_run(["dvc", "repro", "prepare"], clone, env)  # reused, as `make best` finds it
        for repeat, seed in enumerate(SEEDS[: arguments.repeats]):
            tutorials.append(tutorial(env))
            experiments.append(best_experiment(clone, env, overrides, seed))
            if arguments.default_repro:
                repros.append(repro_on_a_fresh_clone(env))
            print(
                f"repeat {repeat + 1}/{arguments.repeats}: tutorial {tutorials[-1]['seconds']} s "
                f"({tutorials[-1]['test_accuracy']}), best seed {seed} "
                f"{experiments[-1]['seconds']} s ({experiments[-1]['test_accuracy']:.4f})"
                + (f", default dvc repro {repros[-1]['seconds']} s" if repros else ""),
                file=sys.stderr,
                flush=True,
            )
    tutorial_summary, best_summary = summary(tutorials), summary(experiments)
    tutorial_seconds = tutorial_summary["median_seconds"]
    results = {
        "best_overrides": overrides,
        "tutorial": tutorial_summary,
        "best": best_summary,
        "best_over_tutorial": round(best_summary["median_seconds"] / tutorial_seconds, 2),
        "runs": {"tutorial": tutorials, "best": experiments},
    }
    if repros:
        median = statistics.median(run["seconds"] for run in repros)
        results["default_repro_median_seconds"] = median
        results["default_repro_over_tutorial"] = round(median / tutorial_seconds, 2)
        results["runs"]["default_repro"] = repros
    for key, value in results.items():
        if key != "runs":
            print(f"{key:>28}: {value}")
    path = machine.write_results("time_to_accuracy", results, this_machine, arguments.output)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
