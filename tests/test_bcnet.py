"""BCNet supernet: bilateral slicing, complementary training, scoring without training (one- or two-sided,
with per-width BatchNorm recalibration), extraction, training from scratch, LCE."""

import larq_compute_engine as lce
import numpy as np
import pytest
import tensorflow as tf

from tfbnas.cost import model_cost
from tfbnas.data import KNOWN_DATASETS, normalize_numpy
from tfbnas.deploy.flatbuffer import op_histogram
from tfbnas.width import WidthSearchError
from tfbnas.width.bcnet import BCNetSupernet, build_macro_model, calibrate_batchnorm, scaled_max_widths
from tfbnas.width.channel_bench import GRID, LAYER_NAMES, macro_cost
from tfbnas.width.evolution import EvolutionWidthOracle, WidthSpace, WidthTuner

WIDTHS = (0.25, 0.5, 0.25, 0.75, 0.5, 0.25, 0.25)


@pytest.fixture(scope="module")
def fashion(fashion_arrays):
    (x, y), _ = fashion_arrays
    rng = np.random.default_rng(0)
    idx = rng.choice(len(x), 1024, replace=False)
    return normalize_numpy(x[idx], KNOWN_DATASETS["fashion_mnist"]), y[idx]


@pytest.mark.parametrize("binary", [False, True])
def test_bilateral_output_is_the_average_of_the_two_sliced_paths(binary, fashion):
    tf.keras.utils.set_random_seed(1)
    net = BCNetSupernet((28, 28, 1), width_scale=0.125, binary=binary)
    x = fashion[0][:32]
    counts = net.counts(WIDTHS)
    paths = {}
    for side in ("left", "right"):
        path = net.path_logits(x, counts, side == "right").numpy()
        # The same path as a plain Keras model holding the sliced weights (BatchNorm on batch statistics).
        plain = net.extract(WIDTHS, side)(x, training=True).numpy()
        np.testing.assert_allclose(path, plain, atol=2e-5 * max(1.0, np.abs(path).max()))
        paths[side] = path
    assert np.abs(paths["left"] - paths["right"]).max() > 1e-3  # different channels, different outputs
    np.testing.assert_allclose(net.bilateral_logits(x, WIDTHS).numpy(), 0.5 * (paths["left"] + paths["right"]),
                               atol=1e-6)


def test_gradient_reaches_left_and_right_channels_only(fashion):
    net = BCNetSupernet((28, 28, 1), width_scale=0.125)
    x, y = fashion[0][:32], fashion[1][:32]
    with tf.GradientTape() as tape:
        logits = net.bilateral_logits(x, WIDTHS)
        loss = tf.reduce_mean(tf.keras.losses.sparse_categorical_crossentropy(y, logits, from_logits=True))
    grads = tape.gradient(loss, [net.head.kernel, net.classifier.kernel])
    full, c = net.max_widths[6], int(WIDTHS[6] * net.max_widths[6])  # head: 128 channels, width 32
    per_channel = np.abs(grads[0].numpy()).sum(axis=(0, 1, 2))
    assert (per_channel[:c] > 0).all(), "left channels get no gradient"
    assert (per_channel[full - c:] > 0).all(), "right channels get no gradient"
    assert (per_channel[c:full - c] == 0).all(), "channels outside both slices got gradient"
    rows = np.abs(grads[1].numpy()).sum(axis=1)
    assert (rows[:c] > 0).all() and (rows[full - c:] > 0).all() and (rows[c:full - c] == 0).all()


def test_complement_covers_every_channel_twice():
    net = BCNetSupernet((28, 28, 1), width_scale=0.125)
    for _ in range(20):
        counts = net.sample_counts().numpy()
        comp = net.complement(counts).numpy()
        full = np.array(net.max_widths)
        assert set(counts / full) <= set(GRID)
        for c, cc, n in zip(counts, comp, full):
            uses = np.zeros(n, int)
            for width in (c, cc):
                uses[:width] += 1  # left path
                uses[n - width:] += 1  # right path
            # Each step trains every channel of a layer equally often (2x, or 4x at full width).
            assert len(set(uses)) == 1 and uses[0] in (2, 4)


@pytest.mark.slow
def test_train_step_then_search_without_training(fashion, tmp_path):
    tf.keras.utils.set_random_seed(0)
    x, y = fashion
    net = BCNetSupernet((28, 28, 1), width_scale=0.125, binary=True)
    net.compile(optimizer=tf.keras.optimizers.Adam(2e-3))
    before = net.head.kernel.numpy().copy()
    history = net.fit(x[:768], y[:768], batch_size=64, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][0])
    changed = np.abs(net.head.kernel.numpy() - before).sum(axis=(0, 1, 2)) > 0
    assert changed.all(), "complementary training left some head channels untrained"
    # Each step records the sampled width and its complement: two entries per layer and step.
    np.testing.assert_array_equal(net.prior_count.numpy().sum(axis=1), 2 * 12)
    prior = net.width_prior()
    np.testing.assert_allclose(prior.sum(axis=1), 1.0, rtol=1e-6)

    weights = [w.numpy().copy() for w in net.trainable_weights]
    val = [(x[768:], y[768:])]
    space = WidthSpace(LAYER_NAMES, GRID, cost=lambda w: net.cost(w)["ops"], budget=0.5 * net.cost((1.0,) * 7)["ops"])
    tuner = WidthTuner(EvolutionWidthOracle(space, max_trials=6, population_size=3, layer_prior=prior, seed=0),
                       lambda w: net.score_widths(w, val), directory=str(tmp_path), project_name="bcnet")
    tuner.search(verbose=0)
    assert tuner.queries() == 6
    for row in tuner.history():
        assert 0.0 <= row["score"] <= 1.0 and row["cost"] <= space.budget
    for w, saved in zip(net.trainable_weights, weights):  # scoring does not train
        np.testing.assert_array_equal(w.numpy(), saved)
    score = net.score_widths(tuner.best_widths(), val)
    assert score["score"] == pytest.approx(0.5 * (score["acc_left"] + score["acc_right"]))


def _ce(logits, y):
    logits = logits - logits.max(axis=1, keepdims=True)
    log_p = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
    return float(-log_p[np.arange(len(y)), y].mean())


@pytest.mark.slow
def test_one_sided_supernet_scores_its_left_path_only(fashion):
    tf.keras.utils.set_random_seed(5)  # an initialisation whose two paths score differently on these images
    both = BCNetSupernet((28, 28, 1), width_scale=0.125)
    one = BCNetSupernet((28, 28, 1), width_scale=0.125, bilateral=False)
    one.set_weights(both.get_weights())  # the same weights: only the scoring rule differs
    x, y = fashion[0][:256], fashion[1][:256].astype(np.int64)
    s_both, s_one = both.score_widths(WIDTHS, [(x, y)]), one.score_widths(WIDTHS, [(x, y)])
    assert one.scored_sides == ("left",) and "acc_right" not in s_one
    # The left path's own accuracy and loss, computed here from its logits.
    left = one.path_logits(x, one.counts(WIDTHS), False).numpy()
    assert s_one["score"] == pytest.approx(np.mean(np.argmax(left, 1) == y))
    assert s_one["loss"] == pytest.approx(_ce(left, y), rel=1e-5)
    # The two paths differ here, so the average of both is not the left path's score.
    assert abs(s_both["acc_left"] - s_both["acc_right"]) > 0.05
    assert s_both["loss_left"] != pytest.approx(s_both["loss_right"], rel=1e-3)
    assert s_one["score"] != s_both["score"]
    assert s_one["loss"] != pytest.approx(s_both["loss"], rel=1e-4)
    assert s_one["acc_left"] == s_both["acc_left"]


@pytest.mark.slow
def test_recalibration_uses_the_calibration_statistics_of_the_width(fashion):
    tf.keras.utils.set_random_seed(3)
    net = BCNetSupernet((28, 28, 1), width_scale=0.125)
    x, y = fashion
    x_cal, x_val, y_val = x[:256], x[512:768], y[512:768]
    state = [w.numpy().copy() for w in net.weights]
    plain = net.score_widths(WIDTHS, [(x_val, y_val)])
    recal = net.score_widths(WIDTHS, [(x_val, y_val)], calibration_x=x_cal)
    loss = tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    for side in ("left", "right"):
        stats = net.calibration_statistics(WIDTHS, x_cal, side)
        # Independently: the input of every BatchNorm of the plain model of this path, in training mode
        # (batch statistics), on the calibration images and on the scoring batch.
        model = net.extract(WIDTHS, side)
        bns = [layer for layer in model.layers if isinstance(layer, tf.keras.layers.BatchNormalization)]
        assert [b.name for b in bns] == [b.name for b in net.batch_norms]
        probe = tf.keras.Model(model.input, [b.input for b in bns])
        largest_gap = 0.0
        for layer, h_cal, h_val, (mean, var) in zip(net.batch_norms, probe(x_cal, training=True),
                                                    probe(x_val, training=True), stats):
            c, full = h_cal.shape[-1], layer.channels
            sl = slice(0, c) if side == "left" else slice(full - c, full)
            m, v = (t.numpy() for t in tf.nn.moments(h_cal, [0, 1, 2]))
            np.testing.assert_allclose(mean[sl], m, rtol=1e-3, atol=1e-4 * max(1.0, np.abs(m).max()))
            np.testing.assert_allclose(var[sl], v, rtol=1e-3, atol=1e-6)
            m_val, v_val = (t.numpy() for t in tf.nn.moments(h_val, [0, 1, 2]))
            largest_gap = max(largest_gap, float(np.max(np.abs(var[sl] - v_val) / v_val)))
        # Not the statistics scoring uses without recalibration (those of the scoring batch itself).
        assert largest_gap > 0.05
        # The recalibrated score is the extracted model, calibrated on the same images, in inference mode.
        calibrated = net.extract(WIDTHS, side, calibration_x=x_cal)
        logits = calibrated(x_val, training=False).numpy()
        assert recal[f"acc_{side}"] == pytest.approx(np.mean(np.argmax(logits, 1) == y_val), abs=2 / len(y_val))
        assert recal[f"loss_{side}"] == pytest.approx(float(loss(y_val, logits)), rel=1e-3)
        # ... and its logits are not those of the path on the scoring batch's own statistics.
        counts = net.counts(WIDTHS)
        stats_t = [(tf.constant(m), tf.constant(v)) for m, v in stats]
        atol = 1e-3 * max(1.0, np.abs(logits).max())
        np.testing.assert_allclose(net.path_logits(x_val, counts, side == "right", stats_t).numpy(), logits, atol=atol)
        batch_logits = net.path_logits(x_val, counts, side == "right").numpy()
        assert np.abs(batch_logits - logits).max() > 20 * atol
    # Calibration batches are pooled: the stem's statistics over two halves are those of all 256 images.
    halves = net.calibration_statistics(WIDTHS, [x_cal[:128], (x_cal[128:], None)], "left")
    whole = net.calibration_statistics(WIDTHS, x_cal, "left")
    np.testing.assert_allclose(halves[0][0], whole[0][0], rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(halves[0][1], whole[0][1], rtol=1e-4, atol=1e-6)
    # Nothing in the supernet changed: no variable, and the plain score is the same as before.
    for w, saved in zip(net.weights, state):
        np.testing.assert_array_equal(w.numpy(), saved)
    assert net.score_widths(WIDTHS, [(x_val, y_val)]) == plain


@pytest.mark.slow
def test_scratch_model_has_the_widths_but_not_the_supernet_weights_and_trains(fashion):
    tf.keras.utils.set_random_seed(5)
    x, y = fashion
    net = BCNetSupernet((28, 28, 1), width_scale=0.125, binary=True)
    extracted, fresh = net.extract(WIDTHS, "left"), net.build_model(WIDTHS)
    assert [type(layer).__name__ for layer in fresh.layers] == [type(layer).__name__ for layer in extracted.layers]
    assert [w.shape for w in fresh.weights] == [w.shape for w in extracted.weights]
    for name in ["stem", "mb1_expand", "mb3_dw", "mb4_project", "head", "logits"]:
        assert not np.allclose(fresh.get_layer(name).get_weights()[0], extracted.get_layer(name).get_weights()[0])
    start = [w.copy() for w in fresh.get_weights()]
    fresh.compile(optimizer=tf.keras.optimizers.Adam(2e-3), metrics=["accuracy"],
                  loss=tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    history = fresh.fit(x[:768], y[:768], batch_size=64, epochs=3, verbose=0).history
    assert history["loss"][-1] < history["loss"][0] - 0.1
    assert any(not np.array_equal(a, b) for a, b in zip(start, fresh.get_weights()))
    # The calibrated model does better than chance on images it has not seen.
    calibrate_batchnorm(fresh, x[:512])
    assert fresh.evaluate(x[768:], y[768:], verbose=0)[1] > 0.2  # chance: 0.1


@pytest.mark.parametrize("binary", [False, True])
def test_macro_cost_matches_the_cost_model(binary):
    max_widths = scaled_max_widths(0.25)
    model = build_macro_model(WIDTHS, (28, 28, 1), 10, max_widths, binary=binary)
    report = model_cost(model)
    cost = macro_cost(WIDTHS, 28, 1, 10, max_widths, binary=binary)
    assert report.flops == cost["flops"]
    assert report.bops == cost["bops"]
    assert (report.bops > 0) == binary


@pytest.mark.slow
def test_extracted_binary_width_model_converts_with_lce(fashion):
    tf.keras.utils.set_random_seed(2)
    net = BCNetSupernet((28, 28, 1), width_scale=0.125, binary=True)
    model = net.extract(WIDTHS, "right", calibration_x=fashion[0][:256])
    ops = op_histogram(lce.convert_keras_model(model))
    binary_convs = [layer for layer in model.layers if type(layer).__name__ == "QuantConv2D"]
    assert len(binary_convs) == 9  # expand + project of 4 blocks, head
    assert ops.get("LceBconv2d", 0) == 9
    assert ops.get("CONV_2D", 0) == 1  # only the real-valued stem
    assert ops.get("DEPTHWISE_CONV_2D", 0) == 4
    # Calibrated BatchNorm: inference output close to the batch-statistics path of the supernet.
    x = fashion[0][:256]
    inference = model(x, training=False).numpy()
    path = net.path_logits(x, net.counts(WIDTHS), True).numpy()
    assert np.mean(np.argmax(inference, 1) == np.argmax(path, 1)) > 0.9


def test_bad_arguments():
    with pytest.raises(WidthSearchError, match="input_shape"):
        BCNetSupernet((28, 28))
    net = BCNetSupernet((28, 28, 1), width_scale=0.125)
    with pytest.raises(WidthSearchError, match="side"):
        net.extract(WIDTHS, "middle")
    with pytest.raises(WidthSearchError, match="outside"):
        net.counts((0.0,) * 7)
    with pytest.raises(WidthSearchError, match="no batches"):
        net.score_widths(WIDTHS, [])
    with pytest.raises(WidthSearchError, match="no images"):
        net.calibration_statistics(WIDTHS, [])
    with pytest.raises(WidthSearchError, match="side"):
        net.calibration_statistics(WIDTHS, np.zeros((4, 28, 28, 1), np.float32), "middle")
