"""Presenting a genotype to a person: a plain-text node table and a PNG drawing.

>>> print(node_table(genotype))
>>> draw_genotype(genotype, "neck.png")

Both show every pool entry: the backbone's C3..C5 and the extra levels P6/P7 (entries 0..4),
then the nodes from 5 on. Nodes that reach no output (the builder skips them) are marked
``unused`` in the table and greyed in the drawing.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch, Patch
from matplotlib.path import Path as MplPath

from nas.genotype import (
    BACKBONE_INPUTS,
    COMBINES,
    CONV_DOWNSAMPLES,
    DOWNSAMPLES,
    LEVELS,
    NUM_INPUTS,
    POSTS,
    Genotype,
    Node,
)

__all__ = ["draw_genotype", "node_table"]

_TABLE_HEADER = ("entry", "role", "level", "inputs", "combine", "down", "up", "post", "output")


def node_table(genotype: Genotype) -> str:
    """One aligned row per pool entry: role, level, inputs (``+j`` absorbed), ops and output."""
    used = genotype.used_entries()
    outputs = {index: f"P{level}" for level, index in zip(LEVELS, genotype.outputs)}
    rows = [_TABLE_HEADER]
    for index in range(genotype.num_entries):
        node = _node_of(genotype, index)
        role = _role(genotype, index)
        if node is None:
            cells = ("-",) * 5
        else:
            down, up = _resamples(genotype, node)
            combine = node.combine if len(node.inputs) > 1 else "-"  # one input: nothing to combine
            post = node.post if node.post != "none" else "-"
            inputs = ", ".join(map(str, node.inputs)) + "".join(f" +{j}" for j in _absorbed(genotype, index))
            cells = (inputs, combine, down, up, post)
        if index in outputs:
            output = outputs[index]
        elif index in used or role == "absent":
            output = "-"
        else:
            output = "unused"
        rows.append((str(index), role, f"P{genotype.entry_levels[index]}", *cells, output))
    widths = [max(len(row[k]) for row in rows) for k in range(len(_TABLE_HEADER))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in rows)


def draw_genotype(genotype: Genotype, path: str | Path, title: str | None = None) -> None:
    """Writes a PNG of the graph: levels as rows (P7 on top), pool entries as columns.

    Column 0 holds the inputs C3..C5 and P6/P7; each node follows in its own column, in pool
    order. Edges are coloured by direction (from a coarser level, a finer one, the same one),
    absorbed entries are dashed, outputs have a thick border, unused nodes are grey.

    Args:
        genotype: the validated genotype to draw.
        path: where the PNG goes.
        title: drawn above the graph; defaults to ``genotype.name``.
    """
    used = genotype.used_entries()
    outputs = {index: level for level, index in zip(LEVELS, genotype.outputs)}
    centres = {index: _centre(genotype, index) for index in range(genotype.num_entries)}

    edges: list[tuple[int, int, bool]] = []  # (source, target, absorbed)
    for index in range(genotype.num_entries):
        node = _node_of(genotype, index)
        if node is not None:
            edges += [(j, index, False) for j in node.inputs]
            edges += [(j, index, True) for j in _absorbed(genotype, index)]
    # Route every edge before sizing the figure: long bows may reach beyond the outer rows.
    bows = {(a, b): _route(centres, a, b) for a, b, _ in edges}
    curve_ys = [_curve(centres[a], centres[b], bow)[:, 1] for (a, b), bow in bows.items()]
    y_low = min([-_ROW / 2, *(ys.min() for ys in curve_ys)]) - 0.1
    y_high = max([(len(LEVELS) - 0.5) * _ROW, *(ys.max() for ys in curve_ys)]) + 0.1
    x_low, x_high = -1.0, (genotype.num_entries - NUM_INPUTS) * _COLUMN + 0.6
    x_high = max(x_high, x_low + _MIN_WIDTH / _INCH)

    top, bottom = 0.5, 0.45  # inches for the title and the legend
    width, height = (x_high - x_low) * _INCH, (y_high - y_low) * _INCH + top + bottom
    fig = Figure(figsize=(width, height))
    FigureCanvasAgg(fig)
    # The axes keep one scale on both axes, so a bow is as wide as ``_route`` chose it.
    ax = fig.add_axes((0.0, bottom / height, 1.0, 1.0 - (top + bottom) / height))
    ax.set_xlim(x_low, x_high)
    ax.set_ylim(y_low, y_high)
    ax.set_axis_off()

    for k, level in enumerate(LEVELS):
        y = k * _ROW
        if k % 2 == 0:
            ax.axhspan(y - _ROW / 2, y + _ROW / 2, color="#f6f6f6", zorder=0)
        ax.text(x_low + 0.25, y, f"P{level}", ha="left", va="center", fontsize=11, weight="bold", color=_GREY)

    for i in centres:
        _draw_box(ax, genotype, i, centres[i], i in used, outputs)
    for a, b, absorbed in edges:
        _draw_edge(ax, genotype, centres, a, b, bows[(a, b)], absorbed, b in used)

    title = genotype.name if title is None else title
    if title:
        fig.text(0.5, 1.0 - 0.3 / height, title, ha="center", va="center", fontsize=13, weight="bold")
    fig.legend(handles=_legend_handles(), loc="lower center", ncol=6, fontsize=8, frameon=False)
    fig.savefig(Path(path), dpi=_DPI)


# --- reading the genotype ------------------------------------------------------------------


def _node_of(genotype: Genotype, index: int) -> Node | None:
    """The node making entry ``index``: a cell node, an extra level, or None (C3..C5, absent)."""
    if index >= NUM_INPUTS:
        return genotype.node(index)
    if index >= BACKBONE_INPUTS and genotype.extra_levels:
        return genotype.extra_levels[index - BACKBONE_INPUTS]
    return None


def _role(genotype: Genotype, index: int) -> str:
    if index < BACKBONE_INPUTS:
        return f"C{LEVELS[index]}"
    if index < NUM_INPUTS:
        return f"P{LEVELS[index]}" if genotype.extra_levels else "absent"
    return "node"


def _resamples(genotype: Genotype, node: Node) -> tuple[str, str]:
    """The node's (down, up) op, each '-' unless some input is finer (coarser) than the node."""
    # Absorbed entries share the node's level, so only the inputs can need resampling.
    levels = [genotype.entry_levels[j] for j in node.inputs]
    down = node.down if any(level < node.level for level in levels) else "-"
    up = node.up if any(level > node.level for level in levels) else "-"
    return down, up


def _absorbed(genotype: Genotype, index: int) -> tuple[int, ...]:
    """The entries node ``index`` absorbs; none for entries 0..4 (extra levels do not absorb)."""
    return genotype.absorbed[index - NUM_INPUTS] if index >= NUM_INPUTS else ()


# --- drawing -------------------------------------------------------------------------------

# Geometry in data units; one unit is _INCH inches on both axes.
_INCH = 0.85
_DPI = 110
_COLUMN = 1.2
_ROW = 1.0
_BOX_W = 0.72
_BOX_H = 0.58
_LINE = 0.17  # between text lines in a box
_MIN_WIDTH = 8.0  # inches, so that the legend fits under small graphs
_BOWS = (0.0, 0.25, -0.25, 0.45, -0.45, 0.7, -0.7, 1.0, -1.0)  # tried in order, see _route

_EDGE_COLORS = {"up": "#4c72b0", "down": "#dd8452", "same": "#8c8c8c"}
_INPUT_FACE, _NODE_FACE, _OUTPUT_FACE, _UNUSED_FACE = "#e9e9e9", "#e3eefa", "#cfe2f7", "#f3f3f3"
_UNUSED_COLOR = "#c8c8c8"  # borders and edges of unused entries
_GREY = "#555555"
_DASHES = (0, (4, 3))


def _centre(genotype: Genotype, index: int) -> tuple[float, float]:
    column = 0 if index < NUM_INPUTS else index - NUM_INPUTS + 1
    return column * _COLUMN, (genotype.entry_levels[index] - LEVELS[0]) * _ROW


def _curve(a: tuple[float, float], b: tuple[float, float], bow: float, samples: int = 41) -> np.ndarray:
    """Points of the quadratic Bezier from a to b whose middle lies ``bow`` off the chord.

    Its control point is the chord's midpoint moved by ``rad * (dy, -dx)``, ``rad = 2 * bow /
    |b - a|`` (matplotlib's ``arc3`` curve).
    """
    (xa, ya), (xb, yb) = a, b
    rad = 2 * bow / float(np.hypot(xb - xa, yb - ya))
    control = ((xa + xb) / 2 + rad * (yb - ya), (ya + yb) / 2 - rad * (xb - xa))
    t = np.linspace(0.0, 1.0, samples)[:, None]
    return (1 - t) ** 2 * np.array(a) + 2 * t * (1 - t) * np.array(control) + t**2 * np.array(b)


def _inside(points: np.ndarray, centre: tuple[float, float]) -> np.ndarray:
    """Which of ``points`` (K, 2) lie in the box at ``centre`` or within a hair of its border."""
    half = np.array([_BOX_W / 2 + 0.02, _BOX_H / 2 + 0.02])
    return (np.abs(points - np.array(centre)) < half).all(axis=1)


def _route(centres: dict[int, tuple[float, float]], a: int, b: int) -> float:
    """The least bow that keeps edge a -> b clear of every other box (fewest hits otherwise)."""
    others = np.array([c for i, c in centres.items() if i not in (a, b)])
    half = np.array([_BOX_W / 2 + 0.06, _BOX_H / 2 + 0.06])

    def hits(bow: float) -> int:
        points = _curve(centres[a], centres[b], bow)
        inside = np.abs(points[:, None, :] - others[None, :, :]) < half
        return int(inside.all(axis=2).any(axis=0).sum())

    return min(_BOWS, key=lambda bow: (hits(bow), abs(bow)))


def _draw_box(
    ax: Axes,
    genotype: Genotype,
    index: int,
    centre: tuple[float, float],
    used: bool,
    outputs: dict[int, int],
) -> None:
    x, y = centre
    node = _node_of(genotype, index)
    role = _role(genotype, index)
    if index < NUM_INPUTS:
        label, face = role, _INPUT_FACE
    else:
        assert node is not None  # every entry past the inputs is a cell node
        label = COMBINES[node.combine].symbol if len(node.inputs) > 1 else ""
        face = _NODE_FACE
    edge, text_color, linewidth, linestyle = "#444444", "#111111", 1.0, "-"
    if role == "absent" or not used:
        face, edge, text_color = _UNUSED_FACE, _UNUSED_COLOR, "#9a9a9a"
        linestyle = ":" if role == "absent" else "-"
    if index in outputs:
        edge, linewidth, face = "#111111", 2.6, _OUTPUT_FACE
        ax.text(
            x,
            y + _BOX_H / 2 + 0.04,
            f"→P{outputs[index]}",
            ha="center",
            va="bottom",
            fontsize=9,
            weight="bold",
            color="#1f3f73",
            zorder=5,
        )
    box = FancyBboxPatch(
        (x - _BOX_W / 2, y - _BOX_H / 2),
        _BOX_W,
        _BOX_H,
        boxstyle="round,pad=0,rounding_size=0.08",
        facecolor=face,
        edgecolor=edge,
        linewidth=linewidth,
        linestyle=linestyle,
        zorder=3,
    )
    ax.add_patch(box)
    # Everything about a node sits inside its box, where no edge runs.
    post = POSTS[node.post].symbol if node is not None else ""
    lines: list[tuple[str, dict[str, Any]]] = [  # text, then Axes.text's keyword arguments
        (str(index), {"fontsize": 10, "weight": "bold"}),
        (label, {"fontsize": 8}),
        (post, {"fontsize": 7, "style": "italic"}),
    ]
    lines = [(text, style) for text, style in lines if text]
    for k, (text, style) in enumerate(lines):
        ax.text(
            x,
            y + (len(lines) - 1 - 2 * k) * _LINE / 2,
            text,
            ha="center",
            va="center",
            color=text_color,
            zorder=4,
            **style,
        )


def _draw_edge(
    ax: Axes,
    genotype: Genotype,
    centres: dict[int, tuple[float, float]],
    a: int,
    b: int,
    bow: float,
    absorbed: bool,
    used: bool,
) -> None:
    src, dst = genotype.entry_levels[a], genotype.entry_levels[b]
    direction = "up" if src > dst else "down" if src < dst else "same"
    color = _EDGE_COLORS[direction] if used else _UNUSED_COLOR
    # The curve is clipped to the boxes here, as a polyline: asking matplotlib to clip an arc3
    # connection to two patches costs ~20 ms an edge, most of the time of a report.
    points = _curve(centres[a], centres[b], bow, samples=121)
    outside = ~(_inside(points, centres[a]) | _inside(points, centres[b]))
    ax.add_patch(
        FancyArrowPatch(
            path=MplPath(points[outside]),
            arrowstyle="-|>",
            mutation_scale=9,
            color=color,
            alpha=0.8,
            linewidth=1.3,
            linestyle=_DASHES if absorbed else "-",
            zorder=2,
        )
    )
    node = _node_of(genotype, b)
    assert node is not None  # an edge ends at an entry some node makes
    if direction == "down" and node.down in CONV_DOWNSAMPLES:
        x, y = _curve(centres[a], centres[b], bow, samples=3)[1]  # the curve's middle
        ax.text(
            x,
            y,
            DOWNSAMPLES[node.down].symbol,
            ha="center",
            va="center",
            fontsize=7,
            color=color,
            zorder=4,
            bbox={"boxstyle": "round,pad=0.1", "facecolor": "white", "edgecolor": "none", "alpha": 0.85},
        )


def _legend_handles() -> list[Line2D | Patch]:
    return [
        Line2D([], [], color=_EDGE_COLORS["up"], label="from a coarser level (up)"),
        Line2D([], [], color=_EDGE_COLORS["down"], label="from a finer level (down)"),
        Line2D([], [], color=_EDGE_COLORS["same"], label="same level"),
        Line2D([], [], color=_EDGE_COLORS["same"], linestyle=_DASHES, label="absorbed"),
        Patch(facecolor=_OUTPUT_FACE, edgecolor="#111111", linewidth=2.0, label="output"),
        Patch(facecolor=_UNUSED_FACE, edgecolor=_UNUSED_COLOR, label="unused"),
    ]
