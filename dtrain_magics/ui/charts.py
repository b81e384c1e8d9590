"""Small SVG line charts, rendered in the kernel so no front-end code is needed."""

from __future__ import annotations

from html import escape

WIDTH, HEIGHT, PAD = 320, 150, 34
MAX_DRAWN = 150  # about a point per 2 px of the 280 px plot (300 sent a third more bytes)


def _downsample(
    points: list[tuple[int, float, float, float]],
) -> list[tuple[int, float, float, float]]:
    if len(points) <= MAX_DRAWN:
        return points
    stride = len(points) / MAX_DRAWN
    picked = [points[int(i * stride)] for i in range(MAX_DRAWN - 1)]
    return [*picked, points[-1]]


def _fmt(value: float) -> str:
    return f"{value:.3g}"


def svg_chart(name: str, points: list[tuple[int, float, float, float]]) -> str:
    """A chart of ``(step, mean, min, max)`` points: the mean as a line, min–max as a band."""
    title = f'<text x="{PAD}" y="14" font-size="12" font-weight="bold">{escape(name)}</text>'
    if not points:
        body = f'<text x="{PAD}" y="{HEIGHT // 2}" font-size="11" fill="#888">no data yet</text>'
        return _svg(name, title + body)
    drawn = _downsample(points)
    steps = [p[0] for p in drawn]
    low = min(p[2] for p in drawn)
    high = max(p[3] for p in drawn)
    if high == low:
        high, low = high + 0.5, low - 0.5
    s0, s1 = steps[0], max(steps[-1], steps[0] + 1)

    def x(step: float) -> float:
        return PAD + (step - s0) / (s1 - s0) * (WIDTH - PAD - 8)

    def y(value: float) -> float:
        return 22 + (high - value) / (high - low) * (HEIGHT - 22 - 20)

    band = [f"{x(p[0]):.1f},{y(p[3]):.1f}" for p in drawn]
    band += [f"{x(p[0]):.1f},{y(p[2]):.1f}" for p in reversed(drawn)]
    line = " ".join(f"{x(p[0]):.1f},{y(p[1]):.1f}" for p in drawn)
    axes = (
        f'<line x1="{PAD}" y1="{HEIGHT - 20}" x2="{WIDTH - 8}" y2="{HEIGHT - 20}" stroke="#999"/>'
        f'<text x="2" y="26" font-size="10">{_fmt(high)}</text>'
        f'<text x="2" y="{HEIGHT - 20}" font-size="10">{_fmt(low)}</text>'
        f'<text x="{PAD}" y="{HEIGHT - 6}" font-size="10">step {s0}</text>'
        f'<text x="{WIDTH - 8}" y="{HEIGHT - 6}" font-size="10" '
        f'text-anchor="end">{steps[-1]}</text>'
    )
    latest = (
        f'<text x="{WIDTH - 8}" y="14" font-size="11" text-anchor="end">{_fmt(drawn[-1][1])}</text>'
    )
    body = (
        f'<polygon class="spread" points="{" ".join(band)}" fill="#9ecae1" fill-opacity="0.45"/>'
        f'<polyline class="mean" points="{line}" fill="none" stroke="#3182bd" stroke-width="1.5"/>'
    )
    return _svg(name, title + latest + axes + body, len(points))


def _svg(name: str, inner: str, count: int = 0) -> str:
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" '
        f'data-metric="{escape(name)}" data-points="{count}" role="img" '
        f'aria-label="{escape(name)} chart">{inner}</svg>'
    )
