"""A hand-written SVG line chart (no plotting library): stacked panels, one polyline per series."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from xml.sax.saxutils import escape

COLORS = ("#d62728", "#1f77b4", "#2ca02c", "#9467bd", "#ff7f0e")


@dataclass
class Panel:
    """One chart: series name -> [(x, y), ...], all on the same axes."""

    title: str
    y_label: str
    series: dict[str, list[tuple[float, float]]]
    y_from_zero: bool = True
    notes: list[str] = field(default_factory=list)  # lines of text under the title
    markers: list[tuple[float, str]] = field(default_factory=list)  # dashed vertical lines at x


def nice_ticks(lo: float, hi: float, target: int = 6) -> list[float]:
    """Round tick values (1, 2, 5 x 10^k steps) covering [lo, hi], about `target` of them."""
    if hi <= lo:
        hi = lo + 1.0
    raw = (hi - lo) / max(target - 1, 1)
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 5, 10) if m * mag >= raw)
    ticks = [round(math.floor(lo / step) * step, 10)]
    while ticks[-1] < hi - step * 1e-9:
        ticks.append(round(ticks[-1] + step, 10))
    return ticks


def _fmt(v: float) -> str:
    return f"{v:.0f}" if abs(v - round(v)) < 1e-9 else f"{v:g}"


def _panel(p: Panel, top: float, width: float, height: float, x_label: str) -> list[str]:
    left, right, pad_top, pad_bottom = 70.0, 20.0, 46.0 + 14 * len(p.notes), 44.0
    pw, ph = width - left - right, height - pad_top - pad_bottom
    xs = [x for pts in p.series.values() for x, _ in pts] or [0.0, 1.0]
    ys = [y for pts in p.series.values() for _, y in pts] or [0.0, 1.0]
    y_lo, y_hi = (min(0.0, min(ys)) if p.y_from_zero else min(ys)), max(ys)
    if p.y_from_zero:
        y_hi = max(y_hi, 0.0)
    if y_hi - y_lo < 1e-9:
        y_lo, y_hi = y_lo - 1.0, y_hi + 1.0
    yt = nice_ticks(y_lo, y_hi)
    x0, x1 = min(xs), max(xs)  # the x-axis spans the data exactly
    xt = [v for v in nice_ticks(x0, x1, 8) if x0 - 1e-9 <= v <= x1 + 1e-9]
    y0, y1 = yt[0], yt[-1]

    def sx(x: float) -> float:
        return left + (x - x0) / ((x1 - x0) or 1.0) * pw

    def sy(y: float) -> float:
        return top + pad_top + ph - (y - y0) / ((y1 - y0) or 1.0) * ph

    title = (
        f'<text x="{left:.0f}" y="{top + 20:.0f}" font-size="15" font-weight="bold">'
        f"{escape(p.title)}</text>"
    )
    out = [title]
    for i, note in enumerate(p.notes):
        out.append(
            f'<text x="{left:.0f}" y="{top + 36 + 14 * i:.0f}" font-size="11" fill="#444">'
            f"{escape(note)}</text>"
        )
    for v in yt:
        y = sy(v)
        out.append(
            f'<line x1="{left:.1f}" y1="{y:.1f}" x2="{left + pw:.1f}" y2="{y:.1f}" '
            f'stroke="#ddd" stroke-width="1"/>'
        )
        out.append(
            f'<text x="{left - 6:.1f}" y="{y + 4:.1f}" font-size="11" text-anchor="end">'
            f"{_fmt(v)}</text>"
        )
    for v in xt:
        x = sx(v)
        out.append(
            f'<line x1="{x:.1f}" y1="{top + pad_top + ph:.1f}" x2="{x:.1f}" '
            f'y2="{top + pad_top + ph + 4:.1f}" stroke="#000"/>'
        )
        out.append(
            f'<text x="{x:.1f}" y="{top + pad_top + ph + 17:.1f}" font-size="11" '
            f'text-anchor="middle">{_fmt(v)}</text>'
        )
    out.append(
        f'<rect x="{left:.1f}" y="{top + pad_top:.1f}" width="{pw:.1f}" height="{ph:.1f}" '
        f'fill="none" stroke="#000"/>'
    )
    out.append(
        f'<text x="{left + pw / 2:.1f}" y="{top + height - 8:.1f}" font-size="12" '
        f'text-anchor="middle">{escape(x_label)}</text>'
    )
    cy = top + pad_top + ph / 2
    out.append(
        f'<text x="16" y="{cy:.1f}" font-size="12" text-anchor="middle" '
        f'transform="rotate(-90 16 {cy:.1f})">{escape(p.y_label)}</text>'
    )
    for mx, label in p.markers:
        if x0 <= mx <= x1:
            out.append(
                f'<line x1="{sx(mx):.1f}" y1="{top + pad_top:.1f}" x2="{sx(mx):.1f}" '
                f'y2="{top + pad_top + ph:.1f}" stroke="#777" stroke-dasharray="4 3"/>'
            )
            # the label on the side of the line with more room
            dx, anchor = (-4, "end") if sx(mx) > left + pw / 2 else (4, "start")
            out.append(
                f'<text x="{sx(mx) + dx:.1f}" y="{top + pad_top + ph - 6:.1f}" font-size="11" '
                f'fill="#555" text-anchor="{anchor}">{escape(label)}</text>'
            )
    for i, (name, pts) in enumerate(p.series.items()):
        color = COLORS[i % len(COLORS)]
        coords = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in pts)
        out.append(
            f'<polyline class="series" data-name="{escape(name)}" fill="none" '
            f'stroke="{color}" stroke-width="1.6" points="{coords}"/>'
        )
        lx, ly = left + pw - 150, top + pad_top + 16 + 16 * i
        out.append(
            f'<line x1="{lx:.1f}" y1="{ly - 4:.1f}" x2="{lx + 22:.1f}" y2="{ly - 4:.1f}" '
            f'stroke="{color}" stroke-width="2.5"/>'
        )
        out.append(f'<text x="{lx + 28:.1f}" y="{ly:.1f}" font-size="12">{escape(name)}</text>')
    return out


def svg_chart(panels: list[Panel], x_label: str, width: int = 900, panel_height: int = 320) -> str:
    """An SVG document with the panels stacked top to bottom, sharing the x-axis label."""
    heights = [panel_height + 14 * len(p.notes) for p in panels]
    total = sum(heights)
    body: list[str] = []
    top = 0.0
    for p, h in zip(panels, heights):
        body += _panel(p, top, width, h, x_label)
        top += h
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{total}" '
        f'viewBox="0 0 {width} {total}" font-family="sans-serif">\n'
        f'<rect width="{width}" height="{total}" fill="#fff"/>\n' + "\n".join(body) + "\n</svg>\n"
    )
