"""Bar charts as inline SVG, drawn on the server: no JavaScript, nothing fetched by the browser.

Pure: numbers in, markup out. Labels are escaped; the markup is safe to embed.
"""
from __future__ import annotations

from markupsafe import Markup, escape

BAR_COLOUR = "#3b6ea8"
TEXT = 'font-family="system-ui, sans-serif" font-size="12" fill="#333"'


def _money(value: float) -> str:
    if value >= 100:
        return f"${value:,.0f}"
    if value >= 1:
        return f"${value:,.2f}"
    return f"${value:.4f}".rstrip("0").rstrip(".") if value else "$0"


def fmt(value: float, unit: str) -> str:
    return _money(value) if unit == "usd" else f"{value:,.0f}"


def hbars(items: list[tuple[str, float]], unit: str = "usd", width: int = 560, title: str = "") -> Markup:
    """Horizontal bars, one row per (label, value), largest first as given."""
    if not items:
        return Markup('<p class="empty">No usage in this window.</p>')
    row, label_w, value_w = 22, 180, 90
    top = max(v for _, v in items) or 1.0
    bar_w = width - label_w - value_w
    height = row * len(items) + 4
    parts = [f'<svg class="chart" role="img" aria-label="{escape(title)}" width="{width}" height="{height}" '
             f'viewBox="0 0 {width} {height}" xmlns="http://www.w3.org/2000/svg">']
    for i, (label, value) in enumerate(items):
        y = i * row + 2
        w = max(1.0, bar_w * value / top) if value > 0 else 0.0
        short = label if len(label) <= 26 else label[:25] + "…"
        parts.append(f'<text x="{label_w - 6}" y="{y + 15}" text-anchor="end" {TEXT}>{escape(short)}'
                     f'<title>{escape(label)}</title></text>')
        parts.append(f'<rect x="{label_w}" y="{y + 3}" width="{w:.1f}" height="{row - 6}" fill="{BAR_COLOUR}"/>')
        parts.append(f'<text x="{label_w + w + 6:.1f}" y="{y + 15}" {TEXT}>{escape(fmt(value, unit))}</text>')
    parts.append("</svg>")
    return Markup("".join(parts))


def vbars(items: list[tuple[str, float]], unit: str = "usd", width: int = 560, height: int = 180,
          title: str = "") -> Markup:
    """Vertical bars over time (e.g. spend per day), labels under the first, middle and last bar."""
    if not items:
        return Markup('<p class="empty">No usage in this window.</p>')
    top = max(v for _, v in items) or 1.0
    plot_h, base = height - 40, height - 22
    step = (width - 20) / len(items)
    bar = max(2.0, step * 0.8)
    parts = [f'<svg class="chart" role="img" aria-label="{escape(title)}" width="{width}" height="{height}" '
             f'viewBox="0 0 {width} {height}" xmlns="http://www.w3.org/2000/svg">',
             f'<text x="10" y="12" {TEXT}>max {escape(fmt(top, unit))}</text>']
    marks = {0, len(items) // 2, len(items) - 1}
    for i, (label, value) in enumerate(items):
        h = plot_h * value / top if value > 0 else 0.0
        x = 10 + i * step
        parts.append(f'<rect x="{x:.1f}" y="{base - h:.1f}" width="{bar:.1f}" height="{h:.1f}" fill="{BAR_COLOUR}">'
                     f'<title>{escape(label)}: {escape(fmt(value, unit))}</title></rect>')
        if i in marks:
            parts.append(f'<text x="{x:.1f}" y="{height - 6}" {TEXT}>{escape(label)}</text>')
    parts.append(f'<line x1="10" y1="{base}" x2="{width - 10}" y2="{base}" stroke="#999"/>')
    parts.append("</svg>")
    return Markup("".join(parts))
