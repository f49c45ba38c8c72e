"""benchmarks/lib/svgplot.py, the hand-written SVG chart of benchmarks/memory.py's soak."""

from __future__ import annotations

import importlib.util
import itertools
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

SVGPLOT = Path(__file__).resolve().parents[2] / "benchmarks" / "lib" / "svgplot.py"
NS = "{http://www.w3.org/2000/svg}"


def _svgplot():
    spec = importlib.util.spec_from_file_location("bench_svgplot", SVGPLOT)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up there
    spec.loader.exec_module(mod)
    return mod


def test_nice_ticks_cover_the_range_with_round_steps():
    svgplot = _svgplot()
    ticks = svgplot.nice_ticks(3.2, 97.0)
    assert ticks[0] <= 3.2 and ticks[-1] >= 97.0
    steps = {round(b - a, 9) for a, b in itertools.pairwise(ticks)}
    assert steps == {20.0}
    top = svgplot.nice_ticks(0.0, 66.4)
    assert top[0] == 0.0 and 66.4 <= top[-1] < 66.4 + (top[1] - top[0])
    assert svgplot.nice_ticks(5.0, 5.0)  # a flat series still gets an axis


def test_chart_is_valid_svg_with_one_polyline_per_series_inside_its_panel():
    svgplot = _svgplot()
    envoy = [(float(t), 60.0 + (t % 7) * 0.1) for t in range(-30, 600, 5)]
    sofamesh = [(float(t), 45.0 + (t % 3) * 0.1) for t in range(-30, 600, 5)]
    panels = [
        svgplot.Panel("RSS", "MB", {"Envoy 1.40": envoy, "sofamesh": sofamesh}, notes=["a<b"]),
        svgplot.Panel("fds", "fds", {"only": [(0.0, 10.0), (5.0, 12.0)]}, y_from_zero=False),
    ]
    root = ET.fromstring(svgplot.svg_chart(panels, "seconds", width=800, panel_height=300))
    assert root.tag == f"{NS}svg"
    lines = root.findall(f"{NS}polyline")
    assert [p.get("data-name") for p in lines] == ["Envoy 1.40", "sofamesh", "only"]
    texts = [t.text for t in root.iter(f"{NS}text")]
    assert "a<b" in texts and "Envoy 1.40" in texts and "seconds" in texts
    height = float(root.get("height"))
    for pl, n in zip(lines, (len(envoy), len(sofamesh), 2)):
        pts = [tuple(map(float, p.split(","))) for p in pl.get("points").split()]
        assert len(pts) == n
        assert all(0 <= x <= 800 and 0 <= y <= height for x, y in pts)
    # the first panel's series lie in its top half, the second panel's in the bottom half
    first = [float(p.split(",")[1]) for p in lines[0].get("points").split()]
    last = [float(p.split(",")[1]) for p in lines[2].get("points").split()]
    assert max(first) < min(last)
    # a higher value is drawn higher up (smaller y)
    env = [tuple(map(float, p.split(","))) for p in lines[0].get("points").split()]
    sof = [tuple(map(float, p.split(","))) for p in lines[1].get("points").split()]
    assert max(y for _, y in env) < min(y for _, y in sof)
