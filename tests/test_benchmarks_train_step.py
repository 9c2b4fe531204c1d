"""``benchmarks/train_step.py``: the counted arithmetic of a step equals a hand count on tiny models, the default
genotype is the documented one, and one run at the smoke size prints a table and a SUMMARY line whose numbers
agree with each other and with the counting rule (no timing thresholds: the machine is shared)."""

import os
import re
import sys

import pytest
import tensorflow as tf

from conftest import REPO, BackgroundRun
from tfbnas.space.genotype import Genotype
from tfbnas.space.ops import PARAM_FREE_OPS, PRESETS

SCRIPT = os.path.join(REPO, "benchmarks", "train_step.py")
STEPS = ["parent", "child", "child-distilled", "baseline"]
NUMBER = r"(\d+(?:\.\d+)?)"
ROW = re.compile(rf"^smoke\s+({'|'.join(STEPS)})\s+" + r"\s+".join([NUMBER] * 4) + rf"\s+{NUMBER}%\s+"
                 + r"\s+".join([NUMBER] * 3) + "$", re.M)
CONV_ROW = re.compile(r"^(?:Conv2D|Depthwis)\s+\d+x\d+x\d+\s+[\dx]+\s+\d+\s+\d+\s+K?I?\s+(\d+)\s+"
                      + r"\s+".join([NUMBER] * 3) + rf"\s+{NUMBER}%$", re.M)
SUMMARY = re.compile(rf"^SUMMARY train-step: reference {NUMBER} GFLOP/s; parent {NUMBER}% \({NUMBER} img/s\); "
                     rf"child-distilled {NUMBER}% \({NUMBER} img/s\); baseline {NUMBER}% \({NUMBER} img/s\); "
                     rf"peak RSS {NUMBER} MiB$")


@pytest.fixture(scope="module")
def ts():
    sys.path.insert(0, os.path.join(REPO, "benchmarks"))
    import train_step

    return train_step


def test_single_conv_step_is_forward_plus_kernel_gradient(ts):
    h, w, cin, cout, k = 10, 12, 3, 5, 3
    inputs = tf.keras.Input((h, w, cin))
    model = tf.keras.Model(inputs, tf.keras.layers.Conv2D(cout, k, padding="same", use_bias=False)(inputs))
    forward = h * w * cin * cout * k * k
    # The image is no variable: no input gradient; the kernel gets its gradient (as many MACs as the forward).
    assert ts.arithmetic(model) == (forward, forward, 0)
    assert ts.step_flops(model) == 2 * 2 * forward
    assert 2 * forward == 2 * h * w * cin * cout * k * k  # FLOPs of the forward pass, by hand


def test_deeper_model_and_frozen_teacher_by_hand(ts):
    inputs = tf.keras.Input((8, 8, 3))
    x = tf.keras.layers.Conv2D(4, 3, padding="same", use_bias=False)(inputs)
    x = tf.keras.layers.BatchNormalization()(x)
    x = tf.keras.layers.DepthwiseConv2D(3, padding="same", use_bias=False)(x)
    x = tf.keras.layers.GlobalAveragePooling2D()(x)
    student = tf.keras.Model(inputs, tf.keras.layers.Dense(5)(x))
    stem, depthwise, dense = 8 * 8 * 3 * 4 * 9, 8 * 8 * 4 * 9, 4 * 5
    # stem: forward + kernel gradient; depthwise and dense: forward + kernel + input gradients.
    assert ts.arithmetic(student) == (stem + depthwise + dense, stem + depthwise + dense, depthwise + dense)
    assert ts.step_flops(student) == 2 * (2 * stem + 3 * depthwise + 3 * dense)

    teacher = tf.keras.models.clone_model(student)
    teacher.trainable = False
    assert ts.arithmetic(teacher, training=False) == (stem + depthwise + dense, 0, 0)
    assert ts.step_flops(student, teacher) == ts.step_flops(student) + 2 * (stem + depthwise + dense)


def test_conv_shapes_and_their_steps_by_hand(ts):
    from tfbnas.space.child_ops import NativeQuantConv2D

    inputs = tf.keras.Input((8, 8, 3))
    x = tf.keras.layers.Conv2D(4, 3, padding="same", use_bias=False)(inputs)
    frozen = tf.keras.layers.Conv2D(4, 3, padding="same", use_bias=False)
    frozen.trainable = False
    same = [tf.keras.layers.Conv2D(4, 3, padding="same", use_bias=False) for _ in range(2)]
    x = same[0](x) + same[1](x) + frozen(x)
    x = NativeQuantConv2D(4, 3, dilation_rate=2, padding="same", use_bias=False)(x)
    x = tf.keras.layers.DepthwiseConv2D(3, strides=2, padding="same", use_bias=False)(x)
    model = tf.keras.Model(inputs, tf.keras.layers.Dense(5)(tf.keras.layers.GlobalAveragePooling2D()(x)))
    one, two = (1, 1, 1, 1), (1, 2, 2, 1)  # strides or dilations
    shapes = ts.conv_shapes(model)
    assert shapes == {
        # the stem reads the image: kernel gradient only
        ("Conv2D", (8, 8, 3), (3, 3, 3, 4), one, one, "SAME", True, False): (1, 8 * 8 * 3 * 4 * 9),
        # two convs of one shape are one entry counted twice; a frozen one gets no kernel gradient
        ("Conv2D", (8, 8, 4), (3, 3, 4, 4), one, one, "SAME", True, True): (2, 8 * 8 * 4 * 4 * 9),
        ("Conv2D", (8, 8, 4), (3, 3, 4, 4), one, one, "SAME", False, True): (1, 8 * 8 * 4 * 4 * 9),
        ("Conv2D", (8, 8, 4), (3, 3, 4, 4), one, two, "SAME", True, True): (1, 8 * 8 * 4 * 4 * 9),
        ("DepthwiseConv2dNative", (8, 8, 4), (3, 3, 4, 1), two, one, "SAME", True, True): (1, 4 * 4 * 4 * 9),
    }
    # the table's convs are the step's forward arithmetic less the classifier's matmul
    assert sum(count * macs for count, macs in shapes.values()) == ts.arithmetic(model)[0] - 4 * 5
    for shape, (_, macs) in shapes.items():
        run, flops = ts.conv_step(shape, macs, batch=2)
        gradients = shape[-2] + shape[-1]
        assert flops == 2 * macs * 2 * (1 + gradients) and len(run()) == gradients


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_fixed_genotype_cycles_the_documented_ops(ts, preset):
    convs = [op for op in PRESETS[preset] if op not in PARAM_FREE_OPS]
    ops = convs + ["skip_connect", "max_pool_3x3"]
    g = ts.fixed_genotype(preset, 3)
    assert [op for op, _ in g.normal] == ops
    assert [op for op, _ in g.reduce] == ops[2:] + ops[:2]
    assert [source for _, source in g.normal] == [0, 1, 1, 2, 2, 3] == [source for _, source in g.reduce]
    assert Genotype.from_json(g.to_json()) == g
    for nodes in (1, 2, 4):
        assert ts.fixed_genotype(preset, nodes).nodes == nodes


def _smoke_command(folder):
    # One node per cell (a --genotype file) and grappler off keep the run near 40 s on 2 busy cores.
    genotype = Genotype("dcp", 1, [("sep_conv_3x3", 0), ("dil_conv_3x3", 1)],
                        [("max_pool_3x3", 0), ("sep_conv_5x5", 1)]).save(str(folder / "genotype.json"))
    return [sys.executable, SCRIPT, "--configs=smoke", "--steps=2", f"--genotype={genotype}", "--no_grappler",
            "--convs", "--child_init_channels=6"]


# It starts beside the in-process tests (conftest.BackgroundRun); its figures are only checked against each other.
SMOKE_RUN = BackgroundRun(__name__, "smoke_run", "train-step-smoke", _smoke_command)


@pytest.fixture(scope="module")
def smoke_run():
    return SMOKE_RUN.result()[0]


@pytest.mark.slow
def test_smoke_run_prints_consistent_table_and_summary(smoke_run):
    result = smoke_run
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    out = result.stdout
    assert "dcp Child, C=6, 3 cells, nodes 1, batch 32" in out  # --child_init_channels over the flagfile's C=8
    assert "genotype sep_conv_3x3,dil_conv_3x3 | max_pool_3x3,sep_conv_5x5" in out

    rows = {m[0]: [float(v) for v in m[1:]] for m in ROW.findall(out)}
    assert list(rows) == STEPS, out
    for step, (gflop, ms, images, rate, percent, reference, first, rss) in rows.items():
        assert min(gflop, ms, images, rate, percent, reference, first, rss) > 0, step
        assert images == pytest.approx(32 / (ms / 1e3), rel=0.01, abs=0.1)
        assert rate == pytest.approx(gflop / (ms / 1e3), rel=0.01, abs=0.1)
        assert percent == pytest.approx(100 * rate / reference, rel=0.02, abs=0.1)
    parent, child, distilled = rows["parent"][0], rows["child"][0], rows["child-distilled"][0]
    # Parent and Child have the same conv shapes; distillation adds the teacher's forward F to the Child's
    # F + K + I with K = F and 0 <= I <= F, so it adds between a third and a half of the Child's step.
    assert parent == child
    assert 1 / 3 - 0.01 <= (distilled - child) / child <= 1 / 2 + 0.01
    assert re.search(r"^smoke\s+teacher forward: distilled - labels-only Child step = -?\d", out, re.M)
    assert re.search(r"^smoke\s+input pipeline (alone \(TrainData\(config\)\.train\(0\)\): \d|: skipped)", out, re.M)

    last = out.strip().splitlines()[-1]
    match = SUMMARY.match(last)
    assert match, last
    reference, *rest, rss = (float(v) for v in match.groups())
    assert reference == pytest.approx(rows["parent"][5], abs=0.51)
    for (percent, images), step in zip(zip(rest[::2], rest[1::2]), ("parent", "child-distilled", "baseline")):
        assert percent > 0 and images > 0
        assert percent == pytest.approx(rows[step][4], abs=0.051)
        assert images == pytest.approx(rows[step][2], abs=0.51)
    assert rss >= max(row[7] for row in rows.values())

    # --convs: the labels-only Child's convs, whose FLOPs add up to its step's (less the classifier's matmul)
    convs = [[float(v) for v in m] for m in CONV_ROW.findall(out)]
    # (a conv's ms is its median less an empty call's: on a loaded machine a tiny one may print 0.00)
    assert convs and all(count >= 1 and gflop > 0 and min(rest) >= 0 for count, gflop, *rest in convs), out
    assert sum(count * gflop for count, gflop, *_ in convs) == pytest.approx(child, abs=0.002 * len(convs))
    for count, gflop, ms, rate, percent in convs:  # as printed: GFLOP to 0.001, ms to 0.01, GFLOP/s to 0.1
        assert abs(rate * ms / 1e3 - gflop) <= 0.0005 + 0.05 * ms / 1e3 + 0.005 * rate / 1e3 + 1e-9
    ceiling = re.search(r"^smoke\s+convs alone: ([\d.]+) ms = (\d+)% of the labels-only Child step; ceiling "
                        r"([\d.]+)% of \(a\)", out, re.M)
    assert ceiling, out
    assert float(ceiling[1]) == pytest.approx(sum(count * ms for count, _, ms, *_ in convs), rel=0.01, abs=0.1)
