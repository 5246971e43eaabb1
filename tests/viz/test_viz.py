"""Figure builders: labels kept in order, diverging scales centred at 0, error bands, titles and axes."""

from __future__ import annotations

import numpy as np
import pytest

from dtinterp.viz import bar_panels, heatmap, histogram, line_plot, strip_plot


def test_heatmap_diverging_is_symmetric_about_zero_and_keeps_label_order():
    z = np.array([[0.5, -2.0, 1.0], [np.nan, 0.25, 0.0]])
    fig = heatmap(
        z, x_labels=[7, 3, 5], y_labels=["a", "b"], title="T", x_title="X", y_title="Y", diverging=True
    )
    trace = fig.data[0]
    assert trace.zmid == 0 and trace.zmin == -2.0 and trace.zmax == 2.0
    assert list(trace.x) == ["7", "3", "5"] and list(trace.y) == ["a", "b"]
    assert fig.layout.xaxis.type == "category"  # numeric labels in the given (e.g. clustered) order
    assert fig.layout.yaxis.autorange == "reversed"  # row 0 at the top, like the matrix
    assert (
        fig.layout.title.text == "T"
        and fig.layout.xaxis.title.text == "X"
        and fig.layout.yaxis.title.text == "Y"
    )
    np.testing.assert_array_equal(np.asarray(trace.z, dtype=float), z)
    fixed = heatmap(z, title="T", x_title="X", y_title="Y", diverging=True, zmax=1.0).data[0]
    assert (fixed.zmin, fixed.zmax) == (-1.0, 1.0)
    sequential = heatmap(np.abs(np.nan_to_num(z)), title="T", x_title="X", y_title="Y").data[0]
    assert sequential.zmid is None


def test_heatmap_rejects_mismatched_labels():
    with pytest.raises(ValueError, match="labels"):
        heatmap(np.zeros((2, 3)), x_labels=["a", "b"], title="T", x_title="X", y_title="Y")
    with pytest.raises(ValueError, match="2-D"):
        heatmap(np.zeros(3), title="T", x_title="X", y_title="Y")


def test_heatmap_hover_extra_is_attached():
    z, std = np.ones((2, 2)), np.full((2, 2), 0.5)
    trace = heatmap(z, title="T", x_title="X", y_title="Y", hover_extra=std, hover_extra_name="std").data[0]
    np.testing.assert_array_equal(np.asarray(trace.customdata, dtype=float), std)
    assert "std" in trace.hovertemplate


def test_line_plot_bands_span_y_plus_minus_error():
    x = np.arange(4)
    y, err = np.array([1.0, 2.0, 3.0, 4.0]), np.array([0.1, 0.2, np.nan, 0.4])
    fig = line_plot(x, {"a": y, "b": -y}, errors={"a": err}, title="T", x_title="t", y_title="v")
    assert len(fig.data) == 3  # band of a, line a, line b
    band = fig.data[0]
    expected = np.concatenate([y + np.nan_to_num(err), (y - np.nan_to_num(err))[::-1]])
    np.testing.assert_allclose(np.asarray(band.y, dtype=float), expected)
    assert band.showlegend is False and fig.data[1].name == "a" and fig.data[2].name == "b"
    assert fig.layout.xaxis.title.text == "t" and fig.layout.yaxis.title.text == "v"
    with pytest.raises(ValueError, match="shape"):
        line_plot(x, {"a": y[:3]}, title="T", x_title="t", y_title="v")


def test_strip_plot_groups_series_by_category_and_drops_nan():
    groups = {
        "model": {"L0": np.array([1.0, np.nan, 3.0]), "L1": np.array([4.0])},
        "rotated": {"L0": np.array([2.0]), "L1": np.array([5.0, 6.0])},
    }
    fig = strip_plot(groups, title="T", x_title="site", y_title="k", log_y=True)
    assert [t.name for t in fig.data] == ["model", "rotated"]
    assert list(fig.data[0].x) == ["L0", "L0", "L1"] and list(fig.data[0].y) == [1.0, 3.0, 4.0]
    assert fig.layout.boxmode == "group" and fig.layout.yaxis.type == "log"


def test_histogram_series_share_bins():
    fig = histogram(
        {"a": np.array([0.0, 1.0, np.nan]), "b": np.array([2.0, 4.0])}, title="T", x_title="x", nbins=8
    )
    bins = [t.xbins for t in fig.data]
    assert bins[0].start == bins[1].start == 0.0 and bins[0].size == bins[1].size == 0.5
    assert list(fig.data[0].x) == [0.0, 1.0]
    assert fig.layout.barmode == "overlay" and fig.layout.yaxis.title.text == "count"


def test_bar_panels_one_row_per_panel_with_errors():
    labels = ["embed", "0_attn_out", "L0H0"]
    fig = bar_panels(
        labels,
        {"norm": np.array([1.0, 2.0, 3.0]), "dla": np.array([-1.0, 0.5, 0.0])},
        errors={"norm": np.array([0.1, 0.2, 0.3])},
        colors=[0, 0, 1],
        title="T",
        x_title="component",
    )
    assert len(fig.data) == 2 and list(fig.data[1].x) == labels
    np.testing.assert_allclose(fig.data[0].error_y.array, [0.1, 0.2, 0.3])
    assert fig.data[1].error_y.array is None
    assert fig.layout.yaxis.title.text == "norm" and fig.layout.yaxis2.title.text == "dla"
    assert fig.layout.xaxis2.title.text == "component" and fig.layout.title.text == "T"
    assert fig.data[0].marker.color[0] != fig.data[0].marker.color[2]
    with pytest.raises(ValueError, match="panel"):
        bar_panels(labels, {"norm": np.ones(2)}, title="T", x_title="c")
