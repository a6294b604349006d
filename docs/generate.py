"""make docs: write every measured number of README.md and docs/*.md from committed files.

A page holds generated blocks between two markers:

    <!-- generated: default_run -->
    (what default_run() returns; never edit it by hand)
    <!-- end generated -->

The name after `generated:` is a function of this module marked `@generator`: it reads
committed results (metrics/*.json, metrics/train/, metrics/machine.json, params.yaml,
benchmarks/results/<machine id>/*.json) and returns the block's Markdown, saying once
which run and which machine gave its numbers. A name may appear on several pages.

To add a block: write a function here that takes no argument and returns Markdown, put
`@generator` above it, put the two markers with its name in a page, and run `make docs`.
`tests/test_docs.py` fails while a block differs from what `make docs` writes, and when a
marker names no generator.

Run    make docs           (python docs/generate.py)
       python docs/generate.py --check    (exit 1, naming the blocks that differ)
"""

from __future__ import annotations

import argparse
import csv
import itertools
import math
import re
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run as a script: loopline and benchmarks from this checkout

from benchmarks.machine import read_results as read_machine_results  # noqa: E402
from loopline import files  # noqa: E402
from loopline.params import SPECS  # noqa: E402

# A marker is a line of its own: the same text inside a sentence is only quoted.
BLOCK = re.compile(
    r"^(<!-- generated: ([\w-]+) -->\n)(.*?)^(<!-- end generated -->)$", re.DOTALL | re.MULTILINE
)
OPENING = re.compile(r"^<!-- generated: (.*?) -->$", re.MULTILINE)
GENERATORS: dict[str, Callable[[], str]] = {}


def generator(function: Callable[[], str]) -> Callable[[], str]:
    """Make `function` the generator of the blocks named after it."""
    GENERATORS[function.__name__] = function
    return function


def pages() -> list[Path]:
    return [
        REPO / "README.md",
        *sorted((REPO / "docs").glob("*.md")),
        REPO / "benchmarks/README.md",
    ]


def render(text: str, where: str = "page") -> str:
    """`text` with every generated block rewritten by its generator."""
    names = OPENING.findall(text)
    unknown = [name for name in names if name not in GENERATORS]
    if unknown:
        raise ValueError(
            f"{where}: no generator named {unknown[0]!r}; known: {', '.join(GENERATORS)}"
        )
    if len(BLOCK.findall(text)) != len(names):
        raise ValueError(f"{where}: a `<!-- generated: NAME -->` without its end marker")
    return BLOCK.sub(lambda match: match[1] + generate(match[2]).strip() + "\n" + match[4], text)


def generate(name: str) -> str:
    """The block `name`; a committed file of the wrong shape (a key missing, a value of
    another type) is one ValueError naming the files the block read."""
    READ.clear()
    try:
        return GENERATORS[name]()
    except (KeyError, TypeError, IndexError, AttributeError, StopIteration) as error:
        read = ", ".join(dict.fromkeys(READ)) or "no file"
        raise ValueError(
            f"{read}: not as the pipeline and the benchmarks write them (block {name}: "
            f"{type(error).__name__} {error}); restore them with `git checkout -- FILE`, or "
            "re-create them (`dvc repro`, the benchmark)"
        ) from None


# Reading the committed files ---------------------------------------------------------------


# The committed files the generator running now has read: a block whose files are not as
# the pipeline and the benchmarks write them names them in one line (render).
READ: list[str] = []


def committed(path: str) -> Path:
    """REPO / `path`, recorded as read by the block being generated."""
    READ.append(path)
    return REPO / path


def restore(path: str) -> str:
    return f"restore it with `git checkout -- {path}`"


def read_json(path: str) -> dict:
    document = files.read_json(committed(path), restore(path))
    if not isinstance(document, dict):
        raise ValueError(
            f"{path}: a JSON {type(document).__name__}, not an object; {restore(path)}"
        )
    return document


def read_results(benchmark: str) -> dict[str, dict]:
    """Every machine's results of `benchmark` (benchmarks/machine.py checks each file)."""
    READ.append(f"benchmarks/results/*/{benchmark}.json")
    return read_machine_results(benchmark)


def read_yaml(path: str) -> dict:
    try:
        return yaml.safe_load(files.read_file(committed(path), restore(path)))
    except yaml.YAMLError as error:
        reason = " ".join(str(getattr(error, "problem", "") or "not YAML").split())
        raise ValueError(f"{path}: malformed YAML ({reason}); {restore(path)}") from None


def machine_words(machine: dict) -> str:
    """`intel-xeon-avx512-amx-2c` (Intel(R) Xeon(R) Processor: AVX2, AVX-512; 2 cores)."""
    instructions = ", ".join(machine.get("instruction_set") or []) or "instruction set unknown"
    return (
        f"`{machine['id']}` ({machine['cpu_model']}: {instructions}; {machine['cores']} cores, "
        f"TensorFlow {machine['tensorflow']})"
    )


def latest(benchmark: str) -> dict | None:
    """The most recent results of `benchmark`, of whichever machine."""
    results = read_results(benchmark)
    return max(results.values(), key=lambda result: result["date"]) if results else None


def run_words(result: dict) -> str:
    """`python -m benchmarks.NAME` of DATE (commit abc1234) on MACHINE."""
    commit = (result["machine"].get("commit") or "unknown")[:7]
    return (
        f"`python -m benchmarks.{result['benchmark']}` of {result['date'][:10]} (commit "
        f"{commit}) on {machine_words(result['machine'])}"
    )


def last_row(plot: str) -> float:
    """The last value of one of DVCLive's TSV files under metrics/train/plots/metrics/."""
    path = f"metrics/train/plots/metrics/{plot}"
    lines = files.read_file(committed(path), restore(path)).decode(errors="replace").split()
    try:
        return float(lines[-1])
    except (IndexError, ValueError):
        raise ValueError(f"{path}: its last row holds no number; {restore(path)}") from None


def saved_model_bytes() -> int:
    """The size of train's SavedModel, as dvc.lock records it."""
    outs = read_yaml("dvc.lock")["stages"]["train"]["outs"]
    return next(out["size"] for out in outs if out["path"].startswith("models/"))


def prose(text: str) -> str:
    """`text` wrapped as the pages' prose is, at 92 columns."""
    return textwrap.fill(text, 92, break_long_words=False, break_on_hyphens=False)


def percent(fraction: float) -> str:
    return f"{100 * fraction:.2f}%"


def params_with_comments() -> list[tuple[str, str, str]]:
    """(key, default as written, its comment) for each key of params.yaml, in order."""
    rows = []
    for line in files.read_file(committed("params.yaml"), "").decode().splitlines():
        match = re.match(r"(\w+):\s*(.*?)\s*(?:#\s*(.*))?$", line)
        if match:
            if not match[3]:
                raise ValueError(f"params.yaml: {match[1]} has no comment; add one (make docs)")
            rows.append((match[1], match[2], match[3]))
    return rows


# The generators ----------------------------------------------------------------------------


@generator
def default_run() -> str:
    """The committed run: test, TFLite and validation accuracy, and its machine."""
    evaluation, export = read_json("metrics/eval.json"), read_json("metrics/export.json")
    train = read_json("metrics/train/metrics.json")
    params = read_yaml("params.yaml")
    return "\n".join(
        [
            "| default run, `dvc repro` | value |",
            "| --- | ---: |",
            f"| test accuracy (`metrics/eval.json`) | **{percent(evaluation['accuracy'])}** |",
            f"| test loss | {evaluation['loss']:.4f} |",
            f"| train accuracy, last epoch | {percent(last_row('train/accuracy.tsv'))} |",
            f"| validation accuracy, epoch {train['step']} of {params['epochs']} "
            f"| {percent(train['validation']['accuracy'])} |",
            f"| TFLite model ({params['quantization']}): test accuracy "
            f"| {percent(export['tflite_accuracy'])} |",
            f"| TFLite model: size | {export['tflite_bytes'] / 1e6:.1f} MB |",
            f"| SavedModel: size (`dvc.lock`) | {saved_model_bytes() / 1e6:.1f} MB |",
            "",
            prose(
                "The committed `metrics/`, trained on "
                f"{machine_words(read_json('metrics/machine.json')['machine'])}."
            ),
        ]
    )


@generator
def headline() -> str:
    """README's first table: the committed run, and the latest time_to_accuracy."""
    accuracy = read_json("metrics/eval.json")["accuracy"]
    machine = read_json("metrics/machine.json")["machine"]
    committed = prose(
        f"The committed run (`metrics/`): test accuracy **{percent(accuracy)}**, trained on "
        f"{machine_words(machine)}."
    )
    result = latest("time_to_accuracy")
    if result is None:
        return f"{committed}\nNo time measured yet: `python -m benchmarks.time_to_accuracy`."
    tutorial, best = result["tutorial"], result["best"]
    lines = [
        "| program | test accuracy | wall time | of the tutorial's |",
        "| --- | ---: | ---: | ---: |",
        f"| the tutorial's program, 5 epochs | {percent(tutorial['mean_test_accuracy'])} "
        f"| {tutorial['median_seconds']:.0f} s | 1.00x |",
    ]
    footer = f"Times are medians of turns taken in one run: {run_words(result)}."
    if "default_repro_median_seconds" in result:
        repro_accuracy = result["runs"]["default_repro"][0]["test_accuracy"]
        lines.append(
            f"| the default pipeline: `dvc repro` on a fresh clone | {percent(repro_accuracy)} "
            f"| {result['default_repro_median_seconds']:.0f} s "
            f"| {result['default_repro_over_tutorial']:.2f}x |"
        )
        if round(repro_accuracy, 4) != round(accuracy, 4):
            footer += (
                " The kind of CPU changes the trained bits, hence the two accuracies of the "
                "default run ([why](docs/pipeline.md#the-same-bits-on-the-same-kind-of-cpu))."
            )
    lines.append(
        f"| `make best` (mean of {len(result['runs']['best'])} seeds) "
        f"| **{percent(best['mean_test_accuracy'])}** | {best['median_seconds']:.0f} s "
        f"| **{result['best_over_tutorial']:.2f}x** |"
    )
    return "\n".join([committed, "", *lines, "", prose(footer)])


@generator
def time_to_accuracy() -> str:
    """Every machine's time_to_accuracy, one table each, every turn."""
    sections = []
    for result in read_results("time_to_accuracy").values():
        runs = result["runs"]
        repros = runs.get("default_repro", [])
        # The recipe as that commit's Makefile had it: older runs measured older recipes.
        recipe = " ".join(value for value in result.get("best_overrides", []) if value != "-S")
        rows = [
            prose(f"{run_words(result)}; `make best` was `{recipe}` there:"),
            "",
            "| turn (seed) | tutorial's program | `make best`'s `dvc exp run` | ratio "
            "| default `dvc repro` |",
            "| --- | ---: | ---: | ---: | ---: |",
        ]
        for turn, (tutorial, best) in enumerate(zip(runs["tutorial"], runs["best"], strict=True)):
            repro = f"{repros[turn]['seconds']:.0f} s" if turn < len(repros) else ""
            rows.append(
                f"| {turn + 1} ({best['seed']}) | {tutorial['seconds']:.0f} s, "
                f"{percent(tutorial['test_accuracy'])} | {best['seconds']:.0f} s, "
                f"{percent(best['test_accuracy'])} | {best['seconds'] / tutorial['seconds']:.2f}x "
                f"| {repro} |"
            )
        median_repro = (
            f"{result['default_repro_median_seconds']:.0f} s "
            f"({result['default_repro_over_tutorial']:.2f}x)"
            if repros
            else ""
        )
        rows.append(
            f"| median / mean | {result['tutorial']['median_seconds']:.0f} s, "
            f"{percent(result['tutorial']['mean_test_accuracy'])} "
            f"| {result['best']['median_seconds']:.0f} s, "
            f"**{percent(result['best']['mean_test_accuracy'])}** "
            f"| **{result['best_over_tutorial']:.2f}x** | {median_repro} |"
        )
        rows += [f"\n{prose('Note: ' + note)}" for note in result.get("notes", [])]
        sections.append("\n".join(rows))
    return "\n\n".join(sections)


@generator
def train_speed() -> str:
    """Every machine's train_speed: ms per step of each variant, and the machine's limits."""
    sections = []
    for result in read_results("train_speed").values():
        rows = [
            prose(
                f"{run_words(result)}; {result['flags']['repeats']} repeats of "
                f"{result['flags']['steps']} steps, batch {result['batch_size']}:"
            ),
            "",
            "| variant | ms/step (min-max) | over (a) | over the best `fit` "
            "| of the bandwidth floor |",
            "| --- | ---: | ---: | ---: | ---: |",
        ]
        for variant in result["variants"]:
            runs = variant["ms_per_step_runs"]
            rows.append(
                f"| {variant['variant']} | {variant['ms_per_step']:.1f} "
                f"({min(runs):.1f}-{max(runs):.1f}) | {variant['speedup_over_a']:.2f}x "
                f"| {variant['speedup_over_best_fit']:.2f}x "
                f"| {variant['fraction_of_bandwidth_floor']:.0%} |"
            )
        limits, memory = result["limits"], result["memory"]
        batches = result["input_pipeline_examples_per_second"]
        batches = batches.get("make_train_dataset, one epoch of batches")
        rows += [
            "",
            prose(
                f"Memory: {memory['gbps']:.0f} GB/s, so moving the "
                f"{limits['min_bytes_per_step'] / 1e6:.0f} MB a step reads and writes takes "
                f"{limits['ms_per_step_moving_min_bytes']:.1f} ms (the bandwidth floor). Float32 "
                f"matmul: {result['matmul']['gflops']:.0f} GFLOP/s, so the step's "
                f"{result['flops_per_step'] / 1e9:.2f} GFLOP take "
                f"{limits['ms_per_step_at_matmul_peak']:.1f} ms at that peak. The input pipeline "
                f"alone: {batches:,.0f} examples/s."
            ),
        ]
        sections.append("\n".join(rows))
    return "\n\n".join(sections)


@generator
def accuracy_by_machine() -> str:
    """The default pipeline's test accuracy on each kind of machine that ran it."""
    committed = read_json("metrics/machine.json")["machine"]
    rows = [
        "| machine | default `dvc repro`: test accuracy | from |",
        "| --- | ---: | --- |",
        f"| {machine_words(committed)} | {percent(read_json('metrics/eval.json')['accuracy'])} "
        "| the committed `metrics/` |",
    ]
    for name, result in read_results("time_to_accuracy").items():
        repros = result["runs"].get("default_repro", [])
        if repros and name != committed["id"]:
            accuracies = sorted({percent(run["test_accuracy"]) for run in repros})
            rows.append(
                f"| {machine_words(result['machine'])} | {', '.join(accuracies)} "
                f"| `time_to_accuracy` of {result['date'][:10]}, fresh clones |"
            )
    return "\n".join(rows)


@generator
def first_classes() -> str:
    """The classes the committed model gives the first five test images."""
    path = "metrics/confusion.csv"
    text = files.read_file(committed(path), restore(path)).decode(errors="replace")
    rows = csv.DictReader(text.splitlines())
    predicted = [row["predicted"] for row in itertools.islice(rows, 5)]
    return prose(
        f"For the committed model, the first five test images' classes are "
        f"`[{' '.join(predicted)}]` (`metrics/confusion.csv`)."
    )


@generator
def suite_time() -> str:
    """How long `make test` took, and where."""
    result = latest("suite_time")
    if result is None:
        return "`make test`'s time: not measured yet (`python -m benchmarks.suite_time`)."
    return prose(
        f"`make test`: {result['passed']} tests in {result['seconds'] / 60:.1f} minutes "
        f"(load average {result['machine']['load_average_1min_before']:.1f} before, "
        f"{result['machine']['load_average_1min_after']:.1f} after), from {run_words(result)}."
    )


def output_paths(stage: dict) -> list[str]:
    """Every path a dvc.yaml stage writes: outs, metrics and plots."""
    entries = [*stage.get("outs", []), *stage.get("metrics", []), *stage.get("plots", [])]
    return [entry if isinstance(entry, str) else next(iter(entry)) for entry in entries]


@generator
def pipeline_graph() -> str:
    """The stages as a Mermaid graph (GitHub draws it): an arrow where a stage reads what
    another writes, from dvc.yaml, as `dvc dag` draws them."""
    stages = read_yaml("dvc.yaml")["stages"]
    edges = []
    for reader, stage in stages.items():
        for writer, other in stages.items():
            written = output_paths(other)
            if any(
                dep == out or dep.startswith(f"{out}/")
                for dep in stage.get("deps", [])
                for out in written
            ):
                edges.append(f"\t{writer} --> {reader}")
    return "\n".join(["```mermaid", "flowchart TD", *sorted(edges), "```"])


@generator
def params() -> str:
    """README's params table: each key of params.yaml, its default and its comment."""
    rows = ["| key | default | what it sets |", "| --- | --- | --- |"]
    rows += [
        f"| `{key}` | `{value}` | {comment} |" for key, value, comment in params_with_comments()
    ]
    return "\n".join(rows)


@generator
def params_reference() -> str:
    """Each param: its default, the values `validate` accepts, the stages that read it."""
    stages = read_yaml("dvc.yaml")["stages"]
    readers: dict[str, list[str]] = {}
    for name, stage in stages.items():
        # A key the command interpolates (${dataset}) re-runs the stage as one it lists does.
        templated = re.findall(r"\$\{(\w+)\}", stage["cmd"])
        for key in [*stage.get("params", []), *templated]:
            if isinstance(key, str) and name not in readers.get(key, []):
                readers.setdefault(key, []).append(name)
    rows = ["| key | default | accepted | read by |", "| --- | --- | --- | --- |"]
    for key, value, _ in params_with_comments():
        rows.append(
            f"| `{key}` | `{value}` | {SPECS[key].expected} | {', '.join(readers.get(key, []))} |"
        )
    return "\n".join(rows)


@generator
def own_data() -> str:
    """docs/own-data.md's worked example: the digits folder to a model, timed."""
    result = latest("own_data")
    if result is None:
        return "Not measured yet (`python -m benchmarks.own_data`)."
    stages = ", ".join(
        f"{name} {seconds:.0f} s" for name, seconds in result["stage_seconds"].items()
    )
    path, answer, probability = result["prediction"].split("\t")
    return prose(
        f"`{result['command']}` took {result['seconds']:.0f} s ({stages}; `dvc add` "
        f"{result['dvc_add_seconds']:.0f} s before it). The model classifies "
        f"{percent(result['test_accuracy'])} of the {result['test_images']} test digits right "
        f"(the TFLite model {percent(result['tflite_accuracy'])}, {result['tflite_bytes']:,} "
        f"bytes), and `predict` answered `{answer}` (probability {probability}) for "
        f"{Path(path).parent.name}/{Path(path).name}. "
        f"From {run_words(result)}."
    )


@generator
def prepare_speed() -> str:
    """Every machine's prepare_speed: images per second of each reader, folder by folder."""
    sections = []
    for result in read_results("prepare_speed").values():
        folders = result["folders"]
        readers = list(folders[0]["images_per_second"])
        rows = [
            "| images per second (min-max) | "
            + " | ".join(
                f"{f['folder']}: {f['images']:,} to {f['size'][1]}x{f['size'][0]}" for f in folders
            )
            + " |",
            "| --- |" + " ---: |" * len(folders),
        ]
        for reader in readers:
            cells = []
            for folder in folders:
                runs = folder["repeats"][reader]
                cells.append(
                    f"{folder['images_per_second'][reader]:,} ({min(runs):,}-{max(runs):,}), "
                    f"**{folder['over_keras'][reader]:.2f}x**"
                )
            rows.append(f"| {reader} | " + " | ".join(cells) + " |")
        machine = result["machine"]
        loads = [load for folder in folders for load in folder.get("load_average", [])] or [
            machine["load_average_1min_before"],
            machine["load_average_1min_after"],
        ]
        scheduling = f" (the run at {result['scheduling']})" if "scheduling" in result else ""
        rows += [
            "",
            prose(
                f"{run_words(result)}: medians of {len(folders[0]['repeats'][readers[0]])} "
                f"turns, and the ratio to Keras' median on the same folder. Load average "
                f"{min(loads):.1f}-{max(loads):.1f}, its own work included{scheduling}."
            ),
        ]
        sections.append("\n".join(rows))
    return "\n\n".join(sections)


def load_words(result: dict) -> str:
    machine = result["machine"]
    return (
        f"load average {machine['load_average_1min_before']:.1f} before and "
        f"{machine['load_average_1min_after']:.1f} after, its own work included"
    )


def megabytes(count: float) -> str:
    return f"{count / 1e6:,.0f} MB"


def memory_row(what: str, split: str, run: dict) -> str:
    """One row of train_memory's table: the run, its data, its peak and how it ended."""
    ended = "finished" if run["exit_code"] == 0 else f"killed ({run['exit_code']})"
    if run["exit_code"] == -9:
        ended = "killed by the limit (SIGKILL; a shell says 137)"
    if "cgroup_peak_bytes" in run:
        ended += (
            f"; the cgroup's peak {megabytes(run['cgroup_peak_bytes'])}, limit reached "
            f"{run['cgroup_limit_hits']:,} times"
        )
    epoch = f"{run['epoch_seconds']:.0f} s" if "epoch_seconds" in run else "-"
    return f"| {what} | {split} | {megabytes(run['peak_resident_bytes'])} | {epoch} | {ended} |"


@generator
def train_memory() -> str:
    """docs/scale.md: train's, evaluate's and export's peak memory on two data sets whose
    splits differ tenfold, and the large one under a memory limit."""
    result = latest("train_memory")
    if result is None:
        return "Not measured yet (`python -m benchmarks.train_memory`)."
    sets, runs = result["sets"], result["runs"]

    def split(name: str, kind: str = "train") -> str:
        images = sets[name][f"{kind}_images"]
        pixels = images * math.prod(result["shape"])
        return f"{images:,} images, {megabytes(pixels)}"

    limit = megabytes(result["limit_bytes"]) if result["limit_bytes"] else None
    rows = [
        "| run | its split | peak resident set | epoch | how it ended |",
        "| --- | --- | ---: | ---: | --- |",
    ]
    for name in ("small", "large"):
        rows.append(memory_row("`train`, streamed", split(name), runs[f"{name}, streamed"]))
    rows.append(memory_row("`train`, in memory", split("small"), runs["small, in memory"]))
    for label in ("streamed", "in memory"):
        key = f"large, {label}, under the limit"
        if key in runs:
            rows.append(memory_row(f"`train`, {label}, limit {limit}", split("large"), runs[key]))
    for stage in ("evaluate", "export"):
        for name in ("small", "large"):
            run = runs[f"{name}, streamed"][stage]
            rows.append(memory_row(f"`{stage}`", split(name, "test"), run))
    small, large = (runs[f"{name}, streamed"] for name in ("small", "large"))
    growth = large["peak_resident_bytes"] - small["peak_resident_bytes"]
    in_memory = runs["small, in memory"]["peak_resident_bytes"] - small["peak_resident_bytes"]
    params = result["params"]
    disk = ", ".join(
        f"{name} {megabytes(sets[name]['prepared_bytes'])}" for name in ("small", "large")
    )
    return "\n".join(
        [
            prose(
                f"From {run_words(result)}, {load_words(result)}: {result['shape'][0]}x"
                f"{result['shape'][1]} colour images, one epoch of the `{params['model']}` "
                f"model in batches of {params['batch_size']}, each stage a process of its own."
            ),
            "",
            *rows,
            "",
            prose(
                f"Streamed, ten times the training data moved `train`'s peak by "
                f"{megabytes(growth)}; held in memory, the small set's "
                f"{megabytes(sets['small']['train_pixel_bytes'])} of pixels added "
                f"{megabytes(in_memory)} to it. The resident set counts TensorFlow's own "
                f"libraries, mapped from disk, which the cgroup charged to whoever read them "
                f"first. The shards on disk (GZIP): {disk}."
            ),
        ]
    )


# The inputs as benchmarks/streaming_speed.py names them, and as results files written before
# it named them so.
STREAMING_NAMES = {
    "(a) before: in memory, validation in memory": "(a) in memory, validation in memory",
    "(b) now, default: in memory, validation streamed": "(b) train's default: in memory, "
    "validation streamed",
}


@generator
def streaming_speed() -> str:
    """docs/scale.md: MNIST's epochs held in memory, as train's default reads them, streamed."""
    result = latest("streaming_speed")
    if result is None:
        return "Not measured yet (`python -m benchmarks.streaming_speed`)."
    rows = [
        "| input | steps/s (median) | over (a) | epoch with validation | over (a) |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for variant in result["variants"]:
        name = STREAMING_NAMES.get(variant["variant"], variant["variant"])
        rows.append(
            f"| {name} | {variant['steps_per_second']:.0f} | "
            f"{variant['over_a']:.3f}x | {variant['epoch_seconds_with_validation']:.1f} s | "
            f"{variant['epoch_over_a']:.3f}x |"
        )
    repeats = len(result["variants"][0]["train_seconds_runs"])
    return "\n".join(
        [
            prose(
                f"From {run_words(result)}, {load_words(result)}: MNIST, params.yaml's values "
                f"({result['steps_per_epoch']:,} steps an epoch), {repeats} epochs of each "
                f"input in turns, in one process."
            ),
            "",
            *rows,
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="change nothing; exit 1 if stale")
    arguments = parser.parse_args()
    stale = []
    for page in pages():
        text = page.read_text()
        rendered = render(text, page.relative_to(REPO).as_posix())
        if rendered != text:
            stale.append(page.relative_to(REPO).as_posix())
            if not arguments.check:
                page.write_text(rendered)
    if arguments.check and stale:
        sys.exit(f"error: generated blocks out of date in {', '.join(stale)}: run `make docs`")
    if not arguments.check:
        print(f"rewrote {', '.join(stale)}" if stale else "every generated block is up to date")


if __name__ == "__main__":
    try:
        main()
    except (ValueError, FileNotFoundError) as error:
        sys.exit(f"error: {error}")
