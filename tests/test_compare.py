"""`difftrain compare`: runs side by side, metrics only when like for like, a note naming what differs otherwise."""

from __future__ import annotations

import json
import shutil

import pytest
from PIL import Image
from typer.testing import CliRunner

from difftrain.cli import app
from difftrain.config import load_config
from difftrain.errors import UserError
from difftrain.training.trainer import train
from tests.conftest import tiny_overrides

PROTOCOL = {"event": "eval", "extractor": "difftrain-small-classifier", "extractor_sha256": "ab12", "n_samples": 500,
            "sampler": "heun", "steps": 18, "guidance": 1.0}


def evaluated(run, fid: float, **protocol) -> None:
    with open(run / "metrics.jsonl", "a") as f:
        f.write(json.dumps({**PROTOCOL, "images": 64, "fid": fid, "fid_floor": 0.3, "kid": fid / 100, **protocol}) + "\n")


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory, digits_dir):
    root = tmp_path_factory.mktemp("compare")
    train(load_config(overrides=tiny_overrides(digits_dir, **{"train.grid_every_images": 32})), root / "a", progress=False)
    shutil.copytree(root / "a", root / "b")
    return root / "a", root / "b"


def test_like_for_like_runs_are_set_side_by_side(two_runs, tmp_path):
    a, b = (shutil.copytree(r, tmp_path / r.name) for r in two_runs)
    evaluated(a, 2.5)
    evaluated(b, 1.25)
    result = CliRunner().invoke(app, ["compare", str(a), str(b), "--out", str(tmp_path / "cmp")], catch_exceptions=False)
    assert result.exit_code == 0
    c = json.loads((tmp_path / "cmp" / "compare.json").read_text())
    assert c["metrics"] == ["fid", "kid"] and c["notes"] == [] and c["protocol"]["n_samples"] == 500
    md = (tmp_path / "cmp" / "compare.md").read_text()
    assert "| FID | 2.5 (0.3) | 1.25 (0.3) |" in md and "500 samples, heun 18 steps" in md
    assert "2.5 (0.3)" in result.output
    for picture in ("compare.png", "samples.png"):
        assert Image.open(tmp_path / "cmp" / picture).size[0] > 100
    grid = Image.open(sorted((a / "samples").glob("grid-*.png"))[-1])
    assert Image.open(tmp_path / "cmp" / "samples.png").height == grid.height + 16  # the names above the grids


def test_runs_that_are_not_like_for_like_get_a_note_instead_of_numbers(two_runs, tmp_path):
    a, b = (shutil.copytree(r, tmp_path / r.name) for r in two_runs)
    evaluated(a, 2.5)
    evaluated(b, 1.25, n_samples=2000, steps=10)
    c = json.loads((CliRunner().invoke(app, ["compare", str(a), str(b), "--out", str(tmp_path / "cmp")],
                                       catch_exceptions=False), (tmp_path / "cmp" / "compare.json").read_text())[1])
    assert c["metrics"] == [] and c["protocol"] is None
    assert "not like for like" in c["notes"][0] and "n_samples (500, 2000)" in c["notes"][0] and "steps (18, 10)" in c["notes"][0]
    assert not (tmp_path / "cmp" / "compare.png").exists()
    with pytest.raises(UserError, match="at least two runs"):
        CliRunner().invoke(app, ["compare", str(a)], catch_exceptions=False)


def test_a_plot_of_one_point_has_axes_from_zero(tmp_path, monkeypatch):
    from difftrain.evaluation import plots

    seen = []
    monkeypatch.setattr(plots.atomic, "write_figure", lambda fig, path: seen.append(fig) or path)
    plots._figure({"fid": {"heun": [(55040, 0.3)]}}, {"fid": {"floor": 0.22}}, "training images", tmp_path / "p.png")
    ax = seen[0].axes[0]
    assert ax.get_xlim() == (0, 110080) and ax.get_ylim()[0] == 0 and ax.get_ylim()[1] > 0.3
