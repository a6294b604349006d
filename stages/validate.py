"""validate: every value in params.yaml checked before any stage's outputs are deleted.

Reads  params.yaml (every key), data/dataset.json (check_data's summary of the data set:
       its training images, classes and image shape, for limits that depend on them) and
       the PARAMS tuple of each stage module named on the command line (parsed, not
       imported).
Writes data/params/<stage>.json for each of those stages: that stage's values, checked.
Run    dvc repro validate
       (python -m stages.validate params.yaml data/dataset.json data/params stages/*.py)

Why a stage: DVC deletes a stage's outputs before it runs the stage's command, so a stage
that refuses its params has already lost its model or metrics. Every other stage depends
on its own file written here, so DVC runs this one first and stops at a bad value with
every output intact. A stage whose own values did not change gets a byte-identical file
(same hash), so it is not re-run, and its run-cache entries still match. The keys come
from the stage modules (which dvc.yaml also lists as this stage's deps), not from
dvc.yaml, which DVC refuses as a dependency.

It imports no TensorFlow (a test checks) and takes well under a second.
"""

from __future__ import annotations

import argparse
import ast
import json
from pathlib import Path

from loopline.dataset import validation_count
from loopline.files import atomic_output, read_sealed_json, run_stage
from loopline.params import SPECS, check_params, check_train_params, read_document
from loopline.sizes import check_model_size


def stage_keys(module_path: Path) -> tuple[str, ...]:
    """The `PARAMS = (...)` tuple of a stage module, read from its source without running it."""
    tree = ast.parse(module_path.read_text(), str(module_path))
    for node in tree.body:
        if isinstance(node, ast.Assign) and [
            target.id for target in node.targets if isinstance(target, ast.Name)
        ] == ["PARAMS"]:
            keys = ast.literal_eval(node.value)
            unknown = [key for key in keys if key not in SPECS]
            if unknown:
                raise ValueError(f"{module_path}: PARAMS lists unknown key {unknown[0]!r}")
            return tuple(keys)
    raise ValueError(f"{module_path}: no PARAMS = (...) tuple of the params it reads")


def _is_count(value: object, least: int = 0) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= least


def summary_problem(summary: object) -> str:
    """What in `summary` is not as check_data writes it ("" if nothing): the values that
    validate reads, and their types."""
    if not isinstance(summary, dict):
        return f"a JSON {type(summary).__name__}, expected an object"
    classes, shape, splits = (summary.get(key) for key in ("classes", "shape", "splits"))
    train = splits.get("train") if isinstance(splits, dict) else None
    checks = {
        "dataset": isinstance(summary.get("dataset"), str),
        "classes": isinstance(classes, list)
        and len(classes) >= 2
        and all(isinstance(name, str) for name in classes),
        "shape": isinstance(shape, list)
        and len(shape) in (2, 3)
        and all(_is_count(side, 1) for side in shape)
        and shape[2:] in ([], [3]),
        "validation_size": _is_count(summary.get("validation_size"), 1),
        "splits.train.examples": isinstance(train, dict) and _is_count(train.get("examples"), 1),
    }
    wrong = [key for key, right in checks.items() if not right]
    return f"{wrong[0]} is missing or of the wrong type" if wrong else ""


def read_summary(path: Path) -> dict:
    """check_data's summary of the data set, checked to be what check_data writes."""
    if not (path.exists() or path.is_symlink()):
        raise FileNotFoundError(f"{path}: no such file; run `dvc repro check_data`")
    fix = "re-create it with `dvc repro -f check_data`"
    summary = read_sealed_json(path, fix)
    problem = summary_problem(summary)
    if problem:
        raise ValueError(f"{path}: not check_data's summary ({problem}); {fix}")
    return summary


def check_together(params: dict, summary: dict, path: str) -> None:
    """Limits that involve two values, or the data: refused here, not after deleting."""
    if summary.get("dataset") != params["dataset"]:
        raise ValueError(
            f"{path}: dataset: {params['dataset']!r}, but data/dataset.json describes "
            f"{summary.get('dataset')!r}; run `dvc repro` (not a single stage)"
        )
    images = summary["splits"]["train"]["examples"]
    validation = validation_count(params["validation_size"], summary["validation_size"], images)
    if validation >= images:
        raise ValueError(
            f"{path}: validation_size: got {params['validation_size']} ({validation:,} "
            f"images), expected fewer than the {images:,} training images of {params['dataset']}"
        )
    train_examples = images - validation
    if params["max_train_examples"] is not None:
        train_examples = min(train_examples, params["max_train_examples"])
    check_model_size(params["model"], tuple(summary["shape"]), len(summary["classes"]), path)
    # The number of replicas is known only once train has its devices: it checks that.
    check_train_params(params, train_examples, replicas=1)


def validate(params_path: Path, summary_path: Path, out_dir: Path, modules: list[Path]) -> None:
    """Check every key of `params_path`; write each stage's checked values to `out_dir`."""
    params = check_params(read_document(params_path), tuple(SPECS), params_path)
    check_together(params, read_summary(summary_path), str(params_path))
    with atomic_output(out_dir) as temporary:
        temporary.mkdir()
        for module in modules:
            values = {key: params[key] for key in stage_keys(module)}
            (temporary / f"{module.stem}.json").write_text(json.dumps(values, indent=2) + "\n")
    print(f"validate: {len(params)} params checked")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("params", type=Path, help="the params file (params.yaml)")
    parser.add_argument("summary", type=Path, help="check_data's summary of the data set")
    parser.add_argument("out", type=Path, help="directory for one checked file per stage")
    parser.add_argument("modules", type=Path, nargs="+", help="the stage modules (.py)")
    arguments = parser.parse_args()
    validate(arguments.params, arguments.summary, arguments.out, arguments.modules)


if __name__ == "__main__":
    run_stage(main)
