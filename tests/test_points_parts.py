"""The points modality's building blocks: built-in sets, CSV/Parquet tables, sample distances, the MLP, scatter plots."""

from __future__ import annotations

import math
import sys
from statistics import NormalDist

import numpy as np
import pytest
import torch

from difftrain.data.point_sources import (BUILTIN_POINTS, PointTable, gaussian_mixture_parameters, generate_points,
                                          read_point_table)
from difftrain.errors import UserError
from difftrain.evaluation import sample_distances
from difftrain.evaluation.sample_distances import energy_distance, sliced_wasserstein
from difftrain.models.mlp import MLP, MLPConfig, build_mlp
from difftrain.modalities.points_plot import save_scatter


# -- built-in point sets -------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(BUILTIN_POINTS))
def test_builtin_sets_are_float32_deterministic_and_labelled_as_described(name):
    table = generate_points(name, 501, seed=3)
    assert isinstance(table, PointTable)
    assert table.points.shape == (501, 2) and table.points.dtype == np.float32
    assert np.isfinite(table.points).all()
    assert table.columns == ["x", "y"] and table.rejected == []
    assert table.source == {"builtin": name, "seed": 3}
    again = generate_points(name, 501, seed=3)
    np.testing.assert_array_equal(table.points, again.points)
    assert not np.array_equal(table.points, generate_points(name, 501, seed=4).points)
    if name == "swissroll":
        assert table.labels is None and table.class_names == []
        assert 0.7 < table.points.std() < 1.3  # rescaled to about unit std
    else:
        assert table.labels.dtype == np.int64 and table.labels.shape == (501,)
        assert set(table.labels.tolist()) == set(range(len(table.class_names)))
        assert table.class_names == sorted(table.class_names)


def test_moons_and_circles_class_names_match_their_geometry():
    moons = generate_points("moons", 2000)
    assert moons.class_names == ["lower", "upper"]
    upper = moons.points[moons.labels == 1]
    lower = moons.points[moons.labels == 0]
    assert upper[:, 1].mean() > lower[:, 1].mean() + 0.5
    circles = generate_points("circles", 2000)
    assert circles.class_names == ["inner", "outer"]
    radius = np.linalg.norm(circles.points, axis=1)
    assert radius[circles.labels == 0].mean() == pytest.approx(0.5, abs=0.03)
    assert radius[circles.labels == 1].mean() == pytest.approx(1.0, abs=0.03)


@pytest.mark.parametrize("name,count,std", [("gaussians25", 25, 0.05), ("gaussian_mixture", 8, 0.02)])
def test_gaussian_mixtures_match_their_true_parameters(name, count, std):
    means, true_std = gaussian_mixture_parameters(name)
    assert means.shape == (count, 2) and true_std == std
    table = generate_points(name, 100 * count, seed=1)
    assert len(table.class_names) == count
    assert np.bincount(table.labels).tolist() == [100] * count  # balanced
    for k in range(count):
        own = table.points[table.labels == k].astype(np.float64)
        np.testing.assert_allclose(own.mean(0), means[k], atol=4 * std / 10)
        np.testing.assert_allclose(own.std(0), std, rtol=0.2)
    if name == "gaussians25":
        assert set(map(tuple, means)) == {(x, y) for x in (-4, -2, 0, 2, 4) for y in (-4, -2, 0, 2, 4)}
        assert table.class_names[:6] == ["r0c0", "r0c1", "r0c2", "r0c3", "r0c4", "r1c0"]
        np.testing.assert_array_equal(means[table.class_names.index("r1c3")], [2.0, -2.0])  # col -> x, row -> y
    else:
        np.testing.assert_allclose(np.linalg.norm(means, axis=1), 2.0)


def test_unknown_builtin_and_bad_count_are_user_errors():
    with pytest.raises(UserError, match="unknown built-in point set 'spiral'.*moons"):
        generate_points("spiral", 10)
    with pytest.raises(UserError, match="positive integer"):
        generate_points("moons", 0)


# -- CSV and Parquet tables ----------------------------------------------------------------------------------

def _write(tmp_path, text, name="points.csv"):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_csv_features_labels_and_sorted_class_names(tmp_path):
    path = _write(tmp_path, "a,b,kind\n1,2,dog\n3.5,-4e-1,cat\n  5 , 6 ,dog\n")
    table = read_point_table(path, label_column="kind")
    assert table.columns == ["a", "b"]
    assert table.points.dtype == np.float32
    np.testing.assert_allclose(table.points, [[1, 2], [3.5, -0.4], [5, 6]])
    assert table.class_names == ["cat", "dog"]
    assert table.labels.dtype == np.int64 and table.labels.tolist() == [1, 0, 1]
    assert table.rejected == [] and table.source == {"file": str(path)}

    only_b = read_point_table(path, label_column="kind", columns=["b"])  # 1-D is fine
    assert only_b.points.shape == (3, 1) and only_b.columns == ["b"]


def test_numeric_labels_sort_as_numbers(tmp_path):
    path = _write(tmp_path, "x,y\n0,10\n1,9\n2,2\n")
    table = read_point_table(path, label_column="y")
    assert table.class_names == ["2", "9", "10"]
    assert table.labels.tolist() == [2, 1, 0]


def test_bad_cells_are_rejected_by_file_line_and_column(tmp_path):
    text = ("x,y,label\n"
            "1,2,a\n"
            "oops,3,b\n"      # line 3: text in a feature column
            "4,,a\n"          # line 4: empty cell
            "\n"              # a blank line still counts in the numbering
            "5,nan,b\n"       # line 6: NaN
            "6,inf,a\n"       # line 7: infinite
            "7,1e39,a\n"      # line 8: beyond float32
            "8,9\n"           # line 9: a cell short
            "10,11,\n"        # line 10: no label
            "12,13,b\n")
    table = read_point_table(_write(tmp_path, text), label_column="label")
    assert table.points.tolist() == [[1, 2], [12, 13]]
    assert table.labels.tolist() == [0, 1] and table.class_names == ["a", "b"]
    rows = {r["row"]: r["reason"] for r in table.rejected}
    assert sorted(rows) == [3, 4, 6, 7, 8, 9, 10]
    assert rows[3] == "line 3: column 'x' has 'oops', not a number"
    assert "column 'y' is empty" in rows[4]
    assert "NaN" in rows[6] and "infinite" in rows[7] and "float32" in rows[8]
    assert "2 cells; the header has 3" in rows[9]
    assert "label column 'label' is empty" in rows[10]


def test_missing_columns_list_the_available_ones(tmp_path):
    path = _write(tmp_path, "x,y,label\n1,2,a\n")
    with pytest.raises(UserError, match=r"no column 'z'.*its columns are: x, y, label"):
        read_point_table(path, columns=["x", "z"])
    with pytest.raises(UserError, match=r"no column 'class' for --label-column; its columns are: x, y, label"):
        read_point_table(path, label_column="class")
    with pytest.raises(UserError, match="both the label"):
        read_point_table(path, label_column="x", columns=["x", "y"])
    with pytest.raises(UserError, match="no feature columns"):
        read_point_table(path, columns=[])


def test_text_column_names_the_column_and_the_fix(tmp_path):
    path = _write(tmp_path, "x,species,y\n1,setosa,2\n3,virginica,4\n")
    with pytest.raises(UserError) as err:
        read_point_table(path)
    message = str(err.value)
    assert str(path) in message and "'species' holds no numbers" in message and "'setosa' on line 2" in message
    assert "--label-column species" in message and "--columns x,y" in message
    assert read_point_table(path, label_column="species").class_names == ["setosa", "virginica"]


def test_file_problems_are_user_errors(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        read_point_table(tmp_path / "nope.csv")
    with pytest.raises(UserError, match="empty"):
        read_point_table(_write(tmp_path, ""))
    with pytest.raises(UserError, match="looks like data, not column names"):
        read_point_table(_write(tmp_path, "1,2\n3,4\n"))
    with pytest.raises(UserError, match="no data rows"):
        read_point_table(_write(tmp_path, "x,y\n"))
    with pytest.raises(UserError, match="names column 'x' twice"):
        read_point_table(_write(tmp_path, "x,x\n1,2\n"))
    with pytest.raises(UserError, match=r"no usable rows; all 3 were rejected \(line 2: column 'y' is empty; line 3: column 'x' has 'a'"):
        read_point_table(_write(tmp_path, "x,y\n1,\na,3\n2,3,4\n"))
    with pytest.raises(UserError, match=r"column 'y' has no usable numbers.*leave it out with --columns x$"):
        read_point_table(_write(tmp_path, "x,y\n1,\n2,nan\n"))
    latin = tmp_path / "latin.csv"
    latin.write_bytes("x,é\n1,2\n".encode("latin-1"))
    with pytest.raises(UserError, match="not UTF-8"):
        read_point_table(latin)


def test_semicolon_csv_with_a_byte_order_mark(tmp_path):
    path = tmp_path / "excel.csv"
    path.write_bytes("\ufeffx;y\r\n1;2\r\n3;4\r\n".encode("utf-8"))
    table = read_point_table(path)
    assert table.columns == ["x", "y"] and table.points.tolist() == [[1, 2], [3, 4]]


def test_parquet_without_pyarrow_says_how_to_install_it(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "pyarrow", None)
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
    path = tmp_path / "points.parquet"
    path.write_bytes(b"PAR1")
    with pytest.raises(UserError, match="pip install pyarrow"):
        read_point_table(path)


def test_parquet_columns_and_null_cells(tmp_path):
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    path = tmp_path / "points.parquet"
    pq.write_table(pa.table({"x": [1.0, None, 3.0], "y": [1, 2, 3], "label": [0, 1, 1]}), path)
    table = read_point_table(path, label_column="label")
    assert table.points.tolist() == [[1, 1], [3, 3]] and table.class_names == ["0", "1"]
    assert table.rejected == [{"row": 2, "reason": "row 2: column 'x' is empty"}]


# -- sample distances ----------------------------------------------------------------------------------------

def test_sliced_wasserstein_closed_forms():
    # Point masses in 1-D: W2 is the distance between them, whatever the sample sizes.
    assert sliced_wasserstein(np.zeros((10, 1)), np.full((7, 1), 3.0)) == pytest.approx(3.0)
    # Unequal sizes from quantile functions: {0, 1} vs {0, 0.5, 1} differ by 0.5 on t in [1/3, 2/3): W2^2 = 1/12.
    assert sliced_wasserstein(np.array([0.0, 1.0]), np.array([0.0, 0.5, 1.0])) == pytest.approx(math.sqrt(1 / 12))
    rng = np.random.default_rng(0)
    x = rng.standard_normal((4000, 3))
    m = np.array([3.0, 0.0, 4.0])
    # The same points shifted by m: each projection is shifted by theta.m, so SW^2 = mean (theta.m)^2 -> |m|^2 / D.
    assert sliced_wasserstein(x, x + m, projections=4000) == pytest.approx(5 / math.sqrt(3), rel=0.03)
    # Independent samples of N(0, I) and N(m, I), of different sizes.
    y = rng.standard_normal((3000, 3)) + m
    assert sliced_wasserstein(x, y, projections=4000) == pytest.approx(5 / math.sqrt(3), rel=0.04)
    assert sliced_wasserstein(x, x) == 0.0
    assert sliced_wasserstein(x, y, seed=5) == sliced_wasserstein(y, x, seed=5)


def test_sliced_wasserstein_chunking_changes_nothing(monkeypatch):
    rng = np.random.default_rng(1)
    a, b = rng.standard_normal((300, 2)), rng.standard_normal((170, 2)) * 2
    whole = sliced_wasserstein(a, b, projections=64)
    monkeypatch.setattr(sample_distances, "_BLOCK_ELEMENTS", 1000)
    assert sliced_wasserstein(a, b, projections=64) == pytest.approx(whole, rel=1e-12)


def _energy_closed_form_1d(mu: float) -> float:
    """2 E|X-Y| - E|X-X'| - E|Y-Y'| for X ~ N(0,1), Y ~ N(mu,1). X - Y ~ N(-mu, 2), whose folded mean is
    sqrt(2) sqrt(2/pi) exp(-mu^2/4) + mu (2 Phi(mu/sqrt2) - 1); X - X' ~ N(0, 2) has E|.| = 2/sqrt(pi)."""
    phi_cdf = 0.5 * (1 + math.erf(mu / 2))  # Phi(mu / sqrt 2)
    e_xy = 2 / math.sqrt(math.pi) * math.exp(-mu * mu / 4) + mu * (2 * phi_cdf - 1)
    return 2 * e_xy - 2 * (2 / math.sqrt(math.pi))


def test_energy_distance_matches_its_closed_form():
    assert _energy_closed_form_1d(0.0) == 0.0
    # Normal quantiles at (i + 1/2)/n as the samples: their empirical law is N(0, 1) up to O(1/n), without sampling noise.
    quantiles = lambda n: np.array([NormalDist().inv_cdf((i + 0.5) / n) for i in range(n)])[:, None]
    for mu in (0.5, 2.0):
        assert energy_distance(quantiles(2000), quantiles(1500) + mu) == pytest.approx(_energy_closed_form_1d(mu), rel=0.02)
    # Point masses: E|X-Y| = distance, the within terms are 0.
    assert energy_distance(np.zeros((5, 2)), np.tile([3.0, 4.0], (4, 1))) == pytest.approx(10.0)


def test_energy_distance_is_the_u_statistic(monkeypatch):
    rng = np.random.default_rng(2)
    a, b = rng.standard_normal((60, 3)), rng.standard_normal((45, 3)) + 0.3
    d = lambda x, y: np.linalg.norm(x[:, None] - y[None], axis=-1)
    n, m = len(a), len(b)
    expected = 2 * d(a, b).mean() - d(a, a).sum() / (n * (n - 1)) - d(b, b).sum() / (m * (m - 1))
    assert energy_distance(a, b) == pytest.approx(expected, rel=1e-9)
    # Identical sets: the U-statistic is exactly -2 E|X-X'| / N (it is unbiased, not non-negative).
    u = d(a, a).sum() / (n * (n - 1))
    assert energy_distance(a, a) == pytest.approx(-2 * u / n, rel=1e-6)
    monkeypatch.setattr(sample_distances, "_BLOCK_ELEMENTS", 100)  # many small blocks
    assert energy_distance(a, b) == pytest.approx(expected, rel=1e-9)


def test_distances_refuse_mismatched_or_non_finite_samples():
    with pytest.raises(ValueError, match="same D"):
        sliced_wasserstein(np.zeros((4, 2)), np.zeros((4, 3)))
    with pytest.raises(ValueError, match="NaN"):
        energy_distance(np.array([[0.0], [np.nan]]), np.zeros((3, 1)))
    with pytest.raises(ValueError, match="at least 2"):
        energy_distance(np.zeros((1, 2)), np.zeros((3, 2)))


# -- the MLP denoiser ----------------------------------------------------------------------------------------

def test_mlp_shapes_zero_start_and_null_label():
    torch.manual_seed(0)
    net = build_mlp(MLPConfig(width=32, depth=2, embedding_dim=16), (3,), num_classes=4)
    assert net.num_classes == 4 and net.null_label == 4
    x, c_noise = torch.randn(5, 3), torch.randn(5)
    out = net(x, c_noise)
    assert out.shape == (5, 3) and out.dtype == torch.float32
    assert torch.equal(out, torch.zeros(5, 3))  # the output layer starts at zero: F = 0
    torch.nn.init.normal_(net.fc_out.weight)
    null = torch.full((5,), 4)
    for cond in (None, {}, {"other": torch.zeros(5)}):
        torch.testing.assert_close(net(x, c_noise, cond), net(x, c_noise, {"label": null}))
    assert not torch.allclose(net(x, c_noise), net(x, c_noise, {"label": torch.zeros(5, dtype=torch.long)}))
    assert not torch.allclose(net(x, c_noise), net(x, c_noise + 1))

    plain = build_mlp(MLPConfig(width=16, depth=1, embedding_dim=8), (1,), num_classes=0)
    assert plain.null_label is None and plain(torch.randn(4, 1), torch.randn(4)).shape == (4, 1)


def test_build_mlp_refuses_images():
    with pytest.raises(UserError, match=r"model.arch=mlp takes vectors.*\(28, 28, 1\)"):
        build_mlp(MLPConfig(), (28, 28, 1), 0)


def test_mlp_config_is_strict():
    with pytest.raises(ValueError):
        MLPConfig(widht=64)
    with pytest.raises(ValueError):
        MLPConfig(width=4)
    cfg = MLPConfig()
    with pytest.raises(ValueError):
        cfg.depth = 0
    with pytest.raises(ValueError, match="even"):
        MLPConfig(embedding_dim=9)
    assert all(f.description for f in MLPConfig.model_fields.values())


def test_mlp_overfits_sixteen_points_through_its_label():
    torch.manual_seed(0)
    net = MLP(2, 2, MLPConfig(width=64, depth=2, embedding_dim=16))
    x = torch.randn(8, 2).repeat(2, 1)  # the same inputs twice, with different labels and targets
    labels = torch.arange(2).repeat_interleave(8)
    c_noise = torch.randn(16)
    target = torch.randn(16, 2)
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    for _ in range(300):
        loss = (net(x, c_noise, {"label": labels}) - target).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 1e-3 * target.square().mean().item()


def test_mlp_lora_targets_are_linear_layers():
    net = MLP(2, 3, MLPConfig(width=16, depth=3, embedding_dim=8))
    for target in net.lora_targets():
        found = [m for name, m in net.named_modules() if name.endswith("." + target)]
        assert len(found) == 3 and all(isinstance(m, torch.nn.Linear) for m in found)
    peft = pytest.importorskip("peft")
    adapted = peft.get_peft_model(net, peft.LoraConfig(r=2, target_modules=net.lora_targets()))
    assert adapted(torch.randn(4, 2), torch.randn(4)).shape == (4, 2)


# -- scatter plots -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("dims,size", [(1, (480, 480)), (2, (480, 480)), (3, (720, 720)), (6, (960, 960))])
def test_scatter_png_opens_with_the_expected_size(tmp_path, dims, size):
    from PIL import Image

    rng = np.random.default_rng(0)
    points = rng.standard_normal((500, dims)).astype(np.float32)
    labels = rng.integers(0, 3, 500)
    path = save_scatter(points, tmp_path / "plots" / "scatter.png", labels=labels, class_names=["a", "b", "c"],
                        reference=rng.standard_normal((300, dims)), title="samples", columns=[f"c{i}" for i in range(dims)])
    assert path == tmp_path / "plots" / "scatter.png"
    with Image.open(path) as image:
        assert image.format == "PNG" and image.size == size
    assert [p.name for p in path.parent.iterdir()] == ["scatter.png"]  # no temporary file left


def test_scatter_handles_many_classes_non_finite_and_no_points(tmp_path):
    from PIL import Image

    table = generate_points("gaussians25", 5000)
    points = table.points.copy()
    points[:3] = np.nan
    path = save_scatter(points, tmp_path / "g25.png", labels=table.labels, class_names=table.class_names,
                        reference=table.points)
    with Image.open(path) as image:
        assert image.size == (480, 480)
    path = save_scatter(np.zeros((0, 2)), tmp_path / "empty.png")
    with Image.open(path) as image:
        assert image.size == (480, 480)
