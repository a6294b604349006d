"""train_memory: train's peak memory against the size of its training split.

Two synthetic data sets of 32x32 colour images whose training splits differ tenfold in
size (65,000 images, 200 MB of pixels; 650,000 images, 2.0 GB), and whose test splits do
too (5,000 and 50,000), are written as .npz folders and prepared by the prepare stage.
Then, each as dvc.yaml runs it (`python -m stages.<stage>`), one process per run:
  train, one epoch, streamed (max_in_memory_mb 0), on each set;
  train, one epoch, held in memory (the default max_in_memory_mb), on the small set;
  evaluate and export (dynamic range) of each streamed model, on its test split;
  inside a cgroup v1 memory limit below the large set's size (--limit-mb): train on the
  large set streamed (it must finish), then held in memory (it must be killed).
Each run's peak resident set is the kernel's (ru_maxrss, from wait4); under the limit, the
cgroup's peak usage (page cache included: the data is first dropped from the cache, so the
run caches it anew) and how often it reached the limit are recorded too.
Writes benchmarks/results/<machine id>/train_memory.json (benchmarks/machine.py).
Run    sudo python -m benchmarks.train_memory [--work DIR] [--limit-mb 1200]
       (root for the cgroup; without it the limited runs are skipped and said so)
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import yaml

from benchmarks.machine import describe, write_results

REPO = Path(__file__).resolve().parents[1]
SHAPE = (32, 32, 3)  # CIFAR's: 3,072 bytes an image
CLASSES = 10
# Training images (after 1,000 go to validation) and test images of each set.
SETS = {"small": (65_000, 5_000), "large": (650_000, 50_000)}
VALIDATION = 1_000
# One epoch of the large set in minutes on 2 cores: the tutorial model (its cost per
# image is low: one 3x3 convolution and a dense layer) in batches of 128.
OVERRIDES = {"model": "tutorial", "epochs": 1, "batch_size": 128, "validation_size": VALIDATION}
CGROUPS = Path("/sys/fs/cgroup/memory")
CHUNK = 10_000  # images generated and written at a time
STAGE_LINE = r"(prepare|train|evaluate|export): |epoch 1/1  "


def pixel_chunks(count: int, seed: int) -> Iterator[np.ndarray]:
    """`count` learnable images, CHUNK at a time: noise, and a bright bar at a row given by
    the label (image i's label is i % CLASSES)."""
    rng = np.random.default_rng(seed)
    for start in range(0, count, CHUNK):
        labels = (start + np.arange(min(CHUNK, count - start))) % CLASSES
        images = rng.integers(0, 40, (len(labels), *SHAPE), dtype=np.uint8)
        for label in range(CLASSES):
            images[labels == label, 3 * label : 3 * label + 2] = 255
        yield images


def write_member(archive: zipfile.ZipFile, name: str, shape: tuple, chunks) -> None:
    """One uint8 .npy inside `archive`, written chunk by chunk (never whole in memory)."""
    header = {"descr": "|u1", "fortran_order": False, "shape": shape}
    with archive.open(f"{name}.npy", "w", force_zip64=True) as file:
        np.lib.format.write_array_header_2_0(file, header)
        for chunk in chunks:
            file.write(chunk.tobytes())


def write_data_set(folder: Path, train: int, test: int) -> Path:
    """A data set folder: arrays.npz (stored, not compressed) and its dataset.yaml."""
    folder.mkdir(parents=True)
    train += VALIDATION
    with zipfile.ZipFile(folder / "arrays.npz", "w", zipfile.ZIP_STORED) as archive:
        for split, count, seed in (("train", train, 0), ("test", test, 1)):
            write_member(archive, f"x_{split}", (count, *SHAPE), pixel_chunks(count, seed))
            labels = (np.arange(count) % CLASSES).astype(np.uint8)
            write_member(archive, f"y_{split}", (count,), [labels])
    classes = [f"class {index}" for index in range(CLASSES)]
    (folder / "dataset.yaml").write_text(yaml.safe_dump({"classes": classes}))
    return folder


def write_params(path: Path, **overrides) -> Path:
    defaults = yaml.safe_load((REPO / "params.yaml").read_text())
    path.write_text(yaml.safe_dump({**defaults, **OVERRIDES, **overrides}, sort_keys=False))
    return path


def measured(command: list[str], log: Path, cgroup: Path | None = None) -> dict:
    """Run `command` (in `cgroup`, if given); its exit code, seconds and peak resident set."""
    if cgroup is not None:  # the shell joins the cgroup, then becomes the command
        join = f'echo $$ > {cgroup / "cgroup.procs"} && exec "$@"'
        command = ["sh", "-c", join, "sh", *command]
    start = time.perf_counter()
    with log.open("w") as output:
        process = subprocess.Popen(command, cwd=REPO, stdout=output, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)  # reaped here, not by Popen
    printed = log.read_text()
    epoch = re.search(r"^epoch 1/1 .*  ([\d.]+) s  (\d+) examples/s$", printed, re.MULTILINE)
    run = {
        "exit_code": process.returncode,  # -9: killed (a shell says 137)
        "seconds": round(time.perf_counter() - start, 1),
        "peak_resident_bytes": usage.ru_maxrss * 1024,  # Linux gives KiB
        # The stage's own lines (which path train took, the epoch, the test accuracy).
        "printed": [line for line in printed.splitlines() if re.match(STAGE_LINE, line)],
    }
    if epoch:
        run |= {"epoch_seconds": float(epoch[1]), "examples_per_second": int(epoch[2])}
    if process.returncode not in (0, -9):
        raise RuntimeError(f"{' '.join(command)} failed ({process.returncode}):\n{printed[-3000:]}")
    return run


@contextlib.contextmanager
def memory_limit(limit_bytes: int) -> Iterator[Path]:
    """A cgroup v1 memory group of its own, limited to `limit_bytes` (page cache counts, and
    is reclaimed first; a process that needs more is killed). Removed on the way out."""
    group = CGROUPS / f"loopline-train-memory-{os.getpid()}-{time.monotonic_ns()}"
    group.mkdir()
    try:
        (group / "memory.limit_in_bytes").write_text(str(limit_bytes))
        yield group
    finally:
        group.rmdir()  # its processes have exited


def evict(folder: Path) -> None:
    """Drop `folder`'s files from the page cache: a run then reads them from disk, and its
    cgroup is charged for caching them (pages stay charged to the group that cached them)."""
    for path in folder.iterdir():
        with path.open("rb") as file:
            os.posix_fadvise(file.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)


def limited(command: list[str], log: Path, limit_bytes: int, data: Path) -> dict:
    """`command` run under a memory limit of its own, reading `data` from disk; with the
    cgroup's peak and how often it reached the limit (and reclaimed cache)."""
    evict(data)
    with memory_limit(limit_bytes) as group:
        run = measured(command, log, group)
        run["cgroup_peak_bytes"] = int((group / "memory.max_usage_in_bytes").read_text())
        run["cgroup_limit_hits"] = int((group / "memory.failcnt").read_text())
    return run


def stage(name: str, *arguments: Path | str) -> list[str]:
    return [sys.executable, "-m", f"stages.{name}", *map(str, arguments)]


def prepare_set(work: Path, name: str, train: int, test: int) -> tuple[Path, dict]:
    """The set `name`, prepared under `work` (kept there, and reused, with --work)."""
    prepared = work / name / "prepared"
    if (prepared / "meta.json").is_file():
        return prepared, {}
    raw = write_data_set(work / name / "raw", train, test)
    params = write_params(work / name / "prepare.yaml")
    log = work / name / "prepare.log"
    run = measured(stage("prepare", raw, prepared, "--params", params), log)
    run["raw_bytes"] = (raw / "arrays.npz").stat().st_size
    shutil.rmtree(raw)
    return prepared, run


def train_run(work: Path, name: str, label: str, max_in_memory_mb: int, limit: int | None):
    """One epoch of train on set `name`; its measurements, and where it wrote."""
    out = work / name / label
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    params = write_params(out / "params.yaml", max_in_memory_mb=max_in_memory_mb)
    command = stage(
        "train", work / name / "prepared", out / "model", out / "metrics",
        "--params", params, "--checkpoints", out / "checkpoints",
    )  # fmt: skip
    log = out / "train.log"
    run = (
        limited(command, log, limit, work / name / "prepared") if limit else measured(command, log)
    )
    return run, out


def test_runs(work: Path, name: str, out: Path) -> dict:
    """evaluate and export of the model in `out`, on set `name`'s test split."""
    prepared, params = work / name / "prepared", out / "params.yaml"
    metrics = [out / file for file in ("eval.json", "per_class.json", "confusion.csv")]
    evaluate = stage("evaluate", out / "model", prepared, *metrics, out / "mistakes.png")
    export = stage("export", out / "model", prepared, out / "model.tflite", out / "export.json")
    return {
        "evaluate": measured([*evaluate, "--params", params], out / "evaluate.log"),
        "export": measured([*export, "--params", params], out / "export.log"),
    }


def bytes_under(folder: Path) -> int:
    return sum(path.stat().st_size for path in folder.rglob("*") if path.is_file())


def can_limit() -> bool:
    return os.geteuid() == 0 and (CGROUPS / "cgroup.procs").is_file()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, help="keep the data sets here (default: a temp)")
    parser.add_argument(
        "--limit-mb", type=int, default=1200, help="the cgroup limit (default: %(default)s)"
    )
    parser.add_argument(
        "--scale", type=float, default=1.0, help="of the sets' sizes, for a smoke test (1)"
    )
    parser.add_argument("--output", type=Path, help="(default: benchmarks/results/<machine>/)")
    arguments = parser.parse_args()
    machine = describe()
    default_budget = yaml.safe_load((REPO / "params.yaml").read_text())["max_in_memory_mb"]
    limit = arguments.limit_mb * 10**6
    with contextlib.ExitStack() as stack:
        work = arguments.work or Path(stack.enter_context(tempfile.TemporaryDirectory()))
        sets = {}
        for name, sizes in SETS.items():
            train, test = (round(size * arguments.scale) for size in sizes)
            prepared, prepare = prepare_set(work, name, train, test)
            sets[name] = {
                "train_images": train,
                "test_images": test,
                "train_pixel_bytes": train * int(np.prod(SHAPE)),
                "prepared_bytes": bytes_under(prepared),
                "prepare": prepare,
            }
            print(f"{name}: {train:,} training images, prepared", flush=True)
        runs = {}
        for name in SETS:
            runs[f"{name}, streamed"], out = train_run(work, name, "streamed", 0, None)
            runs[f"{name}, streamed"] |= test_runs(work, name, out)
            print(f"{name}, streamed: {runs[f'{name}, streamed']}", flush=True)
        runs["small, in memory"], _ = train_run(work, "small", "memory", default_budget, None)
        if can_limit():
            for label, budget in (("streamed", 0), ("in memory", default_budget * 10)):
                key = f"large, {label}, under the limit"
                runs[key], _ = train_run(work, "large", f"limited-{budget}", budget, limit)
                print(f"{key}: {runs[key]}", flush=True)
    results = {
        "shape": list(SHAPE),
        "scale": arguments.scale,
        "params": OVERRIDES,
        "default_max_in_memory_mb": default_budget,
        "limit_bytes": limit if can_limit() else None,
        "limit": "cgroup v1 memory.limit_in_bytes" if can_limit() else "not run: needs root",
        "sets": sets,
        "runs": runs,
    }
    for key, run in runs.items():
        print(
            f"{key:<40} peak {run['peak_resident_bytes'] / 1e6:>8,.0f} MB  exit {run['exit_code']}"
        )
    print(f"wrote {write_results('train_memory', results, machine, arguments.output)}")


if __name__ == "__main__":
    main()
