"""The run report: ``report.md`` and ``report.html`` telling a run's story with its pictures and tables.

:func:`write_report` takes the pipeline's summary dictionary (what each stage recorded) and the run
folder. :func:`build_report` writes the story as Markdown, referencing every picture by its path relative
to the folder, so ``report.md`` reads right next to the files it shows. :func:`markdown_to_html` renders
that text with Python-Markdown (its ``tables`` and ``fenced_code`` extensions read the tables and the
code blocks between triple-backtick fences) and inlines every PNG picture under the run folder as a
``data:image/png;base64,...`` URI: the HTML carries its pictures and opens correctly wherever it is
copied. A picture that is not there stays an ordinary relative link.
"""

import base64
import os
from typing import Dict, List, Optional
from urllib.parse import urlsplit

import markdown
from markdown.treeprocessors import Treeprocessor

from tfbnas.runs import write_json


def _fmt(value, digits=4):
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _human(n: Optional[float]) -> str:
    if n is None:
        return "—"
    for unit, size in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= size:
            return f"{n / size:.2f}{unit}"
    return f"{n:.0f}"


def _picture(run_dir: str, relative: str, caption: str) -> List[str]:
    if relative and os.path.exists(os.path.join(run_dir, relative)):
        return [f"![{caption}]({relative})", ""]
    return []


def _table(header: List[str], rows: List[List]) -> List[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    lines += ["| " + " | ".join(_fmt(c) for c in row) + " |" for row in rows]
    return lines + [""]


def build_report(summary: Dict, run_dir: str) -> str:
    """The Markdown text of the report (see :func:`write_report`)."""
    out = ["# tfbnas run report", "", f"Run folder: `{run_dir}`", ""]
    headline = summary.get("headline")
    if headline:
        out += [f"**{headline}**", ""]

    stages = summary.get("stage_seconds", {})
    if stages:
        out += ["## Stages", ""]
        out += _table(["stage", "wall time (s)"], [[k, f"{v:.1f}"] for k, v in stages.items()]
                      + [["total", f"{sum(stages.values()):.1f}"]])

    data = summary.get("data")
    if data:
        subset = data.get("search_sizes") or {}  # --search_examples: the search ran on a fixed subset
        sizes = {k: v for k, v in data["sizes"].items() if k not in subset}
        sizes.update({f"{k} (subset)": v for k, v in subset.items()})
        out += ["## Data", "", f"{data.get('dataset')}: " + ", ".join(f"{k} {v}" for k, v in sizes.items()), ""]

    search = summary.get("search")
    if search:
        out += ["## Search", "",
                f"Strategy `{search.get('strategy')}`, {search.get('epochs')} epochs of {search.get('steps_per_epoch')} "
                f"steps, {_fmt(search.get('seconds'), 0)} s; parameter-free ops in the genotype: "
                f"{search.get('param_free_ops')}"
                + (f"; stem stride {search['stem_stride']}" if search.get("stem_stride") else "") + ".", ""]
        if search.get("genotype_text"):
            out += ["```", search["genotype_text"], "```", ""]
        out += _picture(run_dir, search.get("cell_normal"), "normal cell")
        out += _picture(run_dir, search.get("cell_reduce"), "reduction cell")
        out += _picture(run_dir, search.get("alphas_plot"), "architecture-parameter evolution")
        margins = search.get("edge_margins")
        if margins:
            out += ["How clearly each kept edge's op won (`softmax(alpha / T)` of the op and of the best other "
                    "non-zero op on that edge, at the final temperature):", "",
                    "| cell | node | input | op | p | runner-up | margin |",
                    "| --- | ---: | ---: | --- | ---: | ---: | ---: |"]
            out += [f"| {cell} | {r['node']} | {r['source']} | `{r['op']}` | {r['p']:.3f} | {r['runner_up']:.3f} | "
                    f"{r['margin']:.3f} |" for cell in ("normal", "reduce") for r in margins.get(cell, [])]
            out += [""]

    width = summary.get("width")
    if width:
        settings = width.get("settings") or {}
        tau = width.get("tau")
        threshold = f"threshold {tau:.3g} on the gate scores" if tau is not None else "the whole Child fits"
        out += ["## Width", "",
                f"Method `{width.get('method')}`: gates on the trained Child chose per-cell widths within "
                f"{settings.get('budget', 0):.0%} of its OPs ({threshold}); the narrowed Child was trained for "
                f"{width.get('epochs')} epoch(s) under the Parent.", ""]
        out += _table(["cell", "channels before", "channels after", "width multiplier"],
                      [[c["cell"], c["before"], c["after"], c["multiplier"]] for c in width.get("cells", [])])

        def kib(n):
            return None if n is None else n / 1024

        out += _table(["", "OPs", "TFLite (KiB)", "host latency (ms)", "test top-1"],
                      [[name, _human(width.get(f"ops_{k}")), kib(width.get(f"size_bytes_{k}")),
                        width.get(f"latency_ms_{k}"), width.get(f"top1_{k}")]
                       for name, k in (("trained Child", "before"), ("narrowed Child", "after"))])
        out += _picture(run_dir, "width/curves.png", "training curves of the narrowed Child")

    train = summary.get("train")
    if train:
        out += ["## Training", ""]
        rows = []
        for name in ("child", "parent", "baseline"):
            m = train.get(name)
            if m:
                rows.append([name, m.get("top1"), m.get("top5"), m.get("epochs")])
        out += _table(["model", "test top-1", "test top-5", "epochs"], rows)
        out += _picture(run_dir, train.get("curves"), "training curves")

    cost = summary.get("cost")
    if cost:
        out += ["## Cost", ""]
        out += _table(["binary params", "real params", "memory", "BOPs", "FLOPs", "OPs"],
                      [[_human(cost.get("binary_params")), _human(cost.get("real_params")),
                        f"{cost.get('memory_bytes', 0) / 1024:.1f} KiB", _human(cost.get("bops")),
                        _human(cost.get("flops")), _human(cost.get("ops"))]])

    deploy = summary.get("deploy")
    if deploy:
        out += ["## Deploy (LCE TFLite)", ""]
        rows = [["flatbuffer size", f"{deploy.get('size_bytes', 0) / 1024:.1f} KiB"]]
        if deploy.get("float_size_bytes"):
            rows.append(["float model size", f"{deploy['float_size_bytes'] / 1024:.1f} KiB"])
            rows.append(["size ratio (binary / float)", f"{deploy['size_bytes'] / deploy['float_size_bytes']:.3f}"])
        rows += [["LceBconv2d ops", deploy.get("binary_convs")], ["float conv ops", deploy.get("float_convs")],
                 ["parity: top-1 agreement", deploy.get("agreement")], ["parity: max abs error", deploy.get("max_error")],
                 ["parity examples", deploy.get("parity_examples")]]
        out += _table(["", "value"], rows)
        if deploy.get("op_histogram"):
            out += _table(["op", "count"], sorted(deploy["op_histogram"].items(), key=lambda kv: -kv[1]))

    latency = summary.get("latency")
    if latency:
        out += ["## Latency (host)", ""]
        out += _table(["engine", "path", "threads", "median ms", "p90 ms"],
                      [[r.get("engine"), r.get("path"), r.get("threads"), r.get("median_ms"), r.get("p90_ms")]
                       for r in latency])

    flags = summary.get("flags")
    if flags:
        out += ["## Flags", "", "```"] + [f"--{k}={v}" for k, v in sorted(flags.items()) if v is not None] + ["```", ""]
    return "\n".join(out)


def write_report(summary: Dict, run_dir: str) -> str:
    """Writes ``report.md``, ``report.html`` and ``summary.json`` into ``run_dir``; returns the Markdown path."""
    text = build_report(summary, run_dir)
    path = os.path.join(run_dir, "report.md")
    with open(path, "w") as f:
        f.write(text)
    with open(os.path.join(run_dir, "report.html"), "w", encoding="utf-8") as f:
        f.write(markdown_to_html(text, run_dir=run_dir))
    write_json(os.path.join(run_dir, "summary.json"), summary)
    return path


_STYLE = ("body{font-family:sans-serif;max-width:1000px;margin:2em auto}table{border-collapse:collapse}"
          "td,th{border:1px solid #ccc;padding:4px 8px}pre{background:#f4f4f4;padding:8px;overflow-x:auto}"
          "code{background:#f4f4f4}img{max-width:100%}")


def markdown_to_html(text: str, run_dir: Optional[str] = None) -> str:
    """A standalone HTML page of the Markdown ``text``; with ``run_dir``, its PNG pictures are embedded."""
    md = markdown.Markdown(extensions=["tables", "fenced_code"])
    if run_dir is not None:
        # after "inline" (priority 20), the processor that turns ![caption](path) into <img> elements
        md.treeprocessors.register(_EmbedPictures(md, run_dir), "embed_pictures", 5)
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>tfbnas report</title><style>{_STYLE}</style>"
            f"</head><body>\n{md.convert(text)}\n</body></html>\n")


class _EmbedPictures(Treeprocessor):
    """Replaces the ``src`` of each ``<img>`` naming a PNG file under the run folder by the file as a data URI."""

    def __init__(self, md: markdown.Markdown, run_dir: str):
        super().__init__(md)
        self.run_dir = run_dir

    def run(self, root) -> None:
        for img in root.iter("img"):
            uri = _png_data_uri(self.run_dir, img.get("src", ""))
            if uri:
                img.set("src", uri)


def _png_data_uri(run_dir: str, src: str) -> Optional[str]:
    """``data:image/png;base64,...`` of the PNG that ``src`` names inside ``run_dir``; None for anything else
    (a URL, an absolute path, a path leaving the folder, another format, a file that does not exist)."""
    if urlsplit(src).scheme or os.path.isabs(src) or not src.lower().endswith(".png"):
        return None
    root = os.path.realpath(run_dir)
    path = os.path.realpath(os.path.join(root, src))
    if os.path.commonpath([root, path]) != root or not os.path.isfile(path):
        return None
    with open(path, "rb") as f:
        return "data:image/png;base64," + base64.b64encode(f.read()).decode("ascii")
