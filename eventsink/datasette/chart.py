"""The status page's chart: one sink's last hour as a small inline SVG (no script, no CDN).

Bars are events delivered (green) and failed (red) per bucket on the left scale; the line is
the events pending, on its own scale (right). The series comes from
:class:`eventsink.pipeline.history.SinkHistory`.
"""

from __future__ import annotations

from html import escape
from typing import Any

WIDTH, HEIGHT = 720, 150
LEFT, RIGHT, TOP, BOTTOM = 44, 52, 10, 22

DELIVERED = "#2e9e5b"
FAILED = "#d64545"
PENDING = "#3b6fd6"


def _compact(value: float) -> str:
    if value >= 10_000:
        return f"{value / 1000:.0f}k"
    if value >= 1000:
        return f"{value / 1000:.1f}k"
    return f"{value:.0f}"


MIN_BUCKETS = 20  # the narrowest window drawn (10 minutes of 30 s buckets)


def series_svg(series: dict[str, Any], label: str, since: float | None = None) -> str:
    """An SVG chart of ``series`` (``delivered``, ``failed``, ``pending`` lists).

    ``since`` (when the pipeline started) trims the buckets before it, keeping at least
    :data:`MIN_BUCKETS`, so a fresh start is not a sliver at the right of an empty hour.
    """
    delivered, failed, pending = series["delivered"], series["failed"], series["pending"]
    if since is not None:
        skip = int((since - series["start"]) // series["step"])
        skip = max(0, min(skip, len(delivered) - MIN_BUCKETS))
        delivered, failed, pending = delivered[skip:], failed[skip:], pending[skip:]
    count = len(delivered)
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    top_bars = max([*delivered, *failed, 1])
    top_pending = max([*pending, 1])
    slot = plot_w / max(count, 1)
    bar = max(slot / 2 - 0.5, 0.5)
    parts = [
        f'<svg class="eventsink-chart" role="img" viewBox="0 0 {WIDTH} {HEIGHT}" '
        f'width="100%" preserveAspectRatio="xMidYMid meet" '
        f'xmlns="http://www.w3.org/2000/svg"><title>{escape(label)}</title>',
        f'<rect x="{LEFT}" y="{TOP}" width="{plot_w}" height="{plot_h}" fill="#fafbfc" '
        'stroke="#e1e4e8"/>',
    ]
    for fraction in (0.5, 1.0):
        y = TOP + plot_h * (1 - fraction)
        parts.append(
            f'<line x1="{LEFT}" x2="{LEFT + plot_w}" y1="{y:.1f}" y2="{y:.1f}" '
            'stroke="#e1e4e8" stroke-dasharray="3 3"/>'
        )
        parts.append(
            f'<text x="{LEFT - 6}" y="{y + 4:.1f}" text-anchor="end" font-size="11" '
            f'fill="{DELIVERED}">{_compact(top_bars * fraction)}</text>'
        )
        parts.append(
            f'<text x="{LEFT + plot_w + 6}" y="{y + 4:.1f}" font-size="11" '
            f'fill="{PENDING}">{_compact(top_pending * fraction)}</text>'
        )
    for index in range(count):
        x = LEFT + index * slot
        for offset, values, colour, name in (
            (0.0, delivered, DELIVERED, "delivered"),
            (bar, failed, FAILED, "failed"),
        ):
            value = values[index]
            if not value:
                continue
            height = plot_h * value / top_bars
            parts.append(
                f'<rect class="bar-{name}" x="{x + offset:.1f}" y="{TOP + plot_h - height:.1f}" '
                f'width="{bar:.1f}" height="{height:.1f}" fill="{colour}">'
                f"<title>{value} {name}</title></rect>"
            )
    points = " ".join(
        f"{LEFT + (index + 0.5) * slot:.1f},{TOP + plot_h * (1 - value / top_pending):.1f}"
        for index, value in enumerate(pending)
    )
    parts.append(
        f'<polyline class="line-pending" points="{points}" fill="none" stroke="{PENDING}" '
        'stroke-width="1.5"/>'
    )
    minutes = count * series["step"] // 60
    baseline = HEIGHT - 6
    parts.append(
        f'<text x="{LEFT}" y="{baseline}" font-size="11" fill="#666">{minutes} min ago</text>'
    )
    parts.append(
        f'<text x="{LEFT + plot_w}" y="{baseline}" font-size="11" fill="#666" '
        'text-anchor="end">now</text>'
    )
    parts.append("</svg>")
    return "".join(parts)
