"""A dependency-free SVG line chart with a confidence band, for model cards.

Model cards are markdown read on code hosts and offline, where interactive plotly HTML (4 MB with its
library inline) is out of place; a few kB of SVG shows the same calibration curve.
"""

from __future__ import annotations

from collections.abc import Sequence
from html import escape


def band_chart_svg(
    x: Sequence[float],
    mean: Sequence[float],
    lo: Sequence[float],
    hi: Sequence[float],
    title: str,
    xlabel: str,
    ylabel: str,
    identity: bool = True,
    width: int = 560,
    height: int = 380,
) -> str:
    """SVG text: ``mean`` vs ``x`` with the ``[lo, hi]`` band shaded and (optionally) the line ``y = x``."""
    if not (len(x) == len(mean) == len(lo) == len(hi)) or len(x) < 2:
        raise ValueError("band_chart_svg needs equally long sequences of at least 2 points")
    left, right, top, bottom = 64, 20, 40, 52
    pw, ph = width - left - right, height - top - bottom
    x0, x1 = min(x), max(x)
    ys = [*mean, *lo, *hi] + ([x0, x1] if identity else [])
    y0, y1 = min(ys), max(ys)
    pad = 0.05 * (y1 - y0 or 1.0)
    y0, y1 = y0 - pad, y1 + pad

    def px(v: float) -> float:
        return left + (v - x0) / (x1 - x0 or 1.0) * pw

    def py(v: float) -> float:
        return top + (1 - (v - y0) / (y1 - y0)) * ph

    def path(xs: Sequence[float], vs: Sequence[float]) -> str:
        return " ".join(
            f"{'M' if i == 0 else 'L'}{px(a):.1f},{py(b):.1f}" for i, (a, b) in enumerate(zip(xs, vs))
        )

    band = (
        path(x, hi)
        + " "
        + " ".join(f"L{px(a):.1f},{py(b):.1f}" for a, b in zip(reversed(x), reversed(lo)))
        + " Z"
    )
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}" '
        'font-family="sans-serif" font-size="12">',
        f'<rect width="{width}" height="{height}" fill="white"/>',
        f'<text x="{width / 2:.0f}" y="22" text-anchor="middle" font-size="15">{escape(title)}</text>',
    ]
    for i in range(6):  # grid and tick labels
        vx = x0 + (x1 - x0) * i / 5
        vy = y0 + (y1 - y0) * i / 5
        parts.append(f'<line x1="{px(vx):.1f}" y1="{top}" x2="{px(vx):.1f}" y2="{top + ph}" stroke="#eee"/>')
        parts.append(
            f'<line x1="{left}" y1="{py(vy):.1f}" x2="{left + pw}" y2="{py(vy):.1f}" stroke="#eee"/>'
        )
        parts.append(f'<text x="{px(vx):.1f}" y="{top + ph + 16}" text-anchor="middle">{vx:.2g}</text>')
        parts.append(f'<text x="{left - 6}" y="{py(vy) + 4:.1f}" text-anchor="end">{vy:.2g}</text>')
    parts.append(f'<rect x="{left}" y="{top}" width="{pw}" height="{ph}" fill="none" stroke="#888"/>')
    if identity:
        lo_i, hi_i = max(x0, y0), min(x1, y1)
        if lo_i < hi_i:
            parts.append(
                f'<line x1="{px(lo_i):.1f}" y1="{py(lo_i):.1f}" x2="{px(hi_i):.1f}" y2="{py(hi_i):.1f}" '
                'stroke="#999" stroke-dasharray="5,4"/>'
            )
    parts.append(f'<path d="{band}" fill="rgb(31,119,180)" fill-opacity="0.25" stroke="none"/>')
    parts.append(f'<path d="{path(x, mean)}" fill="none" stroke="rgb(31,119,180)" stroke-width="2"/>')
    parts += [
        f'<circle cx="{px(a):.1f}" cy="{py(b):.1f}" r="2.5" fill="rgb(31,119,180)"/>' for a, b in zip(x, mean)
    ]
    parts.append(
        f'<text x="{left + pw / 2:.0f}" y="{height - 10}" text-anchor="middle">{escape(xlabel)}</text>'
    )
    parts.append(
        f'<text x="16" y="{top + ph / 2:.0f}" text-anchor="middle" transform="rotate(-90 16 {top + ph / 2:.0f})">'
        f"{escape(ylabel)}</text>"
    )
    legend_y = top + 14
    parts.append(
        f'<line x1="{left + 10}" y1="{legend_y}" x2="{left + 30}" y2="{legend_y}" stroke="rgb(31,119,180)" stroke-width="2"/>'
    )
    parts.append(f'<text x="{left + 36}" y="{legend_y + 4}">mean (95% CI band)</text>')
    if identity:
        parts.append(
            f'<line x1="{left + 10}" y1="{legend_y + 18}" x2="{left + 30}" y2="{legend_y + 18}" stroke="#999" stroke-dasharray="5,4"/>'
        )
        parts.append(f'<text x="{left + 36}" y="{legend_y + 22}">y = x</text>')
    parts.append("</svg>")
    return "\n".join(parts) + "\n"
