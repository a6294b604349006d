"""own_data: docs/own-data.md's walk, timed: a folder of images to a served, exported model.

In a fresh clone of this repository's last commit: copy tests/data/digits (1,797 real 8x8
digits, UCI optdigits) to data/raw/digits, `dvc add` it, commit, then time
`dvc exp run -S dataset=digits` (every stage, with the default params) and each stage in
it; then classify one of the images with `python -m stages.predict`. Records the test
accuracy of the SavedModel and of the TFLite model.
Writes benchmarks/results/<machine>/own_data.json (benchmarks/machine.py).
Run    python -m benchmarks.own_data [--overrides "-S epochs=20"]
"""

from __future__ import annotations

import argparse
import json
import shlex
import shutil
import subprocess
import tempfile
from pathlib import Path

from benchmarks.machine import describe, write_results
from benchmarks.pipeline_timings import environment, timed_run

REPO = Path(__file__).resolve().parents[1]
DIGITS = REPO / "tests/data/digits"
IDENTITY = [
    *("-c", "user.name=benchmark", "-c", "user.email=benchmark@example.invalid"),
]


def run(command: list[str], cwd: Path, env: dict) -> str:
    return subprocess.run(
        command, cwd=cwd, env=env, capture_output=True, text=True, check=True
    ).stdout


def walk(clone: Path, env: dict, overrides: list[str]) -> dict:
    """The page's commands in `clone`: seconds, stage seconds, accuracies, one prediction."""
    shutil.copytree(DIGITS, clone / "data/raw/digits")
    add_seconds, _, _ = timed_run(["dvc", "add", "data/raw/digits"], clone, env)
    run(["git", "add", "data/raw/digits.dvc", "data/raw/.gitignore"], clone, env)
    run(["git", *IDENTITY, "commit", "-qm", "digits"], clone, env)
    command = ["dvc", "exp", "run", "-S", "dataset=digits", *overrides]
    seconds, stages, _ = timed_run(command, clone, env)
    evaluation = json.loads((clone / "metrics/eval.json").read_text())
    export = json.loads((clone / "metrics/export.json").read_text())
    image = next(iter(sorted((clone / "data/raw/digits/train/7").iterdir())))
    predict = ["python", "-m", "stages.predict", str(image.relative_to(clone))]
    return {
        "command": shlex.join(command),
        "dvc_add_seconds": add_seconds,
        "seconds": seconds,
        "stage_seconds": stages,
        "test_accuracy": evaluation["accuracy"],
        "tflite_accuracy": export["tflite_accuracy"],
        "tflite_bytes": export["tflite_bytes"],
        "test_images": len((clone / "metrics/confusion.csv").read_text().splitlines()) - 1,
        "prediction": run(predict, clone, env).strip(),
        "model_files": sorted(p.name for p in (clone / "models").iterdir() if p.name[0] != "."),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--overrides", default="", help="more `-S key=value` (default: none)")
    parser.add_argument("--output", type=Path, help="(default: benchmarks/results/<machine>/)")
    arguments = parser.parse_args()
    machine = describe()
    env = environment()
    with tempfile.TemporaryDirectory() as scratch:
        clone = Path(scratch) / "loopline"
        subprocess.run(["git", "clone", "-q", str(REPO), str(clone)], check=True)
        results = walk(clone, env, shlex.split(arguments.overrides))
    for key, value in results.items():
        print(f"{key:>16}: {value}")
    print(f"wrote {write_results('own_data', results, machine, arguments.output)}")


if __name__ == "__main__":
    main()
