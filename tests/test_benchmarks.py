"""benchmarks/machine.py: each result names the machine that gave it, and results of
different machines sit side by side."""

from __future__ import annotations

import importlib.metadata
import json
import re
from pathlib import Path

import numpy as np
import yaml

from benchmarks import machine

REPO = Path(__file__).resolve().parents[1]

XEON = """processor\t: 0
vendor_id\t: GenuineIntel
cpu family\t: 6
model\t\t: 207
model name\t: Intel(R) Xeon(R) Processor
flags\t\t: fpu sse4_2 avx avx2 avx512f avx512_bf16 amx_bf16 amx_tile amx_int8

processor\t: 1
model name\t: Intel(R) Xeon(R) Processor
"""
EPYC_AVX2 = """processor\t: 0
vendor_id\t: AuthenticAMD
cpu family\t: 25
model\t\t: 1
model name\t: AMD EPYC 7B13 64-Core Processor
flags\t\t: fpu sse4_2 avx fma avx2 vaes
"""


def identify(cpuinfo: str, cores: int) -> str:
    fields = machine.read_cpuinfo(cpuinfo)
    return machine.machine_id(fields["model name"], machine.instruction_set(fields["flags"]), cores)


def test_the_id_names_the_cpu_kind_its_widest_vectors_amx_and_the_cores() -> None:
    assert identify(XEON, 2) == "intel-xeon-avx512-amx-2c"
    assert identify(EPYC_AVX2, 2) == "amd-epyc-avx2-2c"
    assert identify(EPYC_AVX2.replace("avx2", "avx2 avx512f"), 8) == "amd-epyc-avx512-8c"
    assert machine.instruction_set("avx2 avx512f avx512_bf16 amx_tile") == [
        "AVX2",
        "AVX-512",
        "AVX512-BF16",
        "AMX",
    ]
    assert machine.instruction_set("fp asimd sve") == ["NEON", "SVE"]


def test_this_machine_is_described_without_importing_tensorflow() -> None:
    described = machine.describe()
    assert described["id"] == machine.machine_id(
        described["cpu_model"], described["instruction_set"], described["cores"]
    )
    assert re.fullmatch(r"[0-9a-f]{40}", described["commit"])
    assert described["dirty"] in (True, False)
    assert described["keras"] == importlib.metadata.version("keras")
    assert described["tensorflow"] is not None
    assert described["load_average_1min_before"] >= 0


def test_machines_sit_side_by_side_and_a_rerun_replaces_only_its_own(tmp_path: Path) -> None:
    xeon = {"id": "intel-xeon-avx512-amx-2c"}
    epyc = {"id": "amd-epyc-avx2-2c"}
    machine.write_results("train_speed", {"ms_per_step": 4.0}, xeon, root=tmp_path)
    machine.write_results("train_speed", {"ms_per_step": 9.0}, epyc, root=tmp_path)
    path = machine.write_results("train_speed", {"ms_per_step": 5.0}, xeon, root=tmp_path)
    assert path == tmp_path / "intel-xeon-avx512-amx-2c" / "train_speed.json"
    results = machine.read_results("train_speed", tmp_path)
    assert {name: result["ms_per_step"] for name, result in results.items()} == {
        "amd-epyc-avx2-2c": 9.0,
        "intel-xeon-avx512-amx-2c": 5.0,
    }
    written = results["intel-xeon-avx512-amx-2c"]
    assert written["benchmark"] == "train_speed"
    assert written["machine"]["id"] == xeon["id"]
    assert "load_average_1min_after" in written["machine"]
    assert re.match(r"\d{4}-\d\d-\d\dT", written["date"])


def test_every_committed_result_names_its_machine_in_its_folder() -> None:
    paths = sorted((REPO / "benchmarks/results").rglob("*.json"))
    assert paths
    for path in paths:
        result = json.loads(path.read_text())
        assert path.parent.parent == REPO / "benchmarks/results", path
        assert result["benchmark"] == path.stem, path
        assert result["machine"]["id"] == path.parent.name, path
        for key in ("cpu_model", "instruction_set", "cores", "tensorflow", "commit", "date"):
            assert key in result["machine"] or key in result, (path, key)


def test_the_committed_metrics_name_the_machine_of_the_run_dvc_lock_names() -> None:
    """metrics/machine.json must follow a retraining (make repro records it; after a plain
    `dvc repro` that wrote other bits: `python -m benchmarks.machine --record
    metrics/machine.json`)."""
    recorded = json.loads((REPO / "metrics/machine.json").read_text())
    assert recorded["train_outputs"] == machine.train_fingerprint(REPO / "dvc.lock")
    assert set(recorded["machine"]) == set(machine.STABLE)


def test_a_record_is_rewritten_only_for_other_bits(tmp_path: Path) -> None:
    lock = tmp_path / "dvc.lock"
    lock.write_text((REPO / "dvc.lock").read_text())
    path = tmp_path / "machine.json"
    assert machine.record(path, lock)
    path.write_text(path.read_text().replace(machine.describe()["id"], "another-machine"))
    assert not machine.record(path, lock)  # same train outputs: the record stays
    assert "another-machine" in path.read_text()
    stages = yaml.safe_load(lock.read_text())
    stages["stages"]["train"]["outs"][0]["md5"] = "0" * 32
    lock.write_text(yaml.safe_dump(stages))
    assert machine.record(path, lock)  # train wrote other bits here: this machine now
    assert "another-machine" not in path.read_text()


def test_train_memorys_data_set_is_an_npz_of_learnable_images(tmp_path: Path) -> None:
    from benchmarks import train_memory

    folder = train_memory.write_data_set(tmp_path / "set", train=20, test=7)
    with np.load(folder / "arrays.npz") as arrays:
        images, labels = arrays["x_train"], arrays["y_train"]
        assert images.shape == (20 + train_memory.VALIDATION, 32, 32, 3)
        assert arrays["x_test"].shape == (7, 32, 32, 3) and arrays["y_test"].tolist() == [*range(7)]
    assert images.dtype == np.uint8 and labels.tolist()[:12] == [*range(10), 0, 1]
    for image, label in zip(images[:30], labels[:30], strict=True):
        bar = np.zeros(32, bool)
        bar[3 * label : 3 * label + 2] = True
        assert np.all(image[bar] == 255) and np.all(image[~bar] < 40)  # the label's bar only
    assert "class 9" in (folder / "dataset.yaml").read_text()


def test_train_speeds_input_pipeline_reads_every_prepared_example(prepared: Path) -> None:
    """(e) of `make bench` on a small prepared split: each part of the way is timed over
    the whole training split."""
    from benchmarks import measure

    rates = measure.input_pipeline(prepared)
    assert len(rates) == 4 and all(rate > 0 for rate in rates.values()), rates
