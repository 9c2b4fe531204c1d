"""The main job's width stage: per-cell widths from DNAL gate scores under an OPs budget (the stage end to end,
with its resume, runs inside ``test_cli.py``'s main-job test)."""

import numpy as np
import pytest

from tfbnas import flags as tflags
from tfbnas.width import WidthSearchError
from tfbnas.width.stage import WidthStageConfig, cell_scores, cell_widths, widths_for_budget


def test_budget_threshold_is_the_smallest_that_fits():
    rng = np.random.RandomState(0)
    scores = [rng.randn(8), rng.randn(16), rng.randn(32)]

    def cost(widths):  # a made-up cost that grows with every width (quadratic like a conv's)
        return sum((w * c) ** 2 for w, c in zip(widths, (8, 16, 32)))

    full = cost([1.0, 1.0, 1.0])
    open_gates = cost(cell_widths(scores, 0.0))
    for fraction in (0.9, 0.5, 0.2, 0.05):
        tau, widths, ops = widths_for_budget(scores, fraction * full, cost, log=lambda _: None)
        assert ops == cost(widths) <= fraction * full
        # brute force over every threshold: none smaller than tau fits
        fitting = [t for t in np.unique(np.concatenate(scores)) if cost(cell_widths(scores, t)) <= fraction * full]
        assert tau == pytest.approx(min(fitting))
        if fraction * full > open_gates:  # the budget is filled past the open gates with closed-gate channels
            assert tau < 0 and ops > open_gates
    # the whole Child when it fits
    tau, widths, ops = widths_for_budget(scores, full, cost, log=lambda _: None)
    assert tau == -np.inf and widths == [1.0, 1.0, 1.0] and ops == full


def test_cell_widths_keep_one_channel_and_scale_a_base():
    scores = [np.array([-1.0, 2.0, 3.0, -4.0]), np.array([-1.0, -2.0])]
    assert cell_widths(scores, 0.0) == [0.5, 0.5]  # 2 of 4 open; none open keeps one of 2
    assert cell_widths(scores, 2.5, base=[0.5, 2.0]) == [0.125, 1.0]


def test_even_one_channel_per_cell_above_the_budget_keeps_the_smallest():
    scores = [np.array([1.0, 2.0]), np.array([3.0, 4.0])]
    tau, widths, ops = widths_for_budget(scores, 0.1, lambda w: 1.0 + sum(w), log=lambda _: None)
    assert widths == [0.5, 0.5] and ops == 2.0


def test_cell_scores_take_the_highest_gate_of_the_cell():
    from tfbnas.models import build_child
    from tfbnas.space.genotype import Genotype
    from tfbnas.width import dnal

    genotype = Genotype("bireal", 2, [("bireal_conv_3x3", 0), ("skip_connect", 1), ("bireal_conv_5x5", 2),
                                      ("max_pool_3x3", 0)],
                        [("skip_connect", 0), ("bireal_conv_3x3", 1), ("bireal_conv_3x3", 2), ("avg_pool_3x3", 1)])
    child = build_child(genotype, init_channels=8, num_cells=3, input_shape=(16, 16, 1))
    gated = dnal.insert_gates(child)
    rng = np.random.RandomState(1)
    by_cell = {}
    for gate in dnal.gate_layers(gated):
        gate.s.assign(rng.randn(gate.s.shape[0]).astype(np.float32))
        if gate.name.startswith("cell"):
            by_cell.setdefault(int(gate.name[4]), []).append(gate.s.numpy())
    scores = cell_scores(gated, 3)
    assert [len(s) for s in scores] == [8, 16, 32]
    for i, s in enumerate(scores):
        full = [g for g in by_cell[i] if len(g) == len(s)]
        assert len(full) >= 2  # the cell's convs all write into its channels
        np.testing.assert_allclose(s, np.max(full, axis=0))
    with pytest.raises(WidthSearchError, match="no gated conv"):
        cell_scores(gated, 4)


@pytest.mark.parametrize("field, value, message", [
    ("budget", 0.0, "--width_budget"), ("budget", 1.5, "--width_budget"), ("method", "bcnet", "--width=bcnet"),
    ("gate_epochs", 0, "--width_gate_epochs"), ("epochs", 0, "--width_epochs")])
def test_bad_settings(field, value, message):
    with pytest.raises(WidthSearchError, match=message):
        WidthStageConfig(**{field: value}).check()


def test_bad_budget_flag_is_one_line_and_exit_2(parse_flags, capsys):
    # the main job's flag parser in this process (test_cli.py runs it as a program: the same one line)
    parse_flags()
    with pytest.raises(SystemExit) as exit_:
        tflags._one_line_parser(["run.py", "--width=dnal", "--width_budget=0"])
    assert exit_.value.code == 2
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and "flag error" in lines[0] and "--width_budget must be in (0, 1]" in lines[0], lines
