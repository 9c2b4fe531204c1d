"""tfbnas.train as a library: the Distiller on real Fashion-MNIST, its loss, schedules, weight decay,
two-stage models and the genotype/space checks."""

import json
import math

import larq as lq
import numpy as np
import pytest
import tensorflow as tf

from tfbnas import data
from tfbnas.baselines import binary_resnet
from tfbnas.flags import ConfigError
from tfbnas.models import build_child, build_parent
from tfbnas.space.genotype import Genotype, GenotypeError, derive_genotype
from tfbnas.space.ops import PRESETS, binary_conv_layers
from tfbnas.train import (CosineSchedule, Distiller, DistillerError, OneCycleSchedule, ScheduleError, TrainConfig,
                          decayed_variables, distillation_kl, real_twin, resolve_space, stage1_model)
from tfbnas.train.recipe import make_optimizer

INFO = data.KNOWN_DATASETS["fashion_mnist"]
CE = tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True)


@pytest.fixture(scope="module")
def fashion(fashion_arrays):
    (x, y), (xt, yt) = fashion_arrays
    return (data.normalize_numpy(x[:3000], INFO), y[:3000]), (data.normalize_numpy(xt[:1000], INFO), yt[:1000])


def tiny_genotype(preset="dcp", nodes=1):
    ops = PRESETS[preset]
    rows = sum(2 + i for i in range(nodes))
    alphas = np.zeros((rows, len(ops)))
    alphas[:, ops.index("skip_connect")] = 1.0
    alphas[0, ops.index(ops[-1])] = 3.0
    return derive_genotype(alphas, alphas, preset, nodes)


def tiny_child(binary=True, genotype=None):
    build = build_child if binary else build_parent
    return build(genotype or Genotype("dcp", 1, [("sep_conv_3x3", 0), ("skip_connect", 1)],
                                      [("max_pool_3x3", 0), ("dil_conv_3x3", 1)]), init_channels=4, num_cells=3)


# ------------------------------------------------------------------------------------------ Distiller


@pytest.mark.slow
def test_distiller_trains_the_student_on_fashion_mnist_and_never_touches_the_teacher(fashion):
    (x, y), (xt, yt) = fashion
    tf.keras.utils.set_random_seed(1)
    student = binary_resnet((28, 28, 1), 10, widths=(16, 32), blocks_per_stage=1)
    teacher = real_twin(student)
    teacher.compile(tf.keras.optimizers.Adam(3e-3), CE, ["accuracy"])
    teacher.fit(x, y, epochs=2, batch_size=64, verbose=0)
    frozen = [w.copy() for w in teacher.get_weights()]  # includes BatchNorm moving statistics

    distiller = Distiller(student, teacher, alpha=0.9, temperature=4.0)
    distiller.compile(tf.keras.optimizers.Adam(3e-3), metrics=["accuracy"])
    assert {id(v) for v in distiller.trainable_variables} == {id(v) for v in student.trainable_variables}
    before = distiller.evaluate(xt, yt, verbose=0, return_dict=True)
    history = distiller.fit(x, y, epochs=2, batch_size=64, verbose=0).history
    after = distiller.evaluate(xt, yt, verbose=0, return_dict=True)

    assert after["accuracy"] > before["accuracy"] + 0.2 and after["accuracy"] > 0.35, (before, after)
    assert history["kd_loss"][-1] < history["kd_loss"][0] and history["loss"][-1] < history["loss"][0]
    # evaluate() is the student's own cross-entropy and accuracy.
    student.compile(loss=CE, metrics=["accuracy"])
    loss, accuracy = student.evaluate(xt, yt, verbose=0)
    assert accuracy == pytest.approx(after["accuracy"]) and loss == pytest.approx(after["loss"], rel=1e-5)
    assert not teacher.trainable
    for old, new in zip(frozen, teacher.get_weights()):
        np.testing.assert_array_equal(old, new)


def test_distiller_loss_is_alpha_t2_kl_plus_one_minus_alpha_ce(fashion):
    (x, y), _ = fashion
    x, y = x[:32], y[:32]
    tf.keras.utils.set_random_seed(2)
    student = binary_resnet((28, 28, 1), 10, widths=(8,), blocks_per_stage=1)
    teacher = real_twin(binary_resnet((28, 28, 1), 10, widths=(8,), blocks_per_stage=1))
    alpha, temperature = 0.7, 3.0
    distiller = Distiller(student, teacher, alpha=alpha, temperature=temperature)
    distiller.compile(tf.keras.optimizers.SGD(0.0))
    logs = distiller.train_on_batch(x, y, return_dict=True)

    s = student(x, training=True).numpy().astype(np.float64)
    t = teacher(x, training=False).numpy().astype(np.float64)

    def log_softmax(z):
        z = z - z.max(axis=1, keepdims=True)
        return z - np.log(np.exp(z).sum(axis=1, keepdims=True))

    p_t = np.exp(log_softmax(t / temperature))
    kl = np.mean(np.sum(p_t * (log_softmax(t / temperature) - log_softmax(s / temperature)), axis=1))
    ce = np.mean(-log_softmax(s)[np.arange(len(y)), y])
    assert logs["kd_loss"] == pytest.approx(temperature ** 2 * kl, rel=1e-4)
    assert logs["ce_loss"] == pytest.approx(ce, rel=1e-4)
    assert logs["loss"] == pytest.approx(alpha * temperature ** 2 * kl + (1 - alpha) * ce, rel=1e-4)
    # Identical distributions carry no distillation loss.
    assert float(tf.reduce_max(tf.abs(distillation_kl(t, t, temperature)))) < 1e-5


def test_distiller_serialises_and_rejects_bad_arguments(fashion, tmp_path):
    (_, _), (xt, yt) = fashion
    tf.keras.utils.set_random_seed(3)
    student = binary_resnet((28, 28, 1), 10, widths=(8,), blocks_per_stage=1)
    teacher = real_twin(student)
    distiller = Distiller(student, teacher, alpha=0.8, temperature=2.0, name="kd")
    assert tf.keras.utils.get_registered_object("tfbnas>Distiller") is Distiller
    clone = Distiller.from_config(distiller.get_config())
    assert (clone.alpha, clone.temperature) == (0.8, 2.0)
    assert [w.shape for w in clone.student.weights] == [w.shape for w in student.weights]

    distiller.compile(tf.keras.optimizers.Adam(1e-3), metrics=["accuracy"])
    distiller.save(tmp_path / "kd.keras")
    loaded = tf.keras.models.load_model(tmp_path / "kd.keras")
    assert isinstance(loaded, Distiller) and not loaded.teacher.trainable
    np.testing.assert_allclose(loaded.predict(xt[:16], verbose=0), distiller.predict(xt[:16], verbose=0), atol=1e-5)

    with pytest.raises(DistillerError, match="alpha"):
        Distiller(student, teacher, alpha=1.5)
    with pytest.raises(DistillerError, match="temperature"):
        Distiller(student, teacher, temperature=0.0)
    with pytest.raises(DistillerError, match="same model"):
        Distiller(student, student)
    with pytest.raises(DistillerError, match="no loss"):
        Distiller(student, teacher).compile("adam", loss="mse")


# ------------------------------------------------------------------------------------------ schedules


def test_cosine_and_onecycle_schedules():
    cosine = CosineSchedule(1e-3, total_steps=100, warmup_steps=10, min_lr=1e-5)
    values = [float(cosine(t)) for t in range(120)]
    assert values[0] == pytest.approx(1e-4, rel=1e-5) and values[9] == pytest.approx(1e-3, rel=1e-5)
    assert all(a >= b - 1e-12 for a, b in zip(values[10:], values[11:]))  # decays after the warm-up
    assert values[55] == pytest.approx(1e-5 + (1e-3 - 1e-5) * 0.5 * (1 + math.cos(math.pi * 45 / 90)), rel=1e-5)
    assert values[100] == pytest.approx(1e-5, rel=1e-5) and values[119] == pytest.approx(1e-5, rel=1e-5)

    cycle = OneCycleSchedule(1e-2, total_steps=200, warmup_fraction=0.25)
    values = [float(cycle(t)) for t in range(201)]
    assert values[0] == pytest.approx(1e-2 / 25, rel=1e-5) and max(values) == pytest.approx(1e-2, rel=1e-5)
    assert int(np.argmax(values)) == 50 and values[-1] == pytest.approx(1e-2 / 25 / 1e4, rel=1e-3)
    assert all(a <= b + 1e-12 for a, b in zip(values[:50], values[1:51]))

    for schedule in (cosine, cycle):
        twin = tf.keras.optimizers.schedules.deserialize(tf.keras.optimizers.schedules.serialize(schedule))
        assert type(twin) is type(schedule) and float(twin(37)) == pytest.approx(float(schedule(37)))
    with pytest.raises(ScheduleError, match="warmup_steps"):
        CosineSchedule(1e-3, total_steps=10, warmup_steps=10)
    with pytest.raises(ScheduleError, match="total_steps"):
        OneCycleSchedule(1e-3, total_steps=0)


# ------------------------------------------------------------------------------ weight decay, stages


def test_weight_decay_spares_latent_binary_kernels():
    tf.keras.utils.set_random_seed(4)
    child = tiny_child()
    decayed = {id(v) for v in decayed_variables(child)}
    binary_kernels = [layer.kernel for layer in binary_conv_layers(child)]
    assert binary_kernels and not decayed & {id(k) for k in binary_kernels}
    names = {v.name for v in decayed_variables(child)}
    assert any("stem_conv" in n for n in names) and any("classifier" in n for n in names)
    assert any("dwconv" in n for n in names)  # the real-valued depthwise part of sep_conv
    assert not any("bn" in n or "bias" in n for n in names)

    # One step with zero gradients: only decay moves weights, and only the real kernels.
    config = TrainConfig(optimizer="sgd", lr=0.5, weight_decay=0.2, lr_schedule="cosine")
    optimizer = make_optimizer(config, total_steps=10, model=child)
    before = {id(v): v.numpy().copy() for v in child.trainable_variables}
    optimizer.apply_gradients([(tf.zeros_like(v), v) for v in child.trainable_variables])
    for v in child.trainable_variables:
        if id(v) in decayed:
            np.testing.assert_allclose(v.numpy(), before[id(v)] * (1 - 0.5 * 0.2), rtol=1e-5)
        else:
            np.testing.assert_array_equal(v.numpy(), before[id(v)])


@pytest.mark.parametrize("binary", ["activations", "weights"])
def test_stage1_model_turns_one_side_real_and_keeps_the_weights(fashion, binary):
    (x, _), _ = fashion
    tf.keras.utils.set_random_seed(5)
    child = tiny_child()
    first = stage1_model(child, binary)
    convs = [layer for layer in first.layers if isinstance(layer, lq.layers.QuantConv2D)]
    assert convs and len(convs) == len(binary_conv_layers(child))
    for conv in convs:
        if binary == "activations":
            assert conv.kernel_quantizer is None and conv.input_quantizer.precision == 1
        else:
            assert conv.input_quantizer is None and conv.kernel_quantizer.precision == 1
        assert conv.kernel_constraint is not None
    assert not binary_conv_layers(first)
    for a, b in zip(child.get_weights(), first.get_weights()):
        np.testing.assert_array_equal(a, b)
    assert not np.allclose(first.predict(x[:8], verbose=0), child.predict(x[:8], verbose=0))
    # the stage-1 model owns its variables: moving the Child's weights leaves it where it was
    kept = first.get_weights()
    child.set_weights([w + 0.01 for w in child.get_weights()])
    for a, b in zip(kept, first.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_real_twin_has_no_binary_layer_and_the_same_shapes():
    child = tiny_child()
    twin = real_twin(child)
    assert not binary_conv_layers(twin) and binary_conv_layers(child)
    assert [w.shape for w in twin.get_weights()] == [w.shape for w in child.get_weights()]
    assert [w.shape for w in tiny_child(binary=False).get_weights()] == [w.shape for w in twin.get_weights()]



def test_init_from_search_takes_the_inherited_weights_and_names_the_fix(tmp_path):
    from conftest import trained_like
    from tfbnas.train.twins import inherit_from_search

    inherited = tiny_child()
    trained_like(inherited)
    inherited.save(tmp_path / "inherited_child.keras")
    child, parent = tiny_child(), tiny_child(binary=False)
    before = parent.get_weights()
    assert inherit_from_search(child, "child", str(tmp_path))
    for a, b in zip(child.get_weights(), inherited.get_weights()):
        np.testing.assert_array_equal(a, b)
    assert not inherit_from_search(parent, "parent", str(tmp_path))  # no inherited_parent.keras: kept as it was
    for a, b in zip(parent.get_weights(), before):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(ConfigError, match=r"--init_from_search needs .*inherited_child.keras.*--noinit_from_search"):
        inherit_from_search(child, "child", str(tmp_path / "elsewhere"))
    narrow = build_child(Genotype("dcp", 1, [("sep_conv_3x3", 0), ("skip_connect", 1)],
                                  [("max_pool_3x3", 0), ("dil_conv_3x3", 1)]), init_channels=4, num_cells=3,
                         widths=[1, 0.5, 1])
    with pytest.raises(ConfigError, match="does not fit the child .*--widths"):
        inherit_from_search(narrow, "child", str(tmp_path))


# ----------------------------------------------------------------------------- genotype + space flags


def search_run(tmp_path, genotype, **search_flags):
    folder = tmp_path / "search"
    genotype.save(str(folder / "genotype.json"))
    if search_flags:
        (folder / "flags.json").write_text(json.dumps(search_flags))
    return str(folder / "genotype.json")


def test_space_comes_from_the_search_run_and_explicit_flags_win(tmp_path):
    path = search_run(tmp_path, tiny_genotype("dcp", 2), preset="dcp", init_channels=6, num_cells=4, nodes=2)
    config, genotype, sources = resolve_space(TrainConfig(genotype=path))
    assert (config.preset, config.init_channels, config.num_cells, config.nodes) == ("dcp", 6, 4, 2)
    assert "flags.json" in sources["init_channels"] and genotype.nodes == 2
    config, _, sources = resolve_space(TrainConfig(genotype=path, num_cells=5, widths=["1", "0.5", "1", "1", "1"]))
    assert config.num_cells == 5 and sources["num_cells"] == "--num_cells" and config.widths == [1, 0.5, 1, 1, 1]
    # Without a search flags.json, preset and nodes come from the genotype itself.
    other = tmp_path / "loose" / "genotype.json"
    tiny_genotype("bats", 3).save(str(other))
    config, _, sources = resolve_space(TrainConfig(genotype=str(other)))
    assert (config.preset, config.nodes, config.num_cells) == ("bats", 3, 8) and sources["preset"] == "the genotype"


def test_the_child_can_be_sized_apart_from_the_searched_supernet(tmp_path):
    # The main job passes one --init_channels / --num_cells (the supernet's, also in the search's flags.json);
    # --child_init_channels / --child_num_cells win over both and over an explicit --init_channels.
    path = search_run(tmp_path, tiny_genotype("dcp", 2), preset="dcp", init_channels=6, num_cells=4, nodes=2)
    config, _, sources = resolve_space(TrainConfig(genotype=path, init_channels=8, child_init_channels=12,
                                                   child_num_cells=5, widths=["1"] * 5))
    assert (config.init_channels, config.num_cells, config.nodes) == (12, 5, 2)
    assert (sources["init_channels"], sources["num_cells"]) == ("--child_init_channels", "--child_num_cells")
    # --widths is checked against the Child's cells, not the supernet's
    with pytest.raises(ConfigError, match=r"--widths has 4 values but the Child has num_cells=5 \(from "
                                          r"--child_num_cells\)"):
        resolve_space(TrainConfig(genotype=path, child_num_cells=5, widths=[1] * 4))


def test_genotype_of_another_preset_or_node_count_or_wrong_widths_fails_naming_the_field(tmp_path):
    path = search_run(tmp_path, tiny_genotype("bats", 1), preset="dcp", nodes=1, num_cells=3)
    with pytest.raises(ConfigError, match=r"genotype field 'preset' is 'bats'.*says 'dcp'.*--preset=bats"):
        resolve_space(TrainConfig(genotype=path))
    with pytest.raises(ConfigError, match=r"genotype field 'nodes' is 1 .*--nodes says 4"):
        resolve_space(TrainConfig(genotype=path, preset="bats", nodes=4))
    with pytest.raises(ConfigError, match=r"--widths has 2 values but the Child has num_cells=3"):
        resolve_space(TrainConfig(genotype=path, preset="bats", widths=[1, 1]))
    with pytest.raises(ConfigError, match="--genotype is required"):
        resolve_space(TrainConfig())
    # A genotype file whose cells do not have two edges per node names the field and the file.
    broken = tmp_path / "broken.json"
    broken.write_text(json.dumps({**tiny_genotype("dcp", 2).to_dict(), "normal": [["skip_connect", 0]] * 2}))
    with pytest.raises(GenotypeError, match=r"broken.json: field 'normal': expected 4 edges"):
        resolve_space(TrainConfig(genotype=str(broken)))
