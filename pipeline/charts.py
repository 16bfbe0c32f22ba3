"""Inline SVG charts and HTML tables for the run report: no JavaScript library, nothing
fetched, so the report is one self-contained file.

Every axis labels its numbers in one human style (`0`, `500k`, `1.0M`), leaves room for its
title beside the tick labels, and keeps its last tick label inside the picture."""
import html
import math
from typing import Iterable, List, Optional, Sequence, Tuple

PLOT_W, PLOT_H = 660, 240
LEFT, RIGHT, TOP, BOTTOM = 70, 28, 12, 44  # room for tick labels and the axis titles
E = html.escape
COLOUR = "#3b6ea8"
TIME_STEPS_S = (0.1, 0.2, 0.5, 1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600,
                7200, 10800, 21600, 43200, 86400, 172800, 604800)
MAX_TIME_TICKS = 7
Tick = Tuple[float, str]


def svg(body: str, width: int, height: int, title: str) -> str:
    return (f'<svg class="plot" role="img" aria-label="{E(title)}" width="{width}" '
            f'height="{height}" viewBox="0 0 {width} {height}" '
            f'xmlns="http://www.w3.org/2000/svg"><title>{E(title)}</title>{body}</svg>')


def human(value: float) -> str:
    """A number as people read it on an axis: 0, 7.5, 250, 1.5k, 500k, 1.0M, 2.5G."""
    for size, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= size:
            scaled = value / size
            return f"{scaled:.1f}{suffix}" if abs(scaled) < 10 else f"{scaled:.0f}{suffix}"
    if value == int(value):
        return str(int(value))
    return f"{value:.2g}" if abs(value) < 1 else f"{value:.3g}"


def count(n: int) -> str:
    """A count in full with thousands separators: 1,000,000."""
    return f"{n:,}" if isinstance(n, int) else str(n)


def nice_max(value: float) -> float:
    if value <= 0:
        return 1.0
    step = 10 ** math.floor(math.log10(value))
    for m in (1, 2, 2.5, 5, 10):
        if value <= m * step * (1 + 1e-9):
            return m * step
    return 10 * step


def time_label(seconds: float, step: float, x_max: float) -> str:
    """`seconds` since the start, in the unit the tick step reads best in (`h:mm` on runs
    of an hour or more)."""
    if x_max >= 3600 and step >= 60:
        return f"{int(seconds // 3600)}:{int(seconds % 3600 // 60):02d}"
    if step >= 60:
        return f"{seconds / 60:g} min"
    if step < 1:
        return f"{seconds:.1f} s" if seconds else "0 s"
    return f"{seconds:g} s"


def time_ticks(x_max: float) -> List[Tick]:
    """Round time ticks from 0 to at most `x_max` seconds: 0.5 s apart on a 2-second run,
    30 min apart on a 2-hour one."""
    step = next((s for s in TIME_STEPS_S if x_max / s <= MAX_TIME_TICKS - 1),
                TIME_STEPS_S[-1])
    return [(i * step, time_label(i * step, step, x_max))
            for i in range(int(x_max / step + 1e-9) + 1)]


def axes(y_max: float, x_ticks: Sequence[Tick], y_title: str, x_title: str = "",
         x_of=None, counts: bool = False) -> str:
    """Axis lines, y ticks at 0, half and `y_max` (no half tick between counts that is no
    whole number), the x ticks (`(x pixel, label)`, or `(value, label)` placed by `x_of`),
    and both titles outside the tick labels."""
    base = PLOT_H - BOTTOM
    parts = [f'<line x1="{LEFT}" y1="{base}" x2="{PLOT_W - RIGHT}" y2="{base}" stroke="#444"/>',
             f'<line x1="{LEFT}" y1="{TOP}" x2="{LEFT}" y2="{base}" stroke="#444"/>']
    for frac in (0, 0.5, 1):
        if counts and frac == 0.5 and y_max * frac != int(y_max * frac):
            continue
        y = base - frac * (base - TOP)
        parts.append(f'<text x="{LEFT - 5}" y="{y + 4:.1f}" text-anchor="end" '
                     f'font-size="11">{human(y_max * frac)}</text>')
        parts.append(f'<line x1="{LEFT}" y1="{y:.1f}" x2="{PLOT_W - RIGHT}" y2="{y:.1f}" '
                     'stroke="#ddd"/>')
    for i, (x, label) in enumerate(x_ticks):
        px = x_of(x) if x_of else x
        anchor = "end" if i == len(x_ticks) - 1 and px > PLOT_W - RIGHT - 12 else "middle"
        parts.append(f'<text x="{px:.1f}" y="{base + 15}" text-anchor="{anchor}" '
                     f'font-size="10">{E(label)}</text>')
    middle = (TOP + base) / 2
    parts.append(f'<text x="14" y="{middle}" font-size="11" '
                 f'transform="rotate(-90 14 {middle})" text-anchor="middle">{E(y_title)}</text>')
    if x_title:
        parts.append(f'<text x="{(LEFT + PLOT_W - RIGHT) / 2}" y="{PLOT_H - 6}" '
                     f'font-size="11" text-anchor="middle">{E(x_title)}</text>')
    return "".join(parts)


def column_chart(items: Sequence[Tuple[str, float]], title: str, y_title: str,
                 label_every: int = 1, x_title: str = "", empty: str = "nothing to plot") -> str:
    """Vertical bars, one per item; `empty` says why there are none."""
    if not items or not any(v for _, v in items):
        return f'<p class="empty">{E(empty)}</p>'
    top = nice_max(max(v for _, v in items))
    inner_w, inner_h = PLOT_W - LEFT - RIGHT, PLOT_H - BOTTOM - TOP
    width = inner_w / len(items)
    bars, labels = [], []
    for i, (label, value) in enumerate(items):
        h = inner_h * value / top
        x = LEFT + i * width
        bars.append(f'<rect class="bar" x="{x + 1:.1f}" y="{PLOT_H - BOTTOM - h:.1f}" '
                    f'width="{max(1.0, width - 2):.1f}" height="{h:.1f}" fill="{COLOUR}">'
                    f'<title>{E(label)}: {human(value)}</title></rect>')
        if i % label_every == 0:
            labels.append((x + width / 2, label))
    return svg(axes(top, labels, y_title, x_title, counts=True) + "".join(bars), PLOT_W,
               PLOT_H, title)


def line_chart(points: Sequence[Tuple[float, float]], title: str, y_title: str,
               x_title: str = "time since the first record",
               x_end: Optional[float] = None) -> str:
    """A polyline of (x seconds, y) points on a time axis with round ticks, from 0 to
    `x_end` (default: the last point)."""
    if not points:
        return '<p class="empty">nothing to plot</p>'
    x_max = max([x for x, _ in points] + [x_end or 0]) or 1.0
    top = nice_max(max(y for _, y in points))
    inner_w, inner_h = PLOT_W - LEFT - RIGHT, PLOT_H - BOTTOM - TOP

    def at(x, y):
        return LEFT + inner_w * x / x_max, PLOT_H - BOTTOM - inner_h * y / top

    coords = " ".join(f"{px:.1f},{py:.1f}" for px, py in (at(x, y) for x, y in points))
    line = (f'<polyline class="series" points="{coords}" fill="none" stroke="{COLOUR}" '
            'stroke-width="2"/>')
    if x_max >= 3600 and x_title:
        x_title += " (h:mm)"
    return svg(axes(top, time_ticks(x_max), y_title, x_title, lambda x: at(x, 0)[0]) + line,
               PLOT_W, PLOT_H, title)


def bar_list(items: Sequence[Tuple[str, int]], title: str) -> str:
    """Horizontal bars with their labels, for long names."""
    if not items:
        return '<p class="empty">nothing to plot</p>'
    row_h, label_w = 20, 220
    width = PLOT_W + 60
    top = max(n for _, n in items)
    rows = []
    for i, (label, n) in enumerate(items):
        y = i * row_h
        w = (width - label_w - 80) * n / top
        rows.append(f'<text x="{label_w - 6}" y="{y + 14}" text-anchor="end" font-size="12">'
                    f'{E(label[:40])}</text><rect class="bar" x="{label_w}" y="{y + 3}" '
                    f'width="{max(1.0, w):.1f}" height="{row_h - 6}" fill="{COLOUR}"/>'
                    f'<text x="{label_w + w + 4:.1f}" y="{y + 14}" font-size="11">'
                    f'{count(n)}</text>')
    return svg("".join(rows), width, row_h * len(items) + 4, title)


def thumbnail_scatter(points: Sequence[Tuple[float, float, Optional[str], str]],
                      title: str, size: int = 40) -> str:
    """Points `(x, y, thumbnail data URI or None, caption)` scaled into a square; a point
    with a thumbnail is drawn as the picture, the others as dots."""
    if not points:
        return '<p class="empty">nothing to plot</p>'
    side, margin = 620, size // 2 + 4
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    x0, y0 = min(xs), min(ys)
    span = max(max(xs) - x0, max(ys) - y0) or 1.0
    scale = (side - 2 * margin) / span
    dots, pictures = [], []
    for x, y, uri, caption in points:
        px, py = margin + (x - x0) * scale, side - margin - (y - y0) * scale
        if uri:
            pictures.append(f'<image class="thumb" href="{uri}" x="{px - size / 2:.1f}" '
                            f'y="{py - size / 2:.1f}" width="{size}" height="{size}">'
                            f'<title>{E(caption)}</title></image>')
        else:
            dots.append(f'<circle class="dot" cx="{px:.1f}" cy="{py:.1f}" r="3" '
                        f'fill="{COLOUR}" fill-opacity="0.6"><title>{E(caption)}</title>'
                        '</circle>')
    frame = (f'<rect x="0.5" y="0.5" width="{side - 1}" height="{side - 1}" fill="none" '
             'stroke="#ddd"/>')
    return svg(frame + "".join(dots) + "".join(pictures), side, side, title)


def table(headers: Sequence[str], rows: Iterable[Sequence]) -> str:
    head = "".join(f"<th>{E(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{cell}</td>" for cell in row) + "</tr>"
                   for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"
