"""Render the report of each shipped recipe's file in headless Chromium; fail on a blank page or a missing figure.

For every ``recipes/deep-compression-<arch>.yaml`` the recipe's file (``out/recipes/<arch>.dsz``; ``--make``
compresses the committed baseline with the recipe when it is missing, about 10 minutes a model on one core) is
reported with its baseline, its sensitivity sweep (``benchmarks/results/pruning-sensitivity-<arch>`` when there)
and Fashion-MNIST, then opened in Chromium:

* the HTML: the figures every report has (waterfall, bytes per layer, one distribution per weight, energy, fit,
  sensitivity with a sweep) are there, each an inline ``<svg>`` with drawn content, and no external URL;
* the DOM Chromium builds: every figure laid out with a non-zero size, at desktop width and at a phone's
  (390 px), where the page must not scroll sideways (wide tables scroll inside their own boxes);
* a screenshot: not blank (not one colour, not almost all white).

``--screenshot docs/report-lenet5.png`` also keeps the LeNet-5 report's first screen as a PNG for the README.
Needs the Debian package ``chromium`` (not part of ``make test``, which checks the HTML itself). Run:

    .venv/bin/python scripts/check_report.py [--make] [--screenshot docs/report-lenet5.png]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PROBE = """<script>(function(){var figs=[].map.call(document.querySelectorAll("figure[data-figure]"),function(f){
var s=f.querySelector("svg,img"),r=s?s.getBoundingClientRect():{width:0,height:0};
return {name:f.dataset.figure,width:r.width,height:r.height}});
var right=0;[].forEach.call(document.querySelectorAll("main *"),function(e){var box=e.parentNode.closest(".scroll");
if(!box&&!e.closest("svg")){right=Math.max(right,e.getBoundingClientRect().right)}});
var p=document.createElement("pre");p.id="report-probe";p.textContent=JSON.stringify({figures:figs,
right:right,width:document.documentElement.getBoundingClientRect().width});document.body.appendChild(p)})();
</script>"""


def chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    sys.exit("chromium not found: apt-get install -y --no-install-recommends chromium")


def browse(html: Path, *args: str, width: int = 1000, height: int = 2000) -> subprocess.CompletedProcess[str]:
    cmd = [chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--mute-audio",
           f"--window-size={width},{height}", *args, html.as_uri()]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)


def narrow(text: str, width: int) -> str:
    """The page laid out ``width`` px wide (headless Chromium's windows are at least 500 px; the report's CSS has
    no media queries, so a root of that width lays it out as a phone's viewport would)."""
    return text.replace("</head>", f"<style>html{{width:{width}px}}</style></head>") if width < 500 else text


def probe(html: Path, width: int) -> dict:
    """Figures' laid-out sizes and the page's scroll width, from the DOM Chromium builds at ``width``."""
    with tempfile.TemporaryDirectory() as tmp:
        probed = Path(tmp) / html.name
        probed.write_text(narrow(html.read_text(), width).replace("</body>", PROBE + "</body>"))
        done = browse(probed, "--dump-dom", width=max(width, 500))
    match = re.search(r'<pre id="report-probe">(.*?)</pre>', done.stdout, re.S)
    if match is None:
        raise AssertionError(f"{html}: Chromium rendered no page at width {width} ({done.stderr[-300:]})")
    return dict(json.loads(match.group(1).replace("&quot;", '"').replace("&amp;", "&")))


def screenshot(html: Path, png: Path, width: int = 1000, height: int = 2000) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        page = Path(tmp) / html.name
        page.write_text(narrow(html.read_text(), width))
        browse(page, f"--screenshot={png}", width=max(width, 500), height=height)
    if not png.is_file():
        raise AssertionError(f"{html}: Chromium wrote no screenshot")
    from PIL import Image

    image = Image.open(png).convert("L")
    histogram = image.histogram()
    pixels = image.width * image.height
    if max(histogram) == pixels:
        raise AssertionError(f"{html}: the page is blank (one colour)")
    if sum(histogram[250:]) > 0.985 * pixels:
        raise AssertionError(f"{html}: the page is almost blank ({sum(histogram[250:]) / pixels:.1%} white)")


def expected_figures(dsz: Path, with_sweep: bool) -> set[str]:
    from deepshrink.codec import read_compressed

    names = {f"dist-{name}" for name in read_compressed(dsz).weights}
    return names | {"waterfall", "layer-bytes", "energy", "fit"} | ({"sensitivity"} if with_sweep else set())


def check(arch: str, dsz: Path, out_dir: Path, keep: Path | None) -> None:
    from deepshrink.report import write_html

    baseline = Path("benchmarks") / "baselines" / f"{arch}-fmnist.pt"  # relative: the working folder is ROOT
    sweep = Path("benchmarks") / "results" / f"pruning-sensitivity-{arch}"
    html = out_dir / f"report-{arch}.html"
    write_html(dsz, html, baseline=baseline if baseline.is_file() else None,
               sensitivity=sweep if sweep.is_dir() else None, dataset="fashion-mnist")
    text = html.read_text()
    if "http://" in text or "https://" in text:
        raise AssertionError(f"{html}: an external URL")
    in_html = re.findall(r'<figure data-figure="([^"]+)"><svg\b[^>]*>\s*<', text)
    want = expected_figures(dsz, sweep.is_dir())
    if set(in_html) != want:
        raise AssertionError(f"{html}: figures {sorted(in_html)}, expected {sorted(want)}")
    for width in (1000, 390):
        dom = probe(html, width)
        drawn = {f["name"] for f in dom["figures"] if f["width"] > 50 and f["height"] > 50}
        if drawn != want:
            raise AssertionError(f"{html} at {width} px: not drawn: {sorted(want - drawn)}")
        if dom["right"] > dom["width"] + 1:
            raise AssertionError(f"{html} at {width} px: the page is {dom['right']:.0f} px wide (scrolls sideways)")
    png = out_dir / f"report-{arch}.png"
    screenshot(html, png)
    screenshot(html, out_dir / f"report-{arch}-phone.png", width=390, height=1600)
    if keep is not None:
        screenshot(html, keep, width=1000, height=1750)
    print(f"{arch}: {dsz} -> {html}: {len(in_html)} figures drawn at 1000 and 390 px, screenshot {png}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--files", type=Path, help="folder of <arch>.dsz (default out/recipes)")
    parser.add_argument("--out", type=Path, default=ROOT / "out" / "report-check", help="reports and screenshots")
    parser.add_argument("--make", action="store_true", help="compress a missing file with its recipe")
    parser.add_argument("--screenshot", type=Path, help="keep the LeNet-5 report's first screen here")
    args = parser.parse_args()
    files, args.out = (ROOT / "out" / "recipes" if args.files is None else args.files).resolve(), args.out.resolve()
    shot = args.screenshot.resolve() if args.screenshot else None
    os.chdir(ROOT)  # a report names its file by the path given: keep that relative to the repository
    args.files = files.relative_to(ROOT) if files.is_relative_to(ROOT) else files
    args.out.mkdir(parents=True, exist_ok=True)
    recipes = sorted((ROOT / "recipes").glob("deep-compression-*.yaml"))
    if not recipes:
        sys.exit("no recipes/deep-compression-*.yaml")
    failed = []
    for recipe in recipes:
        arch = recipe.stem.removeprefix("deep-compression-")
        dsz = args.files / f"{arch}.dsz"
        if not dsz.is_file():
            if not args.make:
                sys.exit(f"{dsz} is missing: run with --make (or deepshrink compress "
                         f"benchmarks/baselines/{arch}-fmnist.pt --recipe {recipe.relative_to(ROOT)} --out {dsz})")
            subprocess.run([sys.executable, "-m", "deepshrink", "compress", str(ROOT / "benchmarks" / "baselines" /
                            f"{arch}-fmnist.pt"), "--recipe", str(recipe), "--dataset", "fashion-mnist", "--out",
                            str(dsz), "--quiet"], check=True, cwd=ROOT)
        try:
            check(arch, dsz, args.out, shot if arch == "lenet5" else None)
        except AssertionError as exc:
            failed.append(str(exc))
            print(f"FAIL {exc}", file=sys.stderr)
    if failed:
        sys.exit(f"{len(failed)} report(s) failed")


if __name__ == "__main__":
    main()
