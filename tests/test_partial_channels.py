"""Partial-channel connections (PC-DARTS, ``--partial_channels=K``): each supernet edge sends the first
``C / K`` channels of its input through its candidate ops, the rest pass by, and the two parts are
shuffled. Checked: the shuffle and bypass against hand values; ``K = 1`` is the full supernet, variable
for variable and value for value; the fused form equals the plain reference at ``K = 2`` (values and
gradients, Child and Parent); the ops see ``C / K`` channels; the bypassed channels reach the node
untouched by any op weight; the search runs with it and a width it cannot split is one line, exit 2.
"""

import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from conftest import REPO
import test_fast_path as fast_path  # noqa: E402 (conftest puts tests/ on the path)
from tfbnas.space import SuperNet
from tfbnas.space.ops import SpaceError
from tfbnas.space.primitives import channel_shuffle, partial_bypass, partial_edge_output
from tfbnas.space.supernet import SearchCell


def test_shuffle_and_bypass_against_hand_values():
    x = tf.reshape(tf.range(8.0), [1, 1, 1, 8])
    # groups of 4: [0 1 | 2 3 | 4 5 | 6 7] -> 0 2 4 6 1 3 5 7
    np.testing.assert_array_equal(channel_shuffle(x, 4).numpy().ravel(), [0, 2, 4, 6, 1, 3, 5, 7])
    np.testing.assert_array_equal(channel_shuffle(x, 1).numpy(), x.numpy())
    image = tf.reshape(tf.range(32.0), [1, 4, 4, 2])
    np.testing.assert_array_equal(partial_bypass(image, 1, 1).numpy(), image.numpy()[..., 1:])
    pooled = partial_bypass(image, 1, 2).numpy()[0, ..., 0]  # 2x2 max pool at stride 2 of channel 1
    np.testing.assert_array_equal(pooled, [[11, 15], [27, 31]])
    y = tf.fill([1, 1, 1, 2], -1.0)  # the ops' output on the sampled C/K = 2 of C = 8 channels
    out = partial_edge_output(y, x[..., 2:], 4).numpy().ravel()  # [-1 -1 | 2 3 | 4 5 | 6 7] shuffled
    np.testing.assert_array_equal(out, [-1, 2, 4, 6, -1, 3, 5, 7])


@pytest.mark.parametrize("fused", [True, False])
def test_k1_is_the_full_supernet(fused):
    x = tf.random.stateless_normal((2, 10, 10, 3), seed=(1, 2))
    nets = []
    for partial in (None, 1):
        tf.keras.utils.set_random_seed(3)
        kwargs = {} if partial is None else {"partial_channels": partial}
        nets.append(SuperNet(5, init_channels=8, num_cells=3, nodes=2, fused=fused, **kwargs))
        nets[-1](x)
    a, b = nets
    assert [v.shape for v in a.variables] == [v.shape for v in b.variables]
    np.testing.assert_array_equal(a(x, training=True).numpy(), b(x, training=True).numpy())


@pytest.mark.parametrize("preset, binary", [("dcp", True), pytest.param("bats", False, marks=pytest.mark.slow),
                                            pytest.param("bireal", True, marks=pytest.mark.slow)])
def test_fused_equals_plain_with_partial_channels(preset, binary):
    fast_path.test_fused_equals_plain(preset, "lce", binary, partial_channels=2)


def test_the_ops_see_c_over_k_channels_and_the_rest_passes_untouched():
    c, k = 8, 4
    net = SuperNet(5, init_channels=c, num_cells=1, nodes=1, partial_channels=k)
    net(tf.zeros([1, 6, 6, 1]))
    first = net.cells[0]  # one cell: a reduction cell, 2C channels
    kernels = [v for v in first.weights if "from_" in v.name and "kernel" in v.name]
    assert kernels and all(v.shape[2] in (2 * c // k, 1) for v in kernels)  # input channels C/K (depthwise: 1)
    # One node fed by both preprocessed inputs at stride 1 is the sum of the two edges: where the shuffle
    # puts the channels that were not sampled, it holds the preprocessed inputs' sum whatever the mix.
    cell = SearchCell(c, nodes=1, preset="dcp", partial_channels=k)
    s0, s1 = (tf.random.stateless_normal([2, 6, 6, c], seed=(i, 6)) for i in (1, 2))
    mix = tf.nn.softmax(tf.random.stateless_normal([2, 8], seed=(9, 9)))
    out = cell(s0, s1, mix, training=False).numpy()
    inputs = cell.pre0(s0, training=False) + cell.pre1(s1, training=False)
    sampled = tf.zeros_like(inputs[..., :c // k])
    expected = channel_shuffle(tf.concat([sampled, inputs[..., c // k:]], -1), k).numpy()
    bypassed = channel_shuffle(tf.concat([sampled[:1, :1, :1], tf.ones([1, 1, 1, c - c // k])], -1), k)
    bypassed = bypassed.numpy().ravel() == 1
    assert bypassed.sum() == c - c // k
    np.testing.assert_allclose(out[..., bypassed], expected[..., bypassed], rtol=1e-5, atol=1e-5)
    other = cell(s0, s1, tf.nn.softmax(-7 * mix), training=False).numpy()
    np.testing.assert_array_equal(other[..., bypassed], out[..., bypassed])
    assert np.abs(other[..., ~bypassed] - out[..., ~bypassed]).max() > 1e-3  # the sampled ones follow the mix


def test_widths_it_cannot_split_are_one_error():
    with pytest.raises(SpaceError, match="--partial_channels=4 needs --init_channels divisible by twice it"):
        SuperNet(5, init_channels=12, num_cells=3, partial_channels=4)
    result = subprocess.run([sys.executable, "-m", "tfbnas.search", "--flagfile=configs/smoke.flags",
                             "--partial_channels=3", "--output_dir=/nonexistent/never"], cwd=REPO,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 2
    ours = [line for line in result.stderr.splitlines() if line.startswith("tfbnas.search")]
    assert len(ours) == 1 and "got 8:" in ours[0], result.stderr[-2000:]
    assert "--partial_channels=3 needs --init_channels divisible by twice it" in ours[0]
