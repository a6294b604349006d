"""pipeline_timings: each stage of the default `dvc repro` on a fresh clone, and the tutorial.

Clones this repository's HEAD into a temporary directory, runs `dvc repro` there with the
current environment's packages (what `make repro` does once .venv exists), and notes when
each stage starts; then a second, no-op `dvc repro`; then the reference tutorial's program
(benchmarks/tutorial.py, 5 epochs) timed the same way, as a fresh process. The two take
turns, --repeats times, in one invocation, so they see the same machine; the medians are
reported, every run is kept in the JSON.
Writes benchmarks/results/<machine id>/pipeline_timings.json (benchmarks/machine.py).
Run    python -m benchmarks.pipeline_timings [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks import machine

REPO = Path(__file__).resolve().parents[1]


def environment() -> dict[str, str]:
    """This environment, with this interpreter's `python` first (dvc.yaml's commands)."""
    return {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}


def timed_run(command: list[str], cwd: Path, env: dict) -> tuple[float, dict[str, float], str]:
    """Run `command`; return its seconds, each DVC stage's seconds, and its output."""
    start = time.perf_counter()
    stage_starts: list[tuple[str, float]] = []
    lines = []
    with subprocess.Popen(
        command, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    ) as process:
        for line in process.stdout:
            lines.append(line)
            match = re.match(r"Running stage '(\w+)'", line)
            if match:
                stage_starts.append((match.group(1), time.perf_counter()))
    seconds = time.perf_counter() - start
    if process.returncode != 0:
        sys.exit(f"error: {' '.join(command)} failed:\n{''.join(lines[-20:])}")
    # A stage ends when the next one starts, the last one with the command.
    ends = [moment for _, moment in stage_starts[1:]] + [start + seconds][: len(stage_starts)]
    stages = {
        name: round(end - begin, 1) for (name, begin), end in zip(stage_starts, ends, strict=True)
    }
    return round(seconds, 1), stages, "".join(lines)


def repro_on_a_fresh_clone(env: dict) -> dict:
    """One fresh clone's `dvc repro`, then a no-op `dvc repro`: seconds, stages, accuracy.

    The test accuracy is read from metrics/eval.json, not from the output: when train
    writes the committed model's bytes again, DVC skips evaluate (its deps and its
    committed outputs are unchanged), and the only accuracy printed is the TFLite model's.
    """
    with tempfile.TemporaryDirectory() as scratch:
        clone = Path(scratch) / "loopline"
        subprocess.run(["git", "clone", "-q", str(REPO), str(clone)], check=True)
        seconds, stages, _ = timed_run(["dvc", "repro"], clone, env)
        noop_seconds, _, _ = timed_run(["dvc", "repro"], clone, env)
        evaluation = json.loads((clone / "metrics/eval.json").read_text())
    return {
        "seconds": seconds,
        "stage_seconds": stages,
        "noop_seconds": noop_seconds,
        "test_accuracy": evaluation["accuracy"],
    }


def tutorial(env: dict) -> dict:
    """The tutorial's program, 5 epochs, as a fresh process: seconds and test accuracy."""
    seconds, _, output = timed_run([sys.executable, "-m", "benchmarks.tutorial"], REPO, env)
    accuracy = re.search(r"Test Accuracy: ([\d.]+)", output)
    test_accuracy = float(accuracy.group(1)) / 100 if accuracy else None
    return {"seconds": seconds, "test_accuracy": test_accuracy}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--repeats",
        type=int,
        default=3,
        help="runs of each, taking turns; the medians are reported (default: %(default)s)",
    )
    parser.add_argument(
        "--output",
        type=Path,
        help="where to write the results as JSON (default: "
        "benchmarks/results/<machine id>/pipeline_timings.json)",
    )
    arguments = parser.parse_args()
    if arguments.repeats < 1:
        parser.error("--repeats must be at least 1")
    this_machine = machine.describe()
    env = environment()
    repros, tutorials = [], []
    for repeat in range(arguments.repeats):
        repros.append(repro_on_a_fresh_clone(env))
        tutorials.append(tutorial(env))
        print(
            f"repeat {repeat + 1}/{arguments.repeats}: dvc repro {repros[-1]['seconds']} s "
            f"{repros[-1]['stage_seconds']}, tutorial {tutorials[-1]['seconds']} s",
            file=sys.stderr,
            flush=True,
        )
    repro_seconds = statistics.median(run["seconds"] for run in repros)
    tutorial_seconds = statistics.median(run["seconds"] for run in tutorials)
    results = {
        "repeats": arguments.repeats,
        "dvc_repro_seconds": repro_seconds,
        "stage_seconds": {
            stage: statistics.median(run["stage_seconds"][stage] for run in repros)
            for stage in repros[0]["stage_seconds"]
        },
        "test_accuracy": repros[0]["test_accuracy"],
        "noop_dvc_repro_seconds": statistics.median(run["noop_seconds"] for run in repros),
        "tutorial_seconds": tutorial_seconds,
        "tutorial_test_accuracy": tutorials[0]["test_accuracy"],
        "repro_over_tutorial": round(repro_seconds / tutorial_seconds, 2),
        "runs": {"dvc_repro": repros, "tutorial": tutorials},
    }
    for key, value in results.items():
        if key != "runs":
            print(f"{key:>24}: {value}")
    path = machine.write_results("pipeline_timings", results, this_machine, arguments.output)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
