"""Plotly figure builders shared by the analyses: arrays + labels in, ``plotly.graph_objects.Figure`` out.

Builders know nothing of models or plugins; each returns a figure with a title and labelled axes
(:func:`dtinterp.viz.style.finish`). Modules: :mod:`.heatmap` (labelled matrices, diverging scales
centred at 0), :mod:`.clustergram` (a heatmap in clustered order with its dendrogram), :mod:`.lines`
(series with error bands), :mod:`.strip` (box/strip plots, labelled strips, histograms raw or binned, bar panels),
:mod:`.gridmap` (numbers per cell of the agent's view, one panel per object/colour/state, over the rendered
view; rendered views), :mod:`.graph` (a layered graph of heads), :mod:`.scatter` (PCA scatter and scree),
:mod:`.panels` (small-multiple layouts in one pass), :mod:`.style` (colour scales, robust limits, the
900-px height cap, the house template).
"""

from dtinterp.viz.clustergram import clustergram
from dtinterp.viz.heatmap import heatmap
from dtinterp.viz.lines import line_plot
from dtinterp.viz.strip import bar_panels, binned_histogram, histogram, strip_plot

__all__ = ["bar_panels", "binned_histogram", "clustergram", "heatmap", "histogram", "line_plot", "strip_plot"]
