"""The run report: ``report.md`` has every section of the summary, ``report.html`` renders it with real code
blocks, inline code and tables, and carries its pictures inside itself as ``data:`` URIs."""

import base64
import html
import re
from html.parser import HTMLParser

import numpy as np
from matplotlib.image import imsave

from tfbnas.report import markdown_to_html, write_report

GENOTYPE_TEXT = ("Genotype(preset=bireal, nodes=2)\n"
                 "  normal cell -> concat(n0, n1)\n"
                 "    n0 = bconv_3x3(c_{k-2}) + skip_connect(c_{k-1})\n"
                 "    n1 = bconv_5x5(n0) + bconv_3x3(c_{k-2})\n"
                 "  reduce cell -> concat(n0, n1)\n"
                 "    n0 = bconv_3x3(c_{k-2}) + bconv_3x3(c_{k-1})\n"
                 "    n1 = dil_bconv_3x3(n0) + bconv_5x5(c_{k-1})")

SECTIONS = ("# tfbnas run report", "## Stages", "## Data", "## Search", "## Width", "## Training", "## Cost",
            "## Deploy (LCE TFLite)", "## Latency (host)", "## Flags")


class _Images(HTMLParser):
    """The attributes of every ``<img>`` of a page."""

    def __init__(self, page: str):
        super().__init__()
        self.images = []
        self.feed(page)

    def handle_starttag(self, tag, attrs):
        if tag == "img":
            self.images.append(dict(attrs))


def _png(path) -> bytes:
    path.parent.mkdir(parents=True, exist_ok=True)
    imsave(path, np.arange(12, dtype=float).reshape(3, 4))
    return path.read_bytes()


def _summary() -> dict:
    """A summary shaped like the one ``tfbnas.run`` builds; ``search/cell_reduce.png`` is never drawn."""
    margins = {cell: [{"node": 0, "source": 1, "op": "bconv_3x3", "p": 0.61, "runner_up": 0.22, "margin": 0.39}]
               for cell in ("normal", "reduce")}
    return {
        "headline": "Child test top-1 0.8123 on fashion_mnist, 1.23 M OPs, TFLite 45.6 KiB, parity 1.0",
        "stage_seconds": {"data": 1.2, "search (dcp)": 60.5, "train Child (Parent teacher)": 120.0},
        "data": {"dataset": "fashion_mnist", "sizes": {"train": 2048, "test": 512, "search_train": 1024,
                                                       "search_val": 1024},
                 "search_sizes": {"search_train": 512, "search_val": 512}},
        "search": {"strategy": "dcp", "epochs": 2, "steps_per_epoch": 16, "seconds": 60.5, "param_free_ops": 1,
                   "genotype_text": GENOTYPE_TEXT, "cell_normal": "search/cell_normal.png",
                   "cell_reduce": "search/cell_reduce.png", "alphas_plot": "search/alphas.png",
                   "edge_margins": margins, "stem_stride": 4},
        "width": {"method": "dnal", "settings": {"budget": 0.5}, "tau": 0.25, "epochs": 1,
                  "cells": [{"cell": 0, "before": 8, "after": 6, "multiplier": 0.75}],
                  "ops_before": 2.0e6, "ops_after": 0.9e6, "top1_before": 0.81, "top1_after": 0.79,
                  "size_bytes_before": 40960, "size_bytes_after": 30720,
                  "latency_ms_before": 1.5, "latency_ms_after": 1.1},
        "train": {"child": {"top1": 0.8123, "top5": 0.99, "epochs": 2},
                  "parent": {"top1": 0.85, "top5": 0.995, "epochs": 2}, "curves": "train/curves.png"},
        "cost": {"binary_params": 12000, "real_params": 3000, "memory_bytes": 13500, "bops": 64e6, "flops": 0.4e6,
                 "ops": 1.4e6},
        "deploy": {"size_bytes": 46694, "float_size_bytes": 120000, "binary_convs": 10, "float_convs": 2,
                   "op_histogram": {"LceBconv2d": 10, "CONV_2D": 2, "ADD": 7}, "agreement": 1.0,
                   "max_error": 1e-5, "parity_examples": 256},
        "latency": [{"engine": "lce.testing.Interpreter", "path": "default", "threads": 1, "median_ms": 0.8,
                     "p90_ms": 0.9}],
        "flags": {"dataset": "fashion_mnist", "epochs": 2, "genotype": None, "seed": 0},
    }


def _run(tmp_path):
    run_dir = tmp_path / "run"
    pictures = {name: _png(run_dir / name)
                for name in ("search/cell_normal.png", "search/alphas.png", "train/curves.png", "width/curves.png")}
    write_report(_summary(), str(run_dir))
    return run_dir, pictures


def test_markdown_has_every_section_and_relative_pictures(tmp_path):
    run_dir, pictures = _run(tmp_path)
    text = (run_dir / "report.md").read_text()
    for heading in SECTIONS:
        assert f"\n{heading}\n" in f"\n{text}", heading
    for name in pictures:
        assert f"]({name})" in text
    assert "cell_reduce.png" not in text  # a picture that was never drawn is left out of the Markdown
    assert "```\n" + GENOTYPE_TEXT + "\n```" in text
    assert "parameter-free ops in the genotype: 1; stem stride 4." in text
    assert (run_dir / "summary.json").exists()


def test_html_keeps_code_blocks_inline_code_and_tables(tmp_path):
    run_dir, _ = _run(tmp_path)
    page = (run_dir / "report.html").read_text(encoding="utf-8")
    blocks = [html.unescape(b) for b in re.findall(r"<pre><code>(.*?)</code></pre>", page, re.S)]
    assert GENOTYPE_TEXT + "\n" in blocks  # one line per genotype line, "->" unescaped back
    assert "--dataset=fashion_mnist\n--epochs=2\n--seed=0\n" in blocks  # the flags, None ones dropped
    assert "Strategy <code>dcp</code>" in page and f"<code>{run_dir}</code>" in page
    assert "`" not in re.sub(r"<pre><code>.*?</code></pre>", "", page, flags=re.S)  # no literal backticks left
    assert page.count("<table>") == 9  # stages, margins, 2 width, training, cost, deploy, op histogram, latency
    headers = re.findall(r"<th[^>]*>(.*?)</th>", page)
    for header in ("stage", "wall time (s)", "margin", "test top-1", "BOPs", "engine", "median ms"):
        assert header in headers, header
    assert "<td>total</td>" in page and "<td>181.7</td>" in page
    assert "<strong>Child test top-1 0.8123" in page
    for heading in SECTIONS[1:]:
        assert f"<h2>{html.escape(heading[3:])}</h2>" in page, heading


def test_html_embeds_every_picture(tmp_path):
    run_dir, pictures = _run(tmp_path)
    images = {img["alt"]: img["src"] for img in _Images((run_dir / "report.html").read_text()).images}
    by_caption = {"normal cell": "search/cell_normal.png", "architecture-parameter evolution": "search/alphas.png",
                  "training curves": "train/curves.png",
                  "training curves of the narrowed Child": "width/curves.png"}
    assert set(images) == set(by_caption)
    prefix = "data:image/png;base64,"
    for caption, name in by_caption.items():
        assert images[caption].startswith(prefix), caption
        assert base64.b64decode(images[caption][len(prefix):]) == pictures[name]


def test_html_keeps_links_it_cannot_embed(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    _png(tmp_path / "outside.png")
    text = "![gone](search/missing.png)\n\n![outside](../outside.png)\n"
    images = {img["alt"]: img["src"] for img in _Images(markdown_to_html(text, run_dir=str(run_dir))).images}
    assert images == {"gone": "search/missing.png", "outside": "../outside.png"}
    _png(run_dir / "search" / "missing.png")
    assert _Images(markdown_to_html(text)).images[0]["src"] == "search/missing.png"  # no run_dir: links
