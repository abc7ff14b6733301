"""`difftrain report RUN --html`: one self-contained page that a browser renders offline, pictures and all."""

from __future__ import annotations

import os
import shutil
import stat

import pytest
from typer.testing import CliRunner

from difftrain.cli import app
from difftrain.config import load_config
from difftrain.report.html import markdown_to_html
from difftrain.training.trainer import train
from tests.conftest import tiny_overrides


def test_the_markdown_the_card_uses_becomes_html(tmp_path):
    (tmp_path / "a.png").write_bytes(b"\x89PNG fake")
    html = markdown_to_html("---\nlicense: other\n---\n# Run `x`\n\n| metric | value |\n|---|---:|\n| FID | 0.5 |\n\n"
                            "- one **two**\n- three\n\n![grid](a.png) and [docs](https://x.org)\n\n```yaml\na: <b>\n```",
                            tmp_path)
    assert "<summary>Model card metadata (Hugging Face Hub)</summary><pre>license: other</pre>" in html
    assert "<h1>Run <code>x</code></h1>" in html and "<td class=num>0.5</td>" in html
    assert "<ul><li>one <strong>two</strong></li><li>three</li></ul>" in html
    assert 'src="data:image/png;base64,' in html and '<a href="https://x.org">docs</a>' in html
    assert "<pre>a: &lt;b&gt;</pre>" in html  # escaped: a config cannot inject markup


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(_chromium() is None, reason="no chromium installed (Debian: apt-get install chromium; .ci/run does)")
def test_the_page_renders_offline_in_a_real_browser(tmp_path, digits_dir):
    playwright = pytest.importorskip("playwright.sync_api", reason="pip install -e '.[dev]' installs playwright")
    run = tmp_path / "run"
    train(load_config(overrides=tiny_overrides(digits_dir, **{"train.grid_every_images": 32})), run, progress=False)
    result = CliRunner().invoke(app, ["report", str(run), "--html"], catch_exceptions=False)
    assert result.exit_code == 0 and (run / "report.html").is_file()
    assert stat.S_IMODE((run / "report.html").stat().st_mode) == 0o666 & ~_umask()  # readable as any file the user makes
    shutil.move(run / "report.html", tmp_path / "elsewhere.html")  # one file: it needs nothing beside it
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=_chromium(), args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1000, "height": 1400})
        page.route("**/*", lambda route: route.abort() if not route.request.url.startswith(("file:", "data:"))
                   else route.continue_())  # offline
        page.goto((tmp_path / "elsewhere.html").as_uri())
        assert page.inner_text("h1") == "difftrain run run"
        loaded = page.evaluate("Array.from(document.images).map(i => i.complete && i.naturalWidth > 0)")
        assert loaded and all(loaded)  # every picture drawn from the page itself
        assert page.locator("table").count() >= 2 and "Samples" in page.inner_text("body")
        page.screenshot(path=str(tmp_path / "report.png"), full_page=True)
        browser.close()
    assert (tmp_path / "report.png").stat().st_size > 10_000


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
