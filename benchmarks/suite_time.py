"""suite_time: how long `make test` takes on this machine.

Runs the whole suite once, as `make test` does (`pytest -n 2`), and records its wall time
and pytest's own summary (tests passed, pytest's seconds). A suite that fails records
nothing: its time is not the time of `make test`.
Writes benchmarks/results/<machine id>/suite_time.json (benchmarks/machine.py).
Run    python -m benchmarks.suite_time [PYTEST ARGUMENT ...]   (default: -n 2)
"""

from __future__ import annotations

import re
import subprocess
import sys
import time

from benchmarks import machine
from benchmarks.pipeline_timings import REPO, environment

SUMMARY = re.compile(r"(\d+) passed.* in ([\d.]+)s")


def main() -> None:
    arguments = sys.argv[1:] or ["-n", "2"]
    this_machine = machine.describe()
    command = [sys.executable, "-m", "pytest", *arguments]
    start = time.perf_counter()
    finished = subprocess.run(command, cwd=REPO, env=environment(), capture_output=True, text=True)
    seconds = round(time.perf_counter() - start, 1)
    summary = finished.stdout.strip().splitlines()[-1] if finished.stdout.strip() else ""
    counts = SUMMARY.search(summary)
    if finished.returncode != 0 or counts is None:
        failed = [
            line.split()[1] for line in finished.stdout.splitlines() if line.startswith("FAILED ")
        ]
        which = f": {', '.join(failed)}" if failed else ""
        sys.exit(f"error: {' '.join(command)} failed ({summary or finished.stderr[-500:]}){which}")
    path = machine.write_results(
        "suite_time",
        {
            "command": "pytest " + " ".join(arguments),
            "seconds": seconds,
            "passed": int(counts[1]),
            "pytest_seconds": float(counts[2]),
            "summary": summary.strip("= "),
        },
        this_machine,
    )
    print(f"{summary}\n{seconds} s in all; wrote {path}")


if __name__ == "__main__":
    main()
