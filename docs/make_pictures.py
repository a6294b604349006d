"""Make README's two pictures from the last `dvc repro`: docs/curves.png, the top-level plots
of dvc.yaml (loss and accuracy per epoch, train and validation) as `dvc plots show` draws
them, screenshotted by headless Chromium; and docs/mistakes.png, a copy of
metrics/mistakes.png (written by `evaluate`).

Run  make pictures  (or  python docs/make_pictures.py)  from the repository's root.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import NoReturn

import yaml

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
CHROMIUM_FLAGS = (
    "--headless",
    "--disable-gpu",
    "--hide-scrollbars",
    "--no-sandbox",  # Chromium refuses to run as root (CI) without it
    "--virtual-time-budget=10000",  # lets vega-embed finish drawing before the screenshot
    "--force-device-scale-factor=2",  # twice the pixels: sharp text on any screen
    "--window-size=1010,380",  # two 300x300 charts with their axes and legends, no more
)
# The charts side by side, without vega-embed's action menu and the smoothing slider of
# DVC's template: a picture cannot use them.
STYLE = "body { display: flex; } .vega-embed details, .vega-bindings { display: none; }"
MISTAKES = Path("metrics/mistakes.png")


def fail(message: str) -> NoReturn:
    sys.exit(f"make_pictures: {message}")


def main() -> None:
    browser = next((shutil.which(name) for name in BROWSERS if shutil.which(name)), None)
    if browser is None:
        fail("no Chromium on PATH (Debian: apt-get install chromium; macOS: install Chrome)")
    # Top-level plots: [{id: {x: ..., y: {file: column}}}]; each id is a `dvc plots` target.
    plots = {
        name: options
        for entry in yaml.safe_load(Path("dvc.yaml").read_text())["plots"]
        for name, options in entry.items()
    }
    needed = [*(Path(file) for options in plots.values() for file in options["y"]), MISTAKES]
    missing = [str(path) for path in needed if not path.exists()]
    if missing:  # `dvc plots show` would only warn, and draw empty charts
        fail(f"{', '.join(missing)} missing: run `dvc repro` first")

    picture = Path("docs/curves.png").resolve()
    picture.unlink(missing_ok=True)
    with tempfile.TemporaryDirectory() as folder:
        # stdout is only the page's address; errors go to stderr, shown as they come.
        command = ["dvc", "plots", "show", *plots, "--out", folder]
        if subprocess.run(command, stdout=subprocess.DEVNULL).returncode != 0:
            fail("`dvc plots show` failed (its message is above)")
        page = Path(folder) / "index.html"
        head, end, body = page.read_text().rpartition("</head>")  # the last: scripts hold one
        page.write_text(f"{head}<style>{STYLE}</style>{end}{body}")
        command = [browser, *CHROMIUM_FLAGS, f"--screenshot={picture}", page.as_uri()]
        browsed = subprocess.run(command, capture_output=True, text=True, timeout=120)
    if not picture.exists():
        fail(f"Chromium wrote no screenshot: {browsed.stderr.strip()[-300:]}")
    shutil.copyfile(MISTAKES, "docs/mistakes.png")
    print("wrote docs/curves.png and docs/mistakes.png")


if __name__ == "__main__":
    main()
