"""Genotypes: the discrete cells derived from a supernet's architecture parameters.

A :class:`Genotype` holds, for the normal and the reduction cell, two ``(op_name, input_index)``
edges per intermediate node (inputs ``0`` and ``1`` are the outputs of the two previous cells,
``2 + i`` is intermediate node ``i``) and the nodes concatenated into the cell output. It is
immutable, validated on construction, and round-trips through JSON::

    genotype = derive_genotype(alphas_normal, alphas_reduce, preset="dcp", nodes=4)
    genotype.save("run/genotype.json")
    assert Genotype.load("run/genotype.json") == genotype
    plot_cell(genotype, "normal", "run/normal.png")
"""

import dataclasses
import json
import os
from typing import Iterable, List, Optional, Sequence, Tuple

import numpy as np

from tfbnas.errors import GenotypeError  # noqa: F401  (importable from here)
from tfbnas.space.ops import PARAM_FREE_OPS, PRESETS

FORMAT = "tfbnas.genotype"
VERSION = 1
CELL_TYPES = ("normal", "reduce")


def num_edges(nodes: int) -> int:
    """Edges of a searched cell with ``nodes`` intermediate nodes (14 for 4 nodes)."""
    return sum(2 + i for i in range(nodes))


def edge_index(node: int, source: int) -> int:
    """Row of the architecture parameters for the edge ``source -> node`` (``node`` counts from 0)."""
    return num_edges(node) + source


def _input_name(index: int) -> str:
    return {0: "c_{k-2}", 1: "c_{k-1}"}.get(index, f"n{index - 2}")


@dataclasses.dataclass(frozen=True)
class Genotype:
    """The two derived cells of a search.

    Args:
        preset: op-table preset the op names come from (``"dcp"`` or ``"bats"``).
        nodes: intermediate nodes per cell.
        normal: ``2 * nodes`` ``(op_name, input_index)`` pairs of the normal cell; pairs
            ``2i, 2i+1`` feed intermediate node ``i`` (state ``2 + i``).
        reduce: the same for the reduction cell.
        normal_concat: states concatenated into the normal cell's output (default: all
            intermediate nodes).
        reduce_concat: the same for the reduction cell.

    Raises:
        GenotypeError: a field is invalid (the message says which and how to fix it).

    Example:
        >>> g = Genotype("dcp", 1, normal=[("skip_connect", 0), ("sep_conv_3x3", 1)],
        ...              reduce=[("max_pool_3x3", 0), ("dil_conv_3x3", 1)])
        >>> g.normal_concat
        (2,)
    """

    preset: str
    nodes: int
    normal: Tuple[Tuple[str, int], ...]
    reduce: Tuple[Tuple[str, int], ...]
    normal_concat: Optional[Tuple[int, ...]] = None
    reduce_concat: Optional[Tuple[int, ...]] = None

    def __post_init__(self):
        if self.preset not in PRESETS:
            raise GenotypeError(f"field 'preset': {self.preset!r} is unknown; use one of {sorted(PRESETS)}.")
        if isinstance(self.nodes, bool) or not isinstance(self.nodes, (int, np.integer)) or self.nodes < 1:
            raise GenotypeError(f"field 'nodes': {self.nodes!r} is not a positive integer; use e.g. 4.")
        object.__setattr__(self, "nodes", int(self.nodes))
        default_concat = tuple(range(2, 2 + self.nodes))
        for cell in CELL_TYPES:
            object.__setattr__(self, cell, self._check_edges(cell, getattr(self, cell)))
            concat = getattr(self, f"{cell}_concat")
            concat = default_concat if concat is None else self._check_concat(f"{cell}_concat", concat)
            object.__setattr__(self, f"{cell}_concat", concat)

    def _check_edges(self, field, edges) -> Tuple[Tuple[str, int], ...]:
        ops = PRESETS[self.preset]
        if isinstance(edges, (str, bytes)) or not isinstance(edges, Iterable):
            raise GenotypeError(f"field {field!r}: expected a list of [op_name, input_index] pairs, got {edges!r}.")
        edges = list(edges)
        if len(edges) != 2 * self.nodes:
            raise GenotypeError(
                f"field {field!r}: expected {2 * self.nodes} edges (2 per node for nodes={self.nodes}), "
                f"got {len(edges)}; give exactly two [op_name, input_index] pairs per intermediate node."
            )
        checked = []
        for k, edge in enumerate(edges):
            where = f"field {field!r}, edge {k}"
            if isinstance(edge, (str, bytes)) or not isinstance(edge, Sequence) or len(edge) != 2:
                raise GenotypeError(f"{where}: expected a pair [op_name, input_index], got {edge!r}.")
            op, index = edge
            if not isinstance(op, str) or op not in ops:
                raise GenotypeError(
                    f"{where}: op {op!r} is not in preset {self.preset!r}; use one of {[o for o in ops if o != 'none']} "
                    "or change 'preset'."
                )
            if op == "none":
                raise GenotypeError(f"{where}: op 'none' (zero) cannot be a kept edge; derived cells drop zero edges.")
            if isinstance(index, bool) or not isinstance(index, (int, np.integer)):
                raise GenotypeError(f"{where}: input index {index!r} is not an integer.")
            node = k // 2
            if not 0 <= index < 2 + node:
                raise GenotypeError(
                    f"{where}: input index {index} is out of range for intermediate node {node}; "
                    f"use 0..{node + 1} (0, 1: cell inputs; 2+i: earlier node i)."
                )
            checked.append((op, int(index)))
        return tuple(checked)

    def _check_concat(self, field, concat) -> Tuple[int, ...]:
        if isinstance(concat, (str, bytes)) or not isinstance(concat, Iterable):
            raise GenotypeError(f"field {field!r}: expected a list of state indices, got {concat!r}.")
        values = list(concat)
        top = 2 + self.nodes
        if not values or any(isinstance(v, bool) or not isinstance(v, (int, np.integer)) or not 0 <= v < top
                             for v in values) or len(set(values)) != len(values):
            raise GenotypeError(
                f"field {field!r}: {values!r} must be distinct state indices in 0..{top - 1}; "
                f"usually list(range(2, {top}))."
            )
        return tuple(int(v) for v in values)

    # ------------------------------------------------------------------ access

    def cell(self, cell: str) -> Tuple[Tuple[str, int], ...]:
        """Edges of ``"normal"`` or ``"reduce"``."""
        return getattr(self, _check_cell(cell))

    def concat(self, cell: str) -> Tuple[int, ...]:
        """Concatenated states of ``"normal"`` or ``"reduce"``."""
        return getattr(self, f"{_check_cell(cell)}_concat")

    # ------------------------------------------------------------------ serialisation

    def to_dict(self) -> dict:
        """A JSON-ready dict (lists instead of tuples)."""
        return {
            "format": FORMAT,
            "version": VERSION,
            "preset": self.preset,
            "nodes": self.nodes,
            "normal": [list(e) for e in self.normal],
            "normal_concat": list(self.normal_concat),
            "reduce": [list(e) for e in self.reduce],
            "reduce_concat": list(self.reduce_concat),
        }

    @classmethod
    def from_dict(cls, data) -> "Genotype":
        """Inverse of :meth:`to_dict`.

        Raises:
            GenotypeError: not a dict, a required field is missing, or a field is invalid.
        """
        if not isinstance(data, dict):
            raise GenotypeError(f"a genotype must be a JSON object, got {type(data).__name__}; "
                                "write it with Genotype.to_json().")
        if "format" in data and data["format"] != FORMAT:
            raise GenotypeError(f"field 'format': {data['format']!r} is not {FORMAT!r}; this is not a tfbnas genotype.")
        for name in ("preset", "nodes", "normal", "reduce"):
            if name not in data:
                raise GenotypeError(f"missing field {name!r}; a genotype needs preset, nodes, normal and reduce "
                                    "(see Genotype.to_json()).")
        return cls(data["preset"], data["nodes"], data["normal"], data["reduce"],
                   data.get("normal_concat"), data.get("reduce_concat"))

    def to_json(self, indent: Optional[int] = 2) -> str:
        """JSON text of the genotype."""
        return json.dumps(self.to_dict(), indent=indent)

    @classmethod
    def from_json(cls, text: str) -> "Genotype":
        """Parse :meth:`to_json` output.

        Raises:
            GenotypeError: malformed JSON, missing field or invalid field.
        """
        try:
            data = json.loads(text)
        except (json.JSONDecodeError, TypeError) as err:
            raise GenotypeError(f"malformed JSON ({err}); a genotype file holds one JSON object as written by "
                                "Genotype.to_json().") from None
        return cls.from_dict(data)

    def save(self, path: str) -> str:
        """Write the JSON to ``path`` (parent folders are created). Returns ``path``."""
        folder = os.path.dirname(os.path.abspath(path))
        os.makedirs(folder, exist_ok=True)
        with open(path, "w") as f:
            f.write(self.to_json() + "\n")
        return path

    @classmethod
    def load(cls, path: str) -> "Genotype":
        """Read a genotype written by :meth:`save`.

        Raises:
            GenotypeError: missing or unreadable file, malformed JSON or invalid field (the message
                names the file).
        """
        try:
            with open(path) as f:
                text = f.read()
        except OSError as err:
            raise GenotypeError(f"cannot read genotype file {path!r} ({err.strerror}); pass the genotype.json "
                                "of a search run.") from None
        try:
            return cls.from_json(text)
        except GenotypeError as err:
            raise GenotypeError(f"{path}: {err}") from None

    def __str__(self) -> str:
        lines = [f"Genotype(preset={self.preset}, nodes={self.nodes})"]
        for cell in CELL_TYPES:
            edges = self.cell(cell)
            concat = ", ".join(_input_name(i) for i in self.concat(cell))
            lines.append(f"  {cell} cell -> concat({concat})")
            for node in range(self.nodes):
                terms = " + ".join(f"{op}({_input_name(i)})" for op, i in edges[2 * node:2 * node + 2])
                lines.append(f"    n{node} = {terms}")
        return "\n".join(lines)


def _check_cell(cell: str) -> str:
    if cell not in CELL_TYPES:
        raise GenotypeError(f"cell={cell!r} is unknown; use 'normal' or 'reduce'.")
    return cell


def _select_cell(alphas, ops, nodes, temperature, field) -> List[Tuple[str, int, float, float]]:
    """The kept edges of one cell as ``(op, source, p_op, p_runner_up)`` (non-zero ops only)."""
    alphas = np.asarray(alphas, dtype=np.float64)
    if alphas.shape != (num_edges(nodes), len(ops)):
        raise GenotypeError(
            f"{field} has shape {alphas.shape}, expected ({num_edges(nodes)}, {len(ops)}) for nodes={nodes} "
            f"and {len(ops)} ops; pass the matching preset and nodes."
        )
    logits = alphas / float(temperature)
    probs = np.exp(logits - logits.max(axis=1, keepdims=True))
    probs /= probs.sum(axis=1, keepdims=True)
    keep = [i for i, op in enumerate(ops) if op != "none"]
    edges = []
    for node in range(nodes):
        start = num_edges(node)
        rows = probs[start:start + 2 + node][:, keep]
        strength = rows.max(axis=1)
        # Two strongest incoming edges by their strongest non-zero op (stable: ties keep the earlier input).
        sources = sorted(np.argsort(-strength, kind="stable")[:2])
        for source in sources:
            ranked = np.sort(rows[source])[::-1]
            runner_up = float(ranked[1]) if len(ranked) > 1 else 0.0
            edges.append((ops[keep[int(np.argmax(rows[source]))]], int(source), float(ranked[0]), runner_up))
    return edges


def _derive_cell(alphas, ops, nodes, temperature, field) -> List[Tuple[str, int]]:
    return [(op, source) for op, source, _, _ in _select_cell(alphas, ops, nodes, temperature, field)]


def edge_margins(alphas_normal, alphas_reduce, preset: str = "dcp", nodes: int = 4,
                 temperature: float = 1.0) -> dict:
    """How clearly each kept edge's op won: per cell, one row per kept edge of :func:`derive_genotype`.

    Each row is ``{"node", "source", "op", "p", "runner_up", "margin"}``: the op's probability
    ``softmax(alpha / T)``, the best other non-zero op's, and their difference. Margins near 0 mean
    the genotype is the argmax of noise.

    Example:
        >>> a = np.zeros((5, 8)); a[:, 6] = 1.0
        >>> round(edge_margins(a, a, "dcp", 2)["normal"][0]["margin"], 3)
        0.177
    """
    if preset not in PRESETS:
        raise GenotypeError(f"preset={preset!r} is unknown; use one of {sorted(PRESETS)}.")
    out = {}
    for cell, alphas in (("normal", alphas_normal), ("reduce", alphas_reduce)):
        rows = _select_cell(alphas, PRESETS[preset], nodes, temperature, f"alphas_{cell}")
        out[cell] = [{"node": i // 2, "source": source, "op": op, "p": p, "runner_up": q, "margin": p - q}
                     for i, (op, source, p, q) in enumerate(rows)]
    return out


def derive_genotype(alphas_normal, alphas_reduce, preset: str = "dcp", nodes: int = 4,
                    temperature: float = 1.0) -> Genotype:
    """Discretise architecture parameters as DARTS does.

    For each intermediate node, keep the two incoming edges whose strongest non-zero op has the
    highest probability ``softmax(alpha / temperature)``, each with that op (zero excluded).

    Args:
        alphas_normal, alphas_reduce: arrays of shape ``[num_edges(nodes), len(PRESETS[preset])]``.
        preset: op-table preset the columns follow.
        nodes: intermediate nodes per cell.
        temperature: softmax temperature (BATS); 1 for DARTS/DCP-NAS.

    Returns:
        The :class:`Genotype`.

    Raises:
        GenotypeError: unknown preset or wrong alpha shape.

    Example:
        >>> a = np.zeros((14, 8)); a[:, 6] = 1.0   # sep_conv_3x3 everywhere
        >>> derive_genotype(a, a, "dcp", 4).normal[0]
        ('sep_conv_3x3', 0)
    """
    if preset not in PRESETS:
        raise GenotypeError(f"preset={preset!r} is unknown; use one of {sorted(PRESETS)}.")
    ops = PRESETS[preset]
    normal = _derive_cell(alphas_normal, ops, nodes, temperature, "alphas_normal")
    reduce = _derive_cell(alphas_reduce, ops, nodes, temperature, "alphas_reduce")
    return Genotype(preset, nodes, normal, reduce)


def count_param_free(genotype: Genotype, cell: Optional[str] = None) -> int:
    """Number of parameter-free edges (skip, pooling) in both cells, or in ``cell`` only.

    A collapse of the search to parameter-free ops (a known DARTS failure mode) shows up here.
    """
    cells = CELL_TYPES if cell is None else (_check_cell(cell),)
    return sum(op in PARAM_FREE_OPS for c in cells for op, _ in genotype.cell(c))


def plot_cell(genotype: Genotype, cell: str = "normal", path: str = "cell.png", svg: bool = False) -> List[str]:
    """Draw one cell as a DAG and write it as PNG (and SVG when ``svg``).

    Input nodes (green) are on the left, intermediate nodes (blue) in the middle, the
    concatenated output (yellow) on the right; each kept edge is an arrow labelled with its op.

    Args:
        genotype: the genotype.
        cell: ``"normal"`` or ``"reduce"``.
        path: PNG file to write (parent folders are created).
        svg: also write the same picture next to it with suffix ``.svg``.

    Returns:
        The paths written.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.patches import FancyArrowPatch

    edges = genotype.cell(cell)
    nodes = genotype.nodes
    pos = {0: (0.0, 1.2), 1: (0.0, -1.2)}
    for i in range(nodes):
        pos[2 + i] = (2.2 * (i + 1), 0.9 if i % 2 == 0 else -0.9)
    out = (2.2 * (nodes + 1), 0.0)
    labels = {0: "$c_{k-2}$", 1: "$c_{k-1}$", **{2 + i: str(i) for i in range(nodes)}}

    fig = Figure(figsize=(2.0 + 1.9 * nodes, 4.2))
    FigureCanvasAgg(fig)
    # Fixed axes box: label positions below are computed in display space.
    ax = fig.add_axes([0.02, 0.02, 0.96, 0.86])
    ax.set_axis_off()
    ax.set_xlim(-1.0, out[0] + 1.0)
    ax.set_ylim(-2.2, 2.2)
    ax.set_title(f"{cell} cell ({genotype.preset})", fontsize=12)
    box = dict(boxstyle="round,pad=0.35", linewidth=1.5)
    to_display, to_data = ax.transData.transform, ax.transData.inverted().transform

    def draw_node(xy, text, color):
        ax.text(xy[0], xy[1], text, ha="center", va="center", fontsize=11, zorder=3, bbox={**box, "facecolor": color})

    for k, (op, src) in enumerate(edges):
        dst = 2 + k // 2
        rad = 0.2 if k % 2 == 0 else -0.2
        ax.add_patch(FancyArrowPatch(pos[src], pos[dst], arrowstyle="-|>", mutation_scale=14, shrinkA=20,
                                     shrinkB=20, connectionstyle=f"arc3,rad={rad}", color="0.25", linewidth=1.2,
                                     zorder=1))
        # Midpoint of the quadratic Bezier that "arc3" draws (defined in display space).
        (x0, y0), (x1, y1) = to_display(pos[src]), to_display(pos[dst])
        label = to_data(((x0 + x1) / 2 + 0.5 * rad * (y1 - y0), (y0 + y1) / 2 - 0.5 * rad * (x1 - x0)))
        ax.text(label[0], label[1], op, ha="center", va="center", fontsize=8, zorder=2,
                bbox=dict(boxstyle="round,pad=0.15", facecolor="white", edgecolor="0.7", alpha=0.9))
    for src in genotype.concat(cell):
        ax.add_patch(FancyArrowPatch(pos[src], out, arrowstyle="-|>", mutation_scale=12, shrinkA=20, shrinkB=20,
                                     color="0.6", linestyle="--", linewidth=1.0, zorder=1))
    for index, xy in pos.items():
        draw_node(xy, labels[index], "darkseagreen" if index < 2 else "lightblue")
    draw_node(out, "$c_{k}$", "palegoldenrod")

    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fig.savefig(path, format="png", dpi=110)
    written = [path]
    if svg:
        svg_path = os.path.splitext(path)[0] + ".svg"
        fig.savefig(svg_path, format="svg")
        written.append(svg_path)
    return written


__all__ = ["Genotype", "GenotypeError", "derive_genotype", "edge_margins", "count_param_free", "plot_cell",
           "num_edges",
           "edge_index", "FORMAT", "VERSION", "CELL_TYPES"]
