"""Inline SVG charts and HTML tables for the run report: no JavaScript library, nothing
fetched, so the report is one self-contained file."""
import html
import math
from typing import Iterable, Sequence, Tuple

PLOT_W, PLOT_H, PAD = 640, 220, 44
E = html.escape
COLOUR = "#3b6ea8"


def svg(body: str, width: int, height: int, title: str) -> str:
    return (f'<svg class="plot" role="img" aria-label="{E(title)}" width="{width}" '
            f'height="{height}" viewBox="0 0 {width} {height}" '
            f'xmlns="http://www.w3.org/2000/svg"><title>{E(title)}</title>{body}</svg>')


def nice_max(value: float) -> float:
    if value <= 0:
        return 1.0
    step = 10 ** math.floor(math.log10(value))
    for m in (1, 2, 2.5, 5, 10):
        if value <= m * step:
            return m * step
    return 10 * step


def axes(y_max: float, x_labels: Sequence[Tuple[float, str]], y_unit: str) -> str:
    parts = [f'<line x1="{PAD}" y1="{PLOT_H - PAD}" x2="{PLOT_W - 10}" y2="{PLOT_H - PAD}" '
             'stroke="#444"/>',
             f'<line x1="{PAD}" y1="10" x2="{PAD}" y2="{PLOT_H - PAD}" stroke="#444"/>']
    for frac in (0, 0.5, 1):
        y = PLOT_H - PAD - frac * (PLOT_H - PAD - 10)
        parts.append(f'<text x="{PAD - 4}" y="{y + 4:.1f}" text-anchor="end" '
                     f'font-size="11">{y_max * frac:g}</text>')
        parts.append(f'<line x1="{PAD}" y1="{y:.1f}" x2="{PLOT_W - 10}" y2="{y:.1f}" '
                     'stroke="#ddd"/>')
    for x, label in x_labels:
        parts.append(f'<text x="{x:.1f}" y="{PLOT_H - PAD + 14}" text-anchor="middle" '
                     f'font-size="10">{E(label)}</text>')
    parts.append(f'<text x="12" y="{(PLOT_H - PAD) / 2}" font-size="11" '
                 f'transform="rotate(-90 12 {(PLOT_H - PAD) / 2})" '
                 f'text-anchor="middle">{E(y_unit)}</text>')
    return "".join(parts)


def column_chart(items: Sequence[Tuple[str, float]], title: str, y_unit: str,
                 label_every: int = 1) -> str:
    """Vertical bars, one per item."""
    if not items or not any(v for _, v in items):
        return '<p class="empty">nothing to plot</p>'
    top = nice_max(max(v for _, v in items))
    inner_w, inner_h = PLOT_W - PAD - 10, PLOT_H - PAD - 10
    width = inner_w / len(items)
    bars, labels = [], []
    for i, (label, value) in enumerate(items):
        h = inner_h * value / top
        x = PAD + i * width
        bars.append(f'<rect class="bar" x="{x + 1:.1f}" y="{PLOT_H - PAD - h:.1f}" '
                    f'width="{max(1.0, width - 2):.1f}" height="{h:.1f}" fill="{COLOUR}">'
                    f'<title>{E(label)}: {value:g}</title></rect>')
        if i % label_every == 0:
            labels.append((x + width / 2, label))
    return svg(axes(top, labels, y_unit) + "".join(bars), PLOT_W, PLOT_H, title)


def line_chart(points: Sequence[Tuple[float, float]], title: str, y_unit: str) -> str:
    """A polyline of (x seconds, y) points."""
    if not points:
        return '<p class="empty">nothing to plot</p>'
    x_max = max(max(x for x, _ in points), 1.0)
    top = nice_max(max(y for _, y in points))
    inner_w, inner_h = PLOT_W - PAD - 10, PLOT_H - PAD - 10

    def at(x, y):
        return PAD + inner_w * x / x_max, PLOT_H - PAD - inner_h * y / top

    coords = " ".join(f"{px:.1f},{py:.1f}" for px, py in (at(x, y) for x, y in points))
    ticks = [(at(x_max * f, 0)[0], f"{x_max * f:.0f} s") for f in (0, 0.25, 0.5, 0.75, 1)]
    line = (f'<polyline class="series" points="{coords}" fill="none" stroke="{COLOUR}" '
            'stroke-width="2"/>')
    return svg(axes(top, ticks, y_unit) + line, PLOT_W, PLOT_H, title)


def bar_list(items: Sequence[Tuple[str, int]], title: str) -> str:
    """Horizontal bars with their labels, for long names."""
    if not items:
        return '<p class="empty">nothing to plot</p>'
    row_h, label_w = 20, 220
    width = PLOT_W + 80
    top = max(n for _, n in items)
    rows = []
    for i, (label, n) in enumerate(items):
        y = i * row_h
        w = (width - label_w - 60) * n / top
        rows.append(f'<text x="{label_w - 6}" y="{y + 14}" text-anchor="end" font-size="12">'
                    f'{E(label[:40])}</text><rect class="bar" x="{label_w}" y="{y + 3}" '
                    f'width="{max(1.0, w):.1f}" height="{row_h - 6}" fill="{COLOUR}"/>'
                    f'<text x="{label_w + w + 4:.1f}" y="{y + 14}" font-size="11">{n}</text>')
    return svg("".join(rows), width, row_h * len(items) + 4, title)


def table(headers: Sequence[str], rows: Iterable[Sequence]) -> str:
    head = "".join(f"<th>{E(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{cell}</td>" for cell in row) + "</tr>"
                   for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"
