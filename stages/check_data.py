"""check_data: the data set folder, read whole and checked, before any stage's outputs go.

Reads  data/raw/<dataset>/: every image decoded (or every array read through), its
       dataset.yaml if any, the checksums it lists.
Writes data/dataset.json: the data set's layout, class names, image shape, its default
       validation size and the examples of each class per split, for validate (which
       checks params.yaml against them without reading the data) and for people; with
       the SHA-256 of its content, which validate checks.
Run    dvc repro check_data
       (python -m stages.check_data data/raw/mnist data/dataset.json)

Why a stage: DVC deletes a stage's outputs just before it runs the stage, so a damaged
image found by prepare would cost the prepared data, and found by train, the model. This
stage depends on the data folder alone, so it runs when the data changes (not when a
param does) and refuses bad data with one line naming the file, before validate, prepare
or train lose anything. It imports no TensorFlow.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from loopline.files import run_stage, seal, write_json
from loopline.survey import Survey, survey

PARAMS = ()


def check_data(folder: Path, out: Path) -> Survey:
    """Check the data set in `folder`; write its summary to `out`."""
    found = survey(folder)
    write_json(out, seal(found.to_json()))
    counts = ", ".join(f"{found.splits[split]['examples']:,} {split}" for split in found.splits)
    shape = "x".join(map(str, found.shape[1::-1]))  # width x height, as image viewers say
    colour = "colour" if len(found.shape) == 3 else "grey"
    print(
        f"check_data: {found.dataset}: {len(found.classes)} classes, {counts} images "
        f"({shape} {colour}, {found.layout})"
    )
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path, help="the data set's folder (data/raw/<dataset>)")
    parser.add_argument("out", type=Path, help="where to write the summary (JSON)")
    arguments = parser.parse_args()
    check_data(arguments.folder, arguments.out)


if __name__ == "__main__":
    run_stage(main)
