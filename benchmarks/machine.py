"""Which machine gave a benchmark's numbers, and where they are kept.

Every benchmark writes its results through `write_results`, which files them by machine:

    benchmarks/results/<machine id>/<benchmark>.json

The machine id names the kind of CPU, its widest vector instructions and its cores, e.g.
`intel-xeon-avx512-amx-2c` or `amd-epyc-avx2-2c`: a run on another kind of machine lands
beside the others, never over them, and no ratio ever mixes two machines. A file holds

    {"benchmark": ..., "date": ..., "machine": {cpu_model, instruction_set, cores,
     memory_gb, python, tensorflow, keras, commit, dirty, load averages, ...}, ...results}

A benchmark calls `describe()` before its work (the load average before) and
`write_results(name, results, machine)` after it (the load average after, the date).

The committed `metrics/` name their machine too, in `metrics/machine.json`: `make repro`
runs `python -m benchmarks.machine --record metrics/machine.json` after `dvc repro`, which
rewrites the file only when the train stage's outputs in dvc.lock are not the ones it
names, that is when train ran and wrote other bits (on another kind of CPU, say), not
after `dvc pull` or a run that wrote the same bits. `python -m benchmarks.machine` prints
this machine's description.
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import importlib.metadata
import json
import os
import platform
import re
import subprocess
import sys
from pathlib import Path

import yaml

from loopline.files import read_file, read_json, run_stage, write_json

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"

# The instruction sets that change speed and trained bits, and the /proc/cpuinfo flag of each.
INSTRUCTION_SETS = {
    "AVX2": "avx2",
    "AVX-512": "avx512f",
    "AVX512-BF16": "avx512_bf16",
    "AMX": "amx_tile",
    "NEON": "asimd",
    "SVE": "sve",
}
# Words of a CPU's model name that say nothing about its kind.
NOISE = re.compile(r"\((r|tm)\)|\bcpu\b|\bprocessor\b|@.*$", re.IGNORECASE)


def read_cpuinfo(text: str) -> dict[str, str]:
    """The first processor's fields of /proc/cpuinfo (`model name`, `flags`, ...)."""
    fields: dict[str, str] = {}
    for line in text.split("\n\n")[0].splitlines():
        key, _, value = line.partition(":")
        fields[key.strip()] = value.strip()
    return fields


def instruction_set(flags: str) -> list[str]:
    """The INSTRUCTION_SETS whose flag is among `flags` (x86 `flags`, Arm `Features`)."""
    present = set(flags.split())
    return [name for name, flag in INSTRUCTION_SETS.items() if flag in present]


def machine_id(cpu_model: str, instructions: list[str], cores: int) -> str:
    """`intel-xeon-avx512-amx-2c`: the model name's first two words, the widest vector
    set (AVX-512, else AVX2, else the architecture), AMX if present, the cores."""
    words = re.findall(r"[a-z0-9]+", NOISE.sub(" ", cpu_model).lower())[:2]
    if "AVX-512" in instructions:
        vector = "avx512"
    elif "AVX2" in instructions:
        vector = "avx2"
    else:
        vector = platform.machine().lower() or "unknown"
    parts = [*(words or ["unknown"]), vector, *(["amx"] if "AMX" in instructions else [])]
    return "-".join([*parts, f"{cores}c"])


def package_version(*names: str) -> str | None:
    """The installed version of the first of `names` that is installed, without importing it."""
    for name in names:
        try:
            return importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return None


def git(*arguments: str) -> str | None:
    try:
        return subprocess.run(
            ["git", *arguments], cwd=REPO, capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None  # not a git checkout: the commit is unknown, not an error


def memory_gb() -> float | None:
    meminfo = Path("/proc/meminfo")
    if not meminfo.exists():
        return None
    kilobytes = re.search(r"MemTotal:\s+(\d+) kB", meminfo.read_text())
    return round(int(kilobytes[1]) / 2**20, 1) if kilobytes else None


def describe() -> dict:
    """This machine, the software and the commit, and the load average now (before)."""
    cpuinfo_path = Path("/proc/cpuinfo")
    cpuinfo = read_cpuinfo(cpuinfo_path.read_text()) if cpuinfo_path.exists() else {}
    cpu_model = cpuinfo.get("model name") or platform.processor() or platform.machine()
    instructions = instruction_set(cpuinfo.get("flags") or cpuinfo.get("Features", ""))
    cores = os.cpu_count() or 1
    status = git("status", "--porcelain", "--untracked-files=no")
    return {
        "id": machine_id(cpu_model, instructions, cores),
        "cpu_model": cpu_model,
        "cpu_family": cpuinfo.get("cpu family"),
        "cpu_model_number": cpuinfo.get("model"),
        "instruction_set": instructions,
        "cores": cores,
        "usable_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else cores,
        "memory_gb": memory_gb(),
        "system": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "tensorflow": package_version("tensorflow-cpu", "tensorflow"),
        "keras": package_version("keras"),
        "commit": git("rev-parse", "HEAD"),
        # Tracked files changed since that commit (the results of an earlier run count too).
        "dirty": None if status is None else bool(status),
        "load_average_1min_before": os.getloadavg()[0],
    }


def write_results(
    benchmark: str,
    results: dict,
    machine: dict,
    output: Path | None = None,
    root: Path = RESULTS,
) -> Path:
    """Write `results` to <root>/<machine id>/<benchmark>.json (or `output`), with the
    machine, the load average now (after) and the date; return the path."""
    path = output or root / machine["id"] / f"{benchmark}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    record = {
        "benchmark": benchmark,
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": machine | {"load_average_1min_after": os.getloadavg()[0]},
        **results,
    }
    write_json(path, record)
    return path


def read_results(benchmark: str, root: Path = RESULTS) -> dict[str, dict]:
    """Every machine's results of `benchmark`, by machine id, in the ids' order; a file
    that is not a benchmark's results is one line naming it."""
    results = {}
    for path in sorted(root.glob(f"*/{benchmark}.json")):
        fix = f"restore it with `git checkout -- {path}` or run `python -m benchmarks.{benchmark}`"
        result = read_json(path, fix)
        if not (
            isinstance(result, dict)
            and isinstance(result.get("machine"), dict)
            and isinstance(result.get("date"), str)
        ):
            raise ValueError(f"{path}: not a benchmark's results (no date or machine); {fix}")
        results[path.parent.name] = result
    return results


# The fields of `describe()` that stay the same from run to run on one kind of machine.
STABLE = ("id", "cpu_model", "instruction_set", "cores", "tensorflow", "keras")


def train_fingerprint(lock: Path) -> str:
    """A hash of the train stage's output hashes in dvc.lock: other bits, another value."""
    try:
        stage = yaml.safe_load(read_file(lock, ""))["stages"]["train"]
        hashes = sorted(f"{out['path']} {out['md5']}" for out in stage["outs"])
    except (yaml.YAMLError, KeyError, TypeError) as error:
        raise ValueError(
            f"{lock}: no train stage's outputs in it ({type(error).__name__}); restore it with "
            f"`git checkout -- {lock.name}`, or run `dvc repro`"
        ) from None
    return hashlib.sha256("\n".join(hashes).encode()).hexdigest()[:16]


def record(path: Path, lock: Path = REPO / "dvc.lock") -> bool:
    """Write this machine's STABLE fields to `path` for the run dvc.lock names, unless
    `path` already names that run; return whether it wrote."""
    fingerprint = train_fingerprint(lock)
    if path.exists() or path.is_symlink():
        # Damaged, it cannot say which machine trained the run: only git can.
        fix = f"restore it with `git checkout -- {path}` (delete it if this machine trained)"
        recorded = read_json(path, fix)
        if isinstance(recorded, dict) and recorded.get("train_outputs") == fingerprint:
            return False
    described = describe()
    write_json(
        path, {"train_outputs": fingerprint, "machine": {key: described[key] for key in STABLE}}
    )
    return True


def main() -> None:
    parser = argparse.ArgumentParser(description="This machine, as benchmark results name it.")
    parser.add_argument(
        "--record",
        type=Path,
        metavar="PATH",
        help="write the machine of the run dvc.lock names to PATH (metrics/machine.json)",
    )
    arguments = parser.parse_args()
    if arguments.record is None:
        json.dump(describe(), sys.stdout, indent=2)
        print()
    elif record(arguments.record):
        print(f"{arguments.record}: trained on {describe()['id']}")


if __name__ == "__main__":
    run_stage(main)
