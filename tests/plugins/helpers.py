"""Assertions shared by the analysis tests."""

from __future__ import annotations


def assert_labelled(figs: list) -> None:
    """Every analysis returns at least one figure, each with a title and axis titles."""
    assert figs, "an analysis must return at least one figure"
    for fig in figs:
        assert fig.layout.title.text
        assert any(ax.title.text for ax in fig.select_xaxes())
        assert all(ax.title.text for ax in fig.select_yaxes())
