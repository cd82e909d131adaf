"""A report opened in a real headless browser (Debian's Chromium, driven by Playwright):
it loads with no console error and no request leaving the page, every image decodes, and the
numbers in its tables are those of metrics.json.

Skipped where Chromium or Playwright is missing, except in CI (CI set), where it must run:
``.ci/run`` installs Chromium, the ``test`` extra installs Playwright (no browser download:
the system Chromium is used)."""

from __future__ import annotations

import json
import os
import shutil
import struct
from pathlib import Path

import pytest

from advlab.report import html as rh
from report_fixtures import (
    VERDICTS,
    demo_tree,
    make_run,
    robust_config,
    robust_metrics,
    train_config,
    train_metrics,
)

pytestmark = pytest.mark.browser


def _browser() -> str:
    """The system Chromium; skips (fails in CI) where it or Playwright is missing."""
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        path, why = None, "Playwright is not installed (pip install -e '.[test]')"
    else:
        why = "chromium is not installed (apt-get install chromium)"
    if path is None:
        if os.environ.get("CI"):
            pytest.fail(f"{why}: the browser test must run in CI")
        pytest.skip(why)
    return path


def _figures(tmp: Path) -> dict[str, bytes]:
    """Two real matplotlib figures (PNG and SVG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = {}
    for name in ("curve.png", "curve.svg"):
        fig, ax = plt.subplots(figsize=(3, 2))
        ax.plot([0, 0.1, 0.2], [0.9, 0.5, 0.1], marker="o")
        ax.set(xlabel="eps", ylabel="accuracy")
        fig.savefig(tmp / name)
        plt.close(fig)
        out[name] = (tmp / name).read_bytes()
    return out


# what the page reports, read in the browser: numbers by run, images, layout
COLLECT = """async () => ({
  decoded: (await Promise.allSettled([...document.images].map(i => i.decode())))
      .map(r => r.status === 'fulfilled' ? 'ok' : String(r.reason)),
  numbers: [...document.querySelectorAll('[data-path]')].map(e => ({
      run: e.closest('section.run').dataset.run, path: e.dataset.path,
      value: e.dataset.value, text: e.textContent})),
  images: [...document.images].map(i => ({alt: i.alt, complete: i.complete,
      width: i.naturalWidth, height: i.naturalHeight})),
  runs: [...document.querySelectorAll('section.run')].map(s => s.dataset.run),
  scripts: document.scripts.length,
  failColour: getComputedStyle(document.querySelector('td.fail')).backgroundColor,
  passColour: getComputedStyle(document.querySelector('td.pass')).backgroundColor,
})"""


def test_report_in_a_headless_browser(tmp_path):
    chromium = _browser()
    from playwright.sync_api import sync_playwright

    root = tmp_path / "runs"
    figs = _figures(tmp_path)
    train = make_run(root / "train", train_config(), train_metrics(), figs)
    ev = make_run(root / "eval-robust", robust_config(str(train)),
                  robust_metrics(0.59, 0.06, failed=("more-steps",)),
                  {"accuracy_vs_eps.png": figs["curve.png"]})
    recipe = make_run(root / "recipe", {"command": "recipe"}, VERDICTS)
    demo = demo_tree(root)
    page_file = rh.report_runs([train, ev, recipe, demo], tmp_path / "report.html")
    url = page_file.as_uri()

    console, errors, requests = [], [], []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.on("console", lambda m: console.append((m.type, m.text)))
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.on("requestfailed", lambda r: errors.append(f"failed {r.url}"))
            page.on("request", lambda r: requests.append(r.url))
            page.goto(url, wait_until="load")
            page.wait_for_function("[...document.images].every(i => i.complete)")
            seen = page.evaluate(COLLECT)
            page.screenshot(path=str(tmp_path / "report.png"), full_page=True)
        finally:
            browser.close()

    assert not errors, errors
    assert not [m for m in console if m[0] in ("error", "warning")], console
    # nothing but the page itself and its inlined images
    assert requests[0] == url and all(u.startswith("data:image/") for u in requests[1:]), \
        [u[:80] for u in requests]
    assert seen["scripts"] == 0
    # every image decoded, at the size its file says
    assert len(seen["images"]) == 2 + 1 + 3  # train's two, eval's one, the demo parts'
    assert seen["decoded"] == ["ok"] * len(seen["images"]), seen["decoded"]
    for img in seen["images"]:
        assert img["complete"] and img["width"] > 0 and img["height"] > 0, img
        if img["alt"].endswith(".png"):
            path = next(root.rglob(img["alt"]))
            head = path.read_bytes()[16:24]  # IHDR: width, height
            assert (img["width"], img["height"]) == struct.unpack(">II", head), img
    # the numbers in the tables are those of metrics.json, exactly, and all of them
    assert seen["runs"] == [str(train), str(ev), str(recipe), str(demo),
                            str(demo / "attacks"), str(demo / "classifier"),
                            str(demo / "generative" / "vae")]
    docs = {r: json.loads((Path(r) / "metrics.json").read_text()) for r in seen["runs"]}
    shown: dict[str, set[str]] = {}
    for n in seen["numbers"]:
        truth = rh.resolve_pointer(docs[n["run"]], n["path"])
        assert float(n["value"]) == truth and not isinstance(truth, bool), n
        assert n["text"] == rh.format_number(truth, "%" in n["text"]), n
        shown.setdefault(n["run"], set()).add(n["path"])
    from report_fixtures import number_pointers

    for run, doc in docs.items():
        assert set(number_pointers(doc)) <= shown.get(run, set()), run
    assert len(seen["numbers"]) > 100
    # failed checks and verdicts are coloured differently from passed ones
    assert seen["failColour"] != seen["passColour"]
    shot = tmp_path / "report.png"
    assert shot.is_file() and shot.stat().st_size > 10_000
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
