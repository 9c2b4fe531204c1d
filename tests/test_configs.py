"""Every shipped ``configs/*.flags`` parses with the flags of every entry point and builds its Child."""

import glob
import os

import pytest
from absl import flags

from tfbnas import data, flags as tflags
from tfbnas.errors import ConfigError
from tfbnas.models import build_child
from tfbnas.search.run_search import SearchConfig
from tfbnas.space.genotype import Genotype
from tfbnas.space.ops import PARAM_FREE_OPS, PRESETS, NativeQuantConv2D
from tfbnas.train.recipe import TrainConfig

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = sorted(glob.glob(os.path.join(REPO, "configs", "*.flags")))

tflags.define_all()


def _every_op_genotype(preset, nodes):
    """A genotype using the preset's parameterised ops in turn (two inputs per node)."""
    ops = [op for op in PRESETS[preset] if op not in PARAM_FREE_OPS]
    edges = [(ops[i % len(ops)], i % 2) for i in range(2 * nodes)]
    return Genotype(preset, nodes, edges, edges[::-1])


@pytest.fixture
def parsed():
    def parse(path):
        flags.FLAGS.unparse_flags()
        flags.FLAGS(["prog", f"--flagfile={path}"])
        return tflags.flag_values(["tfbnas"])

    yield parse
    flags.FLAGS.unparse_flags()


def test_the_parent_teacher_follows_the_config(parsed):
    """The default trains on labels (no Parent phase, no distillation), the full config under a Parent; a given
    Parent file is a teacher only with distillation or initialisation from it."""
    assert not TrainConfig.from_flags(parsed(os.path.join(REPO, "configs", "fashion_mnist.flags"))).parent_teacher()
    assert TrainConfig.from_flags(parsed(os.path.join(REPO, "configs", "fashion_mnist_full.flags"))).parent_teacher()
    assert TrainConfig().parent_teacher()  # distill_alpha 0.9, a Parent phase of --epochs
    assert not TrainConfig(parent_epochs=0).parent_teacher()
    assert TrainConfig(parent_epochs=0, parent="parent.keras").parent_teacher()
    assert not TrainConfig(parent="parent.keras", distill_alpha=0.0).parent_teacher()
    assert TrainConfig(parent="parent.keras", distill_alpha=0.0, init_from_parent=True).parent_teacher()


def test_an_unknown_augmentation_is_one_clear_error():
    TrainConfig(augment="flip").check()
    with pytest.raises(ConfigError, match=r"^--augment=jitter is unknown; use one of \['none', 'flip', "):
        TrainConfig(augment="jitter").check()


def test_the_shipped_configs_are_found():
    assert {os.path.basename(p) for p in CONFIGS} >= {"fashion_mnist.flags", "cifar.flags", "imagenet.flags",
                                                     "smoke.flags"}


# the two largest Childs take ~10 and ~20 s to build on 2 cores
LARGE = {"cifar.flags", "imagenet.flags"}


@pytest.mark.parametrize("path", [pytest.param(p, id=os.path.basename(p), marks=[pytest.mark.slow] *
                                               (os.path.basename(p) in LARGE)) for p in CONFIGS])
def test_config_parses_and_builds_its_child(parsed, path):
    values = parsed(path)
    search = SearchConfig.from_flags(values)
    train = TrainConfig.from_flags(values)
    train.check()
    assert search.batch_size % (search.dcp_ggn_samples if search.dcp_ggn else 1) == 0
    info = data.KNOWN_DATASETS[values["dataset"]]
    # the largest config is built at a reduced input size: the graph, not the activations, is under test
    shape = info.image_shape if info.image_shape[0] <= 32 else (64, 64, info.image_shape[2])
    genotype = _every_op_genotype(values["preset"], values["nodes"])
    kwargs = dict(num_classes=info.num_classes, input_shape=shape, init_channels=values["init_channels"],
                  num_cells=values["num_cells"])
    child = build_child(genotype, **kwargs)
    assert child.output_shape == (None, info.num_classes)
    assert any(isinstance(layer, NativeQuantConv2D) for layer in child.layers)
