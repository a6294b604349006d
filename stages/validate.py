"""validate: every value in params.yaml checked before any stage's outputs are deleted.

Reads  params.yaml (every key), the header of data/raw/mnist.npz (the number of training
       images, for limits that depend on it) and the PARAMS tuple of each stage module
       named on the command line (parsed, not imported).
Writes data/params/<stage>.json for each of those stages: that stage's values, checked.
Run    dvc repro validate
       (python -m stages.validate params.yaml data/raw/mnist.npz data/params stages/*.py)

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
import zipfile
from pathlib import Path

import numpy as np

from loopline.files import atomic_output, run_stage
from loopline.params import SPECS, check_params, check_train_params, read_document


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


def training_images(raw_path: Path) -> int | None:
    """The number of training images in the .npz, read from x_train's header alone.

    None if the file cannot be read that way: prepare reports what is wrong with it.
    """
    try:
        with zipfile.ZipFile(raw_path) as archive, archive.open("x_train.npy") as file:
            version = np.lib.format.read_magic(file)
            read_header = (
                np.lib.format.read_array_header_1_0
                if version == (1, 0)
                else np.lib.format.read_array_header_2_0
            )
            shape = read_header(file)[0]
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
        return None
    return int(shape[0]) if shape else None


def check_together(params: dict, images: int | None, path: str) -> None:
    """Limits that involve two values, or the data: refused here, not after deleting."""
    if images is None:
        return
    if params["validation_size"] >= images:
        raise ValueError(
            f"{path}: validation_size: got {params['validation_size']}, expected fewer than "
            f"the {images} training images"
        )
    train_examples = images - params["validation_size"]
    if params["max_train_examples"] is not None:
        train_examples = min(train_examples, params["max_train_examples"])
    # The number of replicas is known only once train has its devices: it checks that.
    check_train_params(params, train_examples, replicas=1)


def validate(params_path: Path, raw_path: Path, out_dir: Path, modules: list[Path]) -> None:
    """Check every key of `params_path`; write each stage's checked values to `out_dir`."""
    params = check_params(read_document(params_path), tuple(SPECS), params_path)
    check_together(params, training_images(raw_path), str(params_path))
    with atomic_output(out_dir) as temporary:
        temporary.mkdir()
        for module in modules:
            values = {key: params[key] for key in stage_keys(module)}
            (temporary / f"{module.stem}.json").write_text(json.dumps(values, indent=2) + "\n")
    print(f"validate: {len(params)} params checked")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("params", type=Path, help="the params file (params.yaml)")
    parser.add_argument("raw", type=Path, help="the raw MNIST .npz (its header is read)")
    parser.add_argument("out", type=Path, help="directory for one checked file per stage")
    parser.add_argument("modules", type=Path, nargs="+", help="the stage modules (.py)")
    arguments = parser.parse_args()
    validate(arguments.params, arguments.raw, arguments.out, arguments.modules)


if __name__ == "__main__":
    run_stage(main)
