"""The strided stem of ImageNet-sized inputs: the rule, the supernet and Child stems, a search on a locally
prepared 224x224 tfds dataset, the LCE conversion and the cost model's stem FLOPs."""

import json
import os

import larq_compute_engine as lce
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from conftest import trained_like
from tfbnas import data
from tfbnas.cost import conv_macs, model_cost
from tfbnas.deploy import flatbuffer as fbs
from tfbnas.deploy.convert import convert_keras
from tfbnas.deploy.lint import binarization_issues, expected_binary_convs
from tfbnas.models import build_child, build_parent, child_stem
from tfbnas.search.run_search import SearchConfig, build_search, search
from tfbnas.space import Genotype, SpaceError, SuperNet, stem_stride_for
from tfbnas.space.ops import binary_conv_layers
from tfbnas.train.recipe import TrainConfig, train_child

NAME = "tiny_imagenet224"
SHAPE = (224, 224, 3)
C = 4  # init_channels: the stem outputs 3C = 12 channels
GENOTYPE = Genotype("dcp", 1, normal=[("sep_conv_3x3", 0), ("dil_conv_3x3", 1)],
                    reduce=[("max_pool_3x3", 0), ("dil_conv_5x5", 1)])


class TinyImagenet224(tfds.core.GeneratorBasedBuilder):
    """64 train and 32 test random 224x224x3 images in 10 classes, generated here (nothing is downloaded)."""

    VERSION = tfds.core.Version("1.0.0")

    def _info(self):
        return tfds.core.DatasetInfo(
            builder=self, supervised_keys=("image", "label"),
            features=tfds.features.FeaturesDict({"image": tfds.features.Image(shape=SHAPE),
                                                 "label": tfds.features.ClassLabel(num_classes=10)}))

    def _split_generators(self, dl_manager):
        return {"train": self._generate_examples(64, 0), "test": self._generate_examples(32, 1)}

    def _generate_examples(self, count, seed):
        rng = np.random.default_rng(seed)
        for i in range(count):
            yield i, {"image": rng.integers(0, 256, SHAPE, dtype=np.uint8), "label": int(i % 10)}


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    """The dataset prepared in a temporary tfds data dir (this process has the builder registered)."""
    path = str(tmp_path_factory.mktemp("tfds"))
    builder = TinyImagenet224(data_dir=path)
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(try_download_gcs=False))
    return path


def _layout(model):
    return [layer.name for layer in model.layers], [(v.name, tuple(v.shape)) for v in model.variables]


def test_the_rule_chooses_stride_4_from_128_pixels_on():
    assert [stem_stride_for(s) for s in [(28, 28, 1), (32, 32, 3), (127, 127, 3), (128, 64, 3), (224, 224, 3)]] == \
        [1, 1, 1, 4, 4]
    assert stem_stride_for((8, 224, 224, 3)) == 4  # a batch dimension is allowed
    assert stem_stride_for((224, 224, 3), 1) == 1 and stem_stride_for((28, 28, 1), 4) == 4  # explicit wins
    for bad in (2, 0, True, "4"):
        with pytest.raises(SpaceError, match="stem_stride=.* is not a stem; use 1") as e:
            stem_stride_for((224, 224, 3), bad)
        assert "\n" not in str(e.value)
    with pytest.raises(SpaceError, match="gives no image size"):
        stem_stride_for((None, None, 3))
    with pytest.raises(SpaceError, match="is not a stem"):
        SuperNet(10, init_channels=C, num_cells=3, stem_stride=2)
    with pytest.raises(SpaceError, match="is not a stem"):
        build_child(GENOTYPE, input_shape=SHAPE, init_channels=C, num_cells=3, stem_stride=8)


def test_small_inputs_keep_the_stride_1_stem_exactly():
    """28x28: the automatic stem is the stride-1 stem, with the same layers, variables and numbers."""
    x = tf.random.stateless_normal([2, 28, 28, 1], seed=(1, 2))
    outputs, nets = [], []
    for stride in (None, 1):
        tf.keras.utils.set_random_seed(0)
        net = SuperNet(10, init_channels=C, num_cells=3, nodes=1, stem_stride=stride)
        outputs.append(net(x, training=False).numpy())
        nets.append(net)
    auto, explicit = nets
    assert _layout(auto) == _layout(explicit)
    assert [layer.name for layer in auto.layers[:3]] == ["stem_conv", "stem_bn", "cell_0"]
    assert auto.stem_conv.kernel.shape == (3, 3, 1, 3 * C) and auto.stem_conv.strides == (1, 1)
    assert not hasattr(auto, "stem_conv0") and auto.get_config()["stem_stride"] == 1
    assert auto.stem(x).shape == (2, 28, 28, 3 * C)
    np.testing.assert_array_equal(outputs[0], outputs[1])
    auto.copy_weights_from(explicit)  # same configuration once chosen

    childs = []
    for stride in (None, 1):
        tf.keras.utils.set_random_seed(0)
        childs.append(build_child(GENOTYPE, input_shape=(28, 28, 1), init_channels=C, num_cells=3, stem_stride=stride))
    assert _layout(childs[0]) == _layout(childs[1])
    assert [layer.name for layer in childs[0].layers[1:3]] == ["stem_conv", "stem_bn"]
    np.testing.assert_array_equal(childs[0](x).numpy(), childs[1](x).numpy())


def test_imagenet_sized_inputs_reach_the_first_cell_at_56x56():
    x = tf.random.stateless_normal([2, *SHAPE], seed=(3, 4))
    net = SuperNet(10, init_channels=C, num_cells=3, nodes=1)
    logits = net(x, training=False)
    assert logits.shape == (2, 10) and net.stem_stride == 4 and net.get_config()["stem_stride"] == 4
    assert net.stem(x).shape == (2, 56, 56, 3 * C)
    names = [layer.name for layer in net.layers]
    assert names[:5] == ["stem_conv0", "stem_bn0", "stem_conv1", "stem_bn1", "cell_0"] and "stem_conv" not in names
    assert net.stem_conv0.kernel.shape == (3, 3, 3, C // 2) and net.stem_conv0.strides == (2, 2)
    assert net.stem_conv1.kernel.shape == (3, 3, C // 2, 3 * C) and net.stem_conv1.strides == (2, 2)
    explicit = SuperNet(10, init_channels=C, num_cells=3, nodes=1, stem_stride=4)
    explicit(x)
    assert _layout(explicit) == _layout(net)  # the automatic choice builds what stem_stride=4 builds

    child = build_child(GENOTYPE, input_shape=SHAPE, init_channels=C, num_cells=3)
    parent = build_parent(GENOTYPE, input_shape=SHAPE, init_channels=C, num_cells=3)
    for model in (child, parent):
        assert model.get_layer("stem_conv1").output_shape == (None, 56, 56, 3 * C)
        assert model.get_layer("cell0_pre1_qconv").input_shape == (None, 56, 56, 3 * C)
    assert [w.shape for w in child.weights] == [w.shape for w in parent.weights]
    # the supernet's stem and the Child's hold the same variables
    stem = ("stem_conv0", "stem_bn0", "stem_conv1", "stem_bn1")
    assert [w.shape for n in stem for w in child.get_layer(n).weights] == \
        [w.shape for n in stem for w in getattr(net, n).weights]


@pytest.mark.slow
def test_search_on_a_local_224x224_tfds_dataset(data_dir, tmp_path):
    info = data.dataset_info(NAME, data_dir)
    assert info.image_shape == SHAPE and info.num_classes == 10
    config = SearchConfig(dataset=NAME, data_dir=data_dir, init_channels=C, num_cells=3, nodes=1, strategy="darts",
                          search_epochs=1, search_steps_per_epoch=2, batch_size=8, graph_optimizations=False)
    engine = build_search(config, info, 2)
    assert engine.child.stem_stride == 4
    assert engine.child.stem(tf.zeros((1, *SHAPE))).shape == (1, 56, 56, 3 * C)

    result = search(config, str(tmp_path), log=lambda *a: None, verbose=0)
    summary = json.loads((tmp_path / "search_summary.json").read_text())
    assert summary["stem_stride"] == result.history["stem_stride"] == 4
    assert summary["epochs"] == 1 and summary["steps_per_epoch"] == 2
    child = build_child(result.genotype, num_classes=10, input_shape=SHAPE, init_channels=C, num_cells=3)
    assert child.get_layer("stem_conv1").output_shape == (None, 56, 56, 3 * C)


@pytest.mark.slow
def test_training_a_224x224_child_records_its_stem(data_dir, tmp_path):
    GENOTYPE.save(str(tmp_path / "genotype.json"))
    # Three cells: the third's pre0 is a factorized reduce of the first cell's 56x56 output. Built as a stride-2
    # 1x1 conv, its training step crashed TensorFlow 2.18's oneDNN kernels; the Child subsamples, then convs.
    # val_fraction=0: tfbnas holds out validation images only from the datasets it knows.
    config = TrainConfig(dataset=NAME, data_dir=data_dir, genotype=str(tmp_path / "genotype.json"), init_channels=C,
                         num_cells=3, epochs=1, steps_per_epoch=1, batch_size=8, distill_alpha=0.0,
                         val_fraction=0.0)
    lines = []
    result = train_child(config, str(tmp_path / "train"), log=lines.append, verbose=0)
    space = json.loads((tmp_path / "train" / "space.json").read_text())
    assert space["stem_stride"] == {"value": 4, "from": "image size 224x224"}
    assert space["num_cells"]["value"] == 3
    assert any(line.startswith("Child: dcp genotype, 3 cells") and "stem stride 4;" in line for line in lines)
    assert np.isfinite(result.metrics["test_top1"])
    child = tf.keras.models.load_model(str(tmp_path / "train" / "child.keras"))
    assert child.get_layer("stem_conv1").output_shape == (None, 56, 56, 3 * C)
    assert child.get_layer("cell2_pre0_shift").input_shape == (None, 56, 56, C)  # a trained factorized reduce


@pytest.mark.slow
def test_a_224x224_child_converts_every_binary_conv_to_lce_bconv():
    tf.keras.utils.set_random_seed(0)
    child = build_child(GENOTYPE, input_shape=SHAPE, init_channels=C, num_cells=3)
    trained_like(child)
    assert binarization_issues(child) == []
    flatbuffer = convert_keras(child)
    ops = fbs.summarize_flatbuffer(flatbuffer).ops
    assert ops["LceBconv2d"] == expected_binary_convs(child) == len(binary_conv_layers(child)) > 5
    assert ops["CONV_2D"] == 2  # the two float stem convs (BatchNorm and ReLU folded in)
    interpreter = lce.testing.Interpreter(flatbuffer, num_threads=1)
    x = tf.random.stateless_normal([2, *SHAPE], seed=(5, 6)).numpy()
    lite = np.concatenate([interpreter.predict(x[i:i + 1]) for i in range(len(x))])
    keras = child(x, training=False).numpy()
    assert np.array_equal(lite.argmax(1), keras.argmax(1))
    np.testing.assert_allclose(lite, keras, atol=1e-3 * np.max(np.abs(keras)))


def _stem_rows(model):
    return {row.name: row for row in model_cost(model).layers if row.name.startswith("stem_conv")}


def test_cost_model_counts_the_strided_stem_by_hand():
    rows = _stem_rows(build_child(GENOTYPE, input_shape=SHAPE, init_channels=C, num_cells=3))
    # conv0: 3x3, 3 -> C/2 = 2 channels at 112x112; conv1: 3x3, 2 -> 3C = 12 channels at 56x56 (1 MAC = 1 FLOP).
    assert rows["stem_conv0"].flops == 3 * 3 * 3 * 2 * 112 * 112 == 677_376
    assert rows["stem_conv1"].flops == 3 * 3 * 2 * 12 * 56 * 56 == 677_376
    assert rows["stem_conv0"].flops == conv_macs(3, 3, 2, 112) and rows["stem_conv1"].flops == conv_macs(3, 2, 12, 56)
    assert rows["stem_conv0"].bops == rows["stem_conv1"].bops == 0
    assert rows["stem_conv0"].real_params == 3 * 3 * 3 * 2 and rows["stem_conv1"].real_params == 3 * 3 * 2 * 12
    # The stride-1 stem on the same images: one 3x3, 3 -> 12 conv at 224x224, 12x the FLOPs.
    flat = _stem_rows(build_child(GENOTYPE, input_shape=SHAPE, init_channels=C, num_cells=3, stem_stride=1))
    assert list(flat) == ["stem_conv"] and flat["stem_conv"].flops == 3 * 3 * 3 * 12 * 224 * 224 == 16_257_024


def test_the_imagenet_config_gets_the_strided_stem():
    """configs/imagenet.flags: imagenet2012 is 224x224, so its search and Child get the stride-4 stem; its
    stem (C=48) costs what a hand count says (the cells are not built here: test_configs builds them)."""
    with open(os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs",
                           "imagenet.flags")) as f:
        values = dict(line.strip()[2:].split("=", 1) for line in f if line.startswith("--"))
    info = data.KNOWN_DATASETS[values["dataset"]]
    assert info.image_shape == SHAPE and stem_stride_for(info.image_shape) == 4
    c = int(values["init_channels"])
    inputs = tf.keras.Input(info.image_shape)
    stem = tf.keras.Model(inputs, child_stem(inputs, c, 3, stem_stride_for(info.image_shape)))
    assert stem.output_shape == (None, 56, 56, 3 * c)
    rows = _stem_rows(stem)
    assert rows["stem_conv0"].flops == 3 * 3 * 3 * 24 * 112 * 112 == 8_128_512
    assert rows["stem_conv1"].flops == 3 * 3 * 24 * 144 * 56 * 56 == 97_542_144
