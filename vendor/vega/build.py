"""Rebuild index.html: DVC's plots page with Vega, Vega-Lite and Vega-Embed inlined.

`dvc plots show` fills an HTML template; its default one loads these three scripts from a
CDN, so offline the charts stay blank. This template carries them instead (.dvc/config:
`plots.html_template`). It keeps dvc-render's `{refresh_tag}` and `{plot_divs}`
placeholders and leaves out `{scripts}`, which is where dvc-render would add the CDN tags.

Run   python vendor/vega/build.py   (needs `npm`: it fetches the packages from the npm
registry with `npm pack`). To move to other versions, edit PACKAGES and run it again.
"""

from __future__ import annotations

import subprocess
import tarfile
import tempfile
from pathlib import Path

HERE = Path(__file__).parent
# Package, version and the minified browser bundle inside its npm tarball, in load order
# (Vega-Embed needs the other two).
PACKAGES = (
    ("vega", "5.33.1", "package/build/vega.min.js"),
    ("vega-lite", "5.23.0", "package/build/vega-lite.min.js"),
    ("vega-embed", "6.29.0", "package/build/vega-embed.min.js"),
)
# dvc-render's default page (dvc_render/html.py, PAGE_HTML) with the scripts inlined.
PAGE = """<!DOCTYPE html>
<html>
<head>
    {refresh_tag}
    <meta charset="utf-8">
    <title>DVC Plot</title>
    <!-- Vega, Vega-Lite, Vega-Embed (BSD-3-Clause; see vendor/vega/LICENSE): inlined so
         that the page renders with no network. Rebuilt by vendor/vega/build.py. -->
%s
    <style>
        table {
            border-spacing: 15px;
        }
    </style>
</head>
<body>
    {plot_divs}
</body>
</html>
"""
PLACEHOLDERS = ("{plot_divs}", "{refresh_tag}", "{scripts}")


def bundle(package: str, version: str, member: str, directory: Path) -> str:
    """The minified bundle of package@version, from its npm registry tarball."""
    subprocess.run(
        ["npm", "pack", "--loglevel=error", f"{package}@{version}"],
        cwd=directory,
        check=True,
        stdout=subprocess.DEVNULL,
    )
    with tarfile.open(directory / f"{package}-{version}.tgz") as archive:
        text = archive.extractfile(member).read().decode("utf-8")
    # dvc-render fills the template with str.replace, and an inline script ends at the
    # first "</script": neither may occur inside a bundle.
    for forbidden in (*PLACEHOLDERS, "</script"):
        if forbidden in text:
            raise ValueError(f"{package}@{version}: contains {forbidden!r}; cannot inline it")
    return text


def main() -> None:
    with tempfile.TemporaryDirectory() as directory:
        scripts = [
            f"    <script>/* {package}@{version} */\n"
            f"{bundle(package, version, member, Path(directory))}\n    </script>"
            for package, version, member in PACKAGES
        ]
    (HERE / "index.html").write_text(PAGE % "\n".join(scripts), encoding="utf-8")


if __name__ == "__main__":
    main()
