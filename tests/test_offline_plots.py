"""`dvc plots show` renders every chart with no network, in a real browser.

A scratch git + DVC repository gets the project's dvc.yaml, .dvc/config (its
`plots.html_template`) and the vendored template, and tiny made-up files at the paths the
plots of dvc.yaml name. Headless Chromium then opens the page with every network request
sent to a dead proxy, and each chart's element must hold a rendered Vega view.
"""

import csv
import html
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from PIL import Image

from tests.conftest import REPO, scratch_env

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
BROWSER = next((shutil.which(name) for name in BROWSERS if shutil.which(name)), None)
ROWS = 4


def plot_files(pipeline: dict) -> dict[str, set[str]]:
    """Each plot file dvc.yaml names -> the columns its plots read (empty for images)."""
    files: dict[str, set[str]] = {}

    def add(path: str, *columns) -> None:
        fields = files.setdefault(path, set())
        for column in columns:
            fields.update([column] if isinstance(column, str) else column or [])

    for stage in pipeline["stages"].values():
        for entry in stage.get("plots", []):
            for path, options in entry.items():
                if not Path(path).suffix:
                    continue  # a directory of DVCLive's TSVs: the top-level plots name them
                options = options or {}
                add(path, options.get("x"), options.get("y"))
    for entry in pipeline.get("plots", []):
        # A top-level plot: a file, or an id with options whose `y` maps files to columns.
        for name, options in entry.items() if isinstance(entry, dict) else [(entry, None)]:
            options = options or {}
            if isinstance(options.get("y"), dict):
                for path, columns in options["y"].items():
                    add(path, options.get("x"), columns)
            else:
                add(name, options.get("x"), options.get("y"))
    return files


def write_fake(path, columns: set[str]) -> None:
    """A few rows of small integers (valid digits, epochs and values alike)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".png":
        Image.new("L", (8, 8), 128).save(path)
        return
    rows = [{column: (row + len(column)) % 10 for column in sorted(columns)} for row in range(ROWS)]
    if path.suffix == ".json":
        path.write_text(json.dumps(rows))
    else:
        with path.open("w", newline="") as file:
            delimiter = "\t" if path.suffix == ".tsv" else ","
            writer = csv.DictWriter(file, sorted(columns), delimiter=delimiter)
            writer.writeheader()
            writer.writerows(rows)


def run(*command, cwd):
    return subprocess.run(
        command, cwd=cwd, env=scratch_env(), check=True, capture_output=True, text=True
    )


@pytest.fixture(scope="module")
def page(tmp_path_factory):
    """The HTML `dvc plots show` writes in a scratch repository, and the id of each chart."""
    root = tmp_path_factory.mktemp("plots")
    run("git", "init", "-q", cwd=root)
    run("dvc", "init", "-q", cwd=root)
    shutil.copy(REPO / "dvc.yaml", root / "dvc.yaml")
    shutil.copy(REPO / "params.yaml", root / "params.yaml")  # dvc.yaml's ${dataset}
    shutil.copy(REPO / ".dvc/config", root / ".dvc/config")
    shutil.copytree(REPO / "vendor", root / "vendor")
    pipeline = yaml.safe_load((root / "dvc.yaml").read_text())
    for path, columns in plot_files(pipeline).items():
        write_fake(root / path, columns)
    run("dvc", "plots", "show", "-o", "out", cwd=root)
    source = (root / "out/index.html").read_text()
    charts = re.findall(r"vegaEmbed\('#([^']+)'", source)
    return root / "out/index.html", source, charts


def test_page_loads_nothing_from_the_network(page):
    _, source, charts = page
    assert charts, "no Vega chart on the page"
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", source)
    assert "vegaEmbed=" in source  # the inlined Vega-Embed defines it


def test_the_curves_the_confusion_matrix_and_the_digits_are_charts(page):
    _, _, charts = page
    assert {"Loss_per_epoch", "Accuracy_per_epoch", "metrics_confusion_csv"} <= set(charts)
    assert "metrics_per_class_json" in charts


@pytest.mark.skipif(BROWSER is None, reason="no Chromium here (Debian: apt-get install chromium)")
def test_every_chart_renders_in_headless_chromium_offline(page):
    path, _, charts = page
    command = [
        BROWSER,
        "--headless",
        "--no-sandbox",  # CI runs as root
        "--disable-gpu",
        # Any request leaves through a proxy that does not exist: the page must need none.
        "--proxy-server=127.0.0.1:9",
        "--proxy-bypass-list=<-loopback>",
        "--virtual-time-budget=10000",
        "--dump-dom",
        path.as_uri(),
    ]
    dom = subprocess.run(command, capture_output=True, text=True, timeout=120, check=True).stdout
    starts = sorted((dom.index(f'<div id="{chart}"'), chart) for chart in charts)
    ends = [start for start, _ in starts[1:]] + [len(dom)]
    for (start, chart), end in zip(starts, ends, strict=True):
        element = dom[start:end]
        assert "<canvas" in element or 'class="marks"' in element, (
            f"chart {chart} did not render: {html.unescape(element[:300])}"
        )
