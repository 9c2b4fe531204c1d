"""Genotype value type: derivation from alphas, validation, JSON files, pictures."""

import dataclasses
import json

import numpy as np
import pytest

from tfbnas.space.genotype import (Genotype, GenotypeError, count_param_free, derive_genotype, edge_index, num_edges,
                                   plot_cell)
from tfbnas.space.ops import PRESETS

DCP = PRESETS["dcp"]

NORMAL = [("sep_conv_3x3", 0), ("dil_conv_3x3", 1), ("skip_connect", 0), ("sep_conv_5x5", 2),
          ("max_pool_3x3", 1), ("dil_conv_5x5", 3), ("avg_pool_3x3", 0), ("sep_conv_3x3", 4)]
REDUCE = [("max_pool_3x3", 0), ("dil_conv_3x3", 1), ("skip_connect", 1), ("sep_conv_3x3", 2),
          ("avg_pool_3x3", 0), ("dil_conv_5x5", 2), ("skip_connect", 0), ("sep_conv_5x5", 1)]


def _genotype():
    return Genotype("dcp", 4, NORMAL, REDUCE)


def _alphas_for(edges, nodes=4, ops=DCP, strength=5.0, rng=None):
    """Alphas whose kept edges are ``edges``; every other edge prefers 'none' even more strongly."""
    rng = rng or np.random.default_rng(0)
    alphas = rng.normal(0.0, 0.01, (num_edges(nodes), len(ops)))
    alphas[:, ops.index("none")] = 2 * strength  # zero must be ignored when ranking and picking
    for k, (op, source) in enumerate(edges):
        alphas[edge_index(k // 2, source), ops.index(op)] = strength
    return alphas


def test_edge_counting():
    assert num_edges(4) == 14 and num_edges(1) == 2
    assert [edge_index(2, j) for j in range(4)] == [5, 6, 7, 8]


def test_hand_set_alphas_give_expected_genotype():
    genotype = derive_genotype(_alphas_for(NORMAL), _alphas_for(REDUCE), "dcp", 4)
    assert genotype.normal == tuple(NORMAL)
    assert genotype.reduce == tuple(REDUCE)
    assert genotype.normal_concat == genotype.reduce_concat == (2, 3, 4, 5)


def test_derivation_ranks_edges_by_strongest_nonzero_op():
    alphas = np.zeros((2, len(DCP)))
    alphas[0, DCP.index("none")] = 9.0  # edge 0 is mostly zero ...
    alphas[0, DCP.index("max_pool_3x3")] = 1.0
    alphas[1, DCP.index("dil_conv_5x5")] = 0.5
    genotype = derive_genotype(alphas, alphas, "dcp", nodes=1)
    # ... yet a node keeps two edges, each with its best non-zero op.
    assert genotype.normal == (("max_pool_3x3", 0), ("dil_conv_5x5", 1))


def test_derivation_keeps_top_two_of_three_edges():
    alphas = np.zeros((num_edges(2), len(DCP)))
    alphas[0, DCP.index("sep_conv_3x3")] = 1.0
    rows = slice(2, 5)  # node 1: edges from 0, 1 and node 0
    alphas[rows, DCP.index("skip_connect")] = [0.2, 3.0, 2.0]
    genotype = derive_genotype(alphas, alphas, "dcp", nodes=2)
    assert genotype.normal[2:] == (("skip_connect", 1), ("skip_connect", 2))


def test_bats_preset_derivation():
    edges = [("group_conv_5x5", 0), ("dil_group_conv_3x3", 1), ("max_pool_3x3", 0), ("group_conv_3x3", 2)]
    alphas = _alphas_for(edges, nodes=2, ops=PRESETS["bats"])
    assert derive_genotype(alphas, alphas, "bats", 2).normal == tuple(edges)


def test_wrong_alpha_shape():
    with pytest.raises(GenotypeError, match=r"alphas_normal has shape \(14, 7\)"):
        derive_genotype(np.zeros((14, 7)), np.zeros((14, 8)), "dcp", 4)


def test_json_round_trip_and_files(tmp_path):
    genotype = _genotype()
    assert Genotype.from_json(genotype.to_json()) == genotype
    path = genotype.save(str(tmp_path / "run" / "genotype.json"))
    assert Genotype.load(path) == genotype
    data = json.loads(open(path).read())
    assert data["format"] == "tfbnas.genotype" and data["normal"][0] == ["sep_conv_3x3", 0]


def test_immutable_and_hashable():
    genotype = _genotype()
    with pytest.raises(dataclasses.FrozenInstanceError):
        genotype.nodes = 3
    assert hash(genotype) == hash(Genotype("dcp", 4, list(NORMAL), list(REDUCE)))


def _bad(**changes):
    data = _genotype().to_dict()
    data.update(changes)
    return json.dumps(data)


@pytest.mark.parametrize("text, pattern", [
    (_bad(normal=[["group_conv_3x3", 0]] + [list(e) for e in NORMAL[1:]]), r"'normal', edge 0: op 'group_conv_3x3' is not in preset 'dcp'"),
    (_bad(reduce=[list(e) for e in REDUCE[:6]]), r"'reduce': expected 8 edges .*got 6"),
    (_bad(normal=[list(e) for e in NORMAL[:3]] + [["sep_conv_5x5", 4]] + [list(e) for e in NORMAL[4:]]),
     r"'normal', edge 3: input index 4 is out of range for intermediate node 1; use 0\.\.2"),
    (_bad(normal=[["none", 0]] + [list(e) for e in NORMAL[1:]]), r"op 'none'"),
    (_bad(preset="darts"), r"'preset': 'darts' is unknown"),
    (_bad(nodes=0), r"'nodes'"),
    (_bad(normal_concat=[2, 2]), r"'normal_concat'"),
    (_bad(normal=[["sep_conv_3x3"]] + [list(e) for e in NORMAL[1:]]), r"edge 0: expected a pair"),
    ('{"preset": "dcp", "nodes": 4, "normal": []', r"malformed JSON"),
    ("[1, 2]", r"must be a JSON object"),
    (json.dumps({"preset": "dcp", "nodes": 4, "normal": NORMAL}), r"missing field 'reduce'"),
])
def test_malformed_genotypes_name_field_and_fix(text, pattern):
    with pytest.raises(GenotypeError, match=pattern):
        Genotype.from_json(text)


def test_genotype_error_is_a_value_error(tmp_path):
    path = tmp_path / "g.json"
    path.write_text("not json")
    with pytest.raises(ValueError, match=r"g\.json: malformed JSON"):
        Genotype.load(str(path))
    with pytest.raises(GenotypeError, match="cannot read genotype file"):
        Genotype.load(str(tmp_path / "missing.json"))


def test_readable_str():
    text = str(_genotype())
    assert "normal cell" in text and "reduce cell" in text
    assert "n0 = sep_conv_3x3(c_{k-2}) + dil_conv_3x3(c_{k-1})" in text
    assert "n3 = avg_pool_3x3(c_{k-2}) + sep_conv_3x3(n2)" in text


def test_count_param_free():
    genotype = _genotype()
    assert count_param_free(genotype, "normal") == 3
    assert count_param_free(genotype, "reduce") == 4
    assert count_param_free(genotype) == 7
    with pytest.raises(GenotypeError, match="cell="):
        count_param_free(genotype, "stem")


def test_plot_cell_writes_png_and_svg(tmp_path):
    written = plot_cell(_genotype(), "reduce", str(tmp_path / "pics" / "reduce.png"), svg=True)
    png, svg = written
    with open(png, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    text = open(svg).read()
    assert "<svg" in text
    from matplotlib.image import imread
    image = imread(png)
    assert image.shape[1] > 400 and image.std() > 0.05  # a real drawing, not a blank canvas


def test_edge_margins_follow_the_derived_genotype():
    from tfbnas.space.genotype import edge_margins

    ops = PRESETS["dcp"]
    rng = np.random.default_rng(5)
    normal, reduce = rng.normal(size=(5, len(ops))), rng.normal(size=(5, len(ops)))
    genotype = derive_genotype(normal, reduce, "dcp", 2)
    margins = edge_margins(normal, reduce, "dcp", 2)
    for cell, alphas in (("normal", normal), ("reduce", reduce)):
        assert [(r["op"], r["source"]) for r in margins[cell]] == list(genotype.cell(cell))
        for r in margins[cell]:
            row = alphas[edge_index(r["node"], r["source"])]
            probs = np.exp(row) / np.exp(row).sum()
            nonzero = sorted(probs[1:], reverse=True)  # column 0 is "none"
            assert r["p"] == pytest.approx(nonzero[0]) and r["runner_up"] == pytest.approx(nonzero[1])
            assert r["margin"] == pytest.approx(nonzero[0] - nonzero[1]) and r["margin"] >= 0
    # A clear winner has a large margin; uniform alphas have none.
    flat = edge_margins(np.zeros((5, len(ops))), np.zeros((5, len(ops))), "dcp", 2)
    assert all(r["margin"] == pytest.approx(0.0) for r in flat["normal"])
