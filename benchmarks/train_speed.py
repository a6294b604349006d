"""train_speed: how fast ways of training the tutorial model run on this machine.

Times, in one process, on the same data, model and batch size, interleaved: (a) the
reference tutorial's loop as written, (b) model.fit, (c) model.fit with XLA, (c1)-(c3) the
same with several steps per call (Keras' steps_per_execution, and its unrolled variant),
the strongest baselines, (d) this project's Trainer as stages.train drives it, and (d1),
(d2) the same with one step per compiled program and without XLA; then (e) the input
pipeline alone, (f) a large float32 matmul, the machine's practical peak, and (g) its
memory bandwidth. See benchmarks/README.md.
Reads  data/prepared (run `dvc repro prepare` first).
Writes benchmarks/results/<machine id>/train_speed.json (benchmarks/machine.py), or --output.
Run    python -m benchmarks.train_speed [--steps 200 --repeats 5 --warmup 100]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
from pathlib import Path

import tensorflow as tf

from benchmarks import machine, measure
from benchmarks.measure import BATCH_SIZE, FIT_STEPS_PER_EXECUTION, STEPS_PER_EXECUTION
from loopline import records
from loopline.files import run_stage

# FLOPs of one training step (a multiply-add is 2 FLOPs), forward pass, per example:
#   Conv2D 32 3x3, 28x28x1 -> 26x26x32:  26*26*32 * 3*3*1 * 2 =   389,376
#   Dense 21632 -> 128:                  21632*128 * 2         = 5,537,792
#   Dense 128 -> 10:                     128*10 * 2            =     2,560
#   total                                                      = 5,929,728
# Backward ~ 2x forward (gradients of the inputs and of the weights), so a step costs
# 3 * 32 * 5,929,728 = 569,253,888 ~ 0.57 GFLOP, 93% of it in the 21632x128 layer.
# Left out, a few percent each way: the first layer needs no input gradient (-2%); bias,
# ReLU, softmax and Adam's update of the 2.77M parameters (~+6%).
FLOPS_PER_STEP = BATCH_SIZE * 3 * 2 * (26 * 26 * 32 * 3 * 3 + 26 * 26 * 32 * 128 + 128 * 10)
# Bytes a step moves at the least when it is made of separate operations, as TensorFlow,
# XLA and Keras make it: the 21632x128 kernel (11.1 MB, 5x the 2 MB L2 caches; with its
# gradient and Adam's two moments 44 MB, beyond the 32 MB L3) is read by the forward
# matmul and by the input-gradient matmul, the weight-gradient matmul writes its
# gradient, and Adam's update reads kernel, gradient and both moments and writes back
# kernel and moments: 10 passes over 11.1 MB. Activations (2.8 MB) and the small layers
# are left out. (Only a hand-fused kernel that never stores the gradient and updates the
# weights as it multiplies could move less.)
KERNEL_BYTES = 26 * 26 * 32 * 128 * 4
MIN_BYTES_PER_STEP = 10 * KERNEL_BYTES
MEMORY_MEGABYTES = 44  # (g): kernel, gradient and moments together, beyond the L3 cache


def threads() -> dict:
    """TensorFlow's threading as found (never set here): 0 means one thread per core."""
    return {
        "intra_op_threads": tf.config.threading.get_intra_op_parallelism_threads(),
        "inter_op_threads": tf.config.threading.get_inter_op_parallelism_threads(),
        "thread_variables": {
            name: value
            for name, value in os.environ.items()
            if name in ("OMP_NUM_THREADS", "TF_NUM_INTRAOP_THREADS", "TF_NUM_INTEROP_THREADS")
        },
    }


def summarise(
    seconds: dict[str, list[float]], peak_gflops: float, floor_seconds: float
) -> list[dict]:
    """One row per variant: median ms/step, examples/s, speed-ups, share of each limit.

    The speed-ups are over (a), the tutorial's loop, and over the fastest `model.fit`
    variant, the strongest baseline; `fraction_of_bandwidth_floor` is the time the step's
    minimum memory traffic takes at (g)'s speed over the step's time (1.0: at the floor).
    """
    medians = {variant: statistics.median(runs) for variant, runs in seconds.items()}
    baseline = medians[next(iter(medians))]
    best_fit = min(median for variant, median in medians.items() if "model.fit" in variant)
    rows = []
    for variant, runs in seconds.items():
        median = medians[variant]
        rows.append(
            {
                "variant": variant,
                "ms_per_step": 1000 * median,
                "ms_per_step_runs": [round(1000 * run, 3) for run in runs],
                "examples_per_second": BATCH_SIZE / median,
                "speedup_over_a": baseline / median,
                "speedup_over_best_fit": best_fit / median,
                "fraction_of_matmul_peak": FLOPS_PER_STEP / median / 1e9 / peak_gflops,
                "fraction_of_bandwidth_floor": floor_seconds / median,
            }
        )
    return rows


def limits(peak_gflops: float, memory_gbps: float) -> dict:
    """What the machine allows a step: its FLOPs at (f)'s peak, its bytes at (g)'s speed."""
    return {
        "ms_per_step_at_matmul_peak": FLOPS_PER_STEP / peak_gflops / 1e6,
        "ms_per_step_at_70_percent_of_peak": FLOPS_PER_STEP / (0.7 * peak_gflops) / 1e6,
        "min_bytes_per_step": MIN_BYTES_PER_STEP,
        "ms_per_step_moving_min_bytes": MIN_BYTES_PER_STEP / memory_gbps / 1e6,
    }


def print_tables(
    rows: list[dict], pipeline: dict[str, float], matmul: dict, memory: dict, bounds: dict
) -> None:
    print(
        "| variant | ms/step (min-max) | examples/s | over (a) | over best fit "
        "| of matmul peak | of bandwidth floor |"
    )
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for row in rows:
        runs = row["ms_per_step_runs"]
        print(
            f"| {row['variant']} | {row['ms_per_step']:.1f} ({min(runs):.1f}-{max(runs):.1f})"
            f" | {row['examples_per_second']:.0f} | {row['speedup_over_a']:.2f}x"
            f" | {row['speedup_over_best_fit']:.2f}x | {row['fraction_of_matmul_peak']:.0%}"
            f" | {row['fraction_of_bandwidth_floor']:.0%} |"
        )
    print("\n| (e) input pipeline | examples/s |\n| --- | ---: |")
    for part, rate in pipeline.items():
        print(f"| {part} | {rate:,.0f} |")
    print(
        f"\n(f) float32 matmul {matmul['size']}x{matmul['size']}: {matmul['gflops']:.0f} "
        f"GFLOP/s (median; best {matmul['best_gflops']:.0f}); a training step is "
        f"{FLOPS_PER_STEP / 1e9:.3f} GFLOP"
    )
    print(
        f"(g) memory, XLA `y = 2 * x` over {memory['megabytes']} MB: {memory['gbps']:.0f} GB/s "
        f"(median; best {memory['best_gbps']:.0f})\n"
        f"A step at 70% of (f)'s peak would take "
        f"{bounds['ms_per_step_at_70_percent_of_peak']:.2f} ms (at the full peak "
        f"{bounds['ms_per_step_at_matmul_peak']:.2f} ms); only moving the "
        f"{MIN_BYTES_PER_STEP / 1e6:.0f} MB that its operations read and write takes "
        f"{bounds['ms_per_step_moving_min_bytes']:.2f} ms at (g)'s speed"
    )


def parse_arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--data",
        type=Path,
        default=Path("data/prepared"),
        help="the prepared TFRecords (default: %(default)s)",
    )
    parser.add_argument(
        "--steps", type=int, default=200, help="steps per timed run (default: %(default)s)"
    )
    parser.add_argument(
        "--repeats",
        type=int,
        default=5,
        help="timed runs of each variant, reported as the median (default: %(default)s)",
    )
    parser.add_argument(
        "--warmup",
        type=int,
        default=100,
        help="untimed steps of each variant first, compilation included (default: %(default)s)",
    )
    parser.add_argument(
        "--matmul-size", type=int, default=2048, help="(f)'s matrix side (default: %(default)s)"
    )
    parser.add_argument(
        "--output",
        type=Path,
        help="where to write the results as JSON (default: "
        "benchmarks/results/<machine id>/train_speed.json)",
    )
    arguments = parser.parse_args()
    if arguments.steps < 2 or arguments.repeats < 1 or arguments.warmup < 1:
        parser.error("--steps must be at least 2, --repeats and --warmup at least 1")
    return arguments


def main() -> None:
    arguments = parse_arguments()
    if not (arguments.data / "meta.json").is_file():
        raise FileNotFoundError(f"{arguments.data}: no prepared TFRecords; run `dvc repro prepare`")
    this_machine = machine.describe()
    images, labels = records.load_split(arguments.data, "train")
    variants = {
        "(a) tutorial loop, per-step tf.function": measure.tutorial_loop(images, labels),
        "(b) model.fit": measure.fit_loop(images, labels, jit_compile=False),
        "(c) model.fit, jit_compile=True": measure.fit_loop(images, labels, jit_compile=True),
        f"(c1) model.fit, XLA, steps_per_execution={STEPS_PER_EXECUTION}": measure.fit_loop(
            images, labels, jit_compile=True, steps_per_execution=STEPS_PER_EXECUTION
        ),
        f"(c2) model.fit, XLA, steps_per_execution={FIT_STEPS_PER_EXECUTION}": measure.fit_loop(
            images, labels, jit_compile=True, steps_per_execution=FIT_STEPS_PER_EXECUTION
        ),
        f"(c3) model.fit as (c2), unrolled_steps_per_execution={STEPS_PER_EXECUTION}": (
            measure.fit_loop(
                images,
                labels,
                jit_compile=True,
                steps_per_execution=FIT_STEPS_PER_EXECUTION,
                unrolled_steps=STEPS_PER_EXECUTION,
            )
        ),
        f"(d) Trainer, XLA, {STEPS_PER_EXECUTION} steps/program and call": (
            measure.trainer_loop(images, labels)
        ),
        "(d1) the same, 1 step/program": measure.trainer_loop(
            images, labels, steps_per_execution=1
        ),
        "(d2) the same as (d), no XLA": measure.trainer_loop(images, labels, jit_compile=False),
    }
    matmul = measure.matmul_gflops(arguments.matmul_size)
    memory = measure.memory_gbps(MEMORY_MEGABYTES)
    for run in variants.values():
        run(arguments.warmup)
    matmul()
    memory()
    seconds: dict[str, list[float]] = {variant: [] for variant in variants}
    pipeline_runs, matmul_runs, memory_runs = [], [], []
    for repeat in range(arguments.repeats):
        # Rotate the order, so that no variant always runs after the same neighbour.
        names = list(variants)
        for variant in names[repeat % len(names) :] + names[: repeat % len(names)]:
            seconds[variant].append(variants[variant](arguments.steps))
        pipeline_runs.append(measure.input_pipeline(arguments.data))
        matmul_runs.append(matmul())
        memory_runs.append(memory())
        print(
            f"repeat {repeat + 1}/{arguments.repeats}: "
            + ", ".join(
                f"{variant.split()[0]} {1000 * runs[-1]:.1f} ms/step"
                for variant, runs in seconds.items()
            ),
            file=sys.stderr,
            flush=True,
        )
    matmul_result = {
        "size": arguments.matmul_size,
        "gflops": statistics.median(matmul_runs),
        "best_gflops": max(matmul_runs),
        "runs": matmul_runs,
    }
    memory_result = {
        "megabytes": MEMORY_MEGABYTES,
        "gbps": statistics.median(memory_runs),
        "best_gbps": max(memory_runs),
        "runs": memory_runs,
    }
    bounds = limits(matmul_result["gflops"], memory_result["gbps"])
    rows = summarise(seconds, matmul_result["gflops"], bounds["ms_per_step_moving_min_bytes"] / 1e3)
    pipeline = {
        part: statistics.median(run[part] for run in pipeline_runs) for part in pipeline_runs[0]
    }
    print_tables(rows, pipeline, matmul_result, memory_result, bounds)
    path = machine.write_results(
        "train_speed",
        {
            "threads": threads(),
            "flags": {
                name: str(value) if isinstance(value, Path) else value
                for name, value in vars(arguments).items()
            },
            "batch_size": BATCH_SIZE,
            "flops_per_step": FLOPS_PER_STEP,
            "variants": rows,
            "input_pipeline_examples_per_second": pipeline,
            "matmul": matmul_result,
            "memory": memory_result,
            "limits": bounds,
        },
        this_machine,
        arguments.output,
    )
    print(f"\nwrote {path}")


if __name__ == "__main__":
    run_stage(main)
