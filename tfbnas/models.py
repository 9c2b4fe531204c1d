"""Derived networks: the 1-bit Child of a genotype and its real-valued Parent twin.

:func:`build_child` turns a :class:`~tfbnas.space.genotype.Genotype` into a plain Functional Keras
model built from the same op table as the supernet (:mod:`tfbnas.space.ops`): every binary conv is a
``lq.layers.QuantConv2D`` that the LCE converter makes into an ``LceBconv2d``. The stem convs and the
classifier stay real-valued; the stem is the supernet's, chosen by the same rule from the input size
(stride 1 for small images, 4 for ImageNet-sized ones: :func:`~tfbnas.space.table.stem_stride_for`).
``binary=False`` gives the Parent twin: the same layers and weight shapes with real-valued activations
and weights, so ``child.set_weights(parent.get_weights())`` works both ways.

Example::

    genotype = Genotype.load("run/genotype.json")
    child = build_child(genotype, num_classes=10, input_shape=(28, 28, 1), init_channels=16, num_cells=8)
    child.compile("adam", tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True), ["accuracy"])
    child.fit(x_train, y_train)
    child.save("child.keras")          # tf.keras.models.load_model("child.keras") needs no extra code

Layer names: ``stem_conv``, ``stem_bn`` (stride-4 stem: ``stem_conv0``, ``stem_bn0``, ``stem_relu0``,
``stem_conv1``, ``stem_bn1``), ``cell{i}_pre0_*``, ``cell{i}_pre1_*``,
``cell{i}_node{n}_from{j}_{op}_*`` (one per kept edge), ``cell{i}_node{n}_sum``, ``cell{i}_concat``,
``global_pool``, ``classifier``.
"""

import json
import os
import zipfile
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

import larq as lq
import numpy as np
import tensorflow as tf

from tfbnas.space.genotype import Genotype
from tfbnas.space.ops import (FoldChannels, batch_norm, check_group_policy, child_conv_bn, child_op, child_shortcut,
                              layer_classes, real_path, stem_channels, stem_stride_for, transfer_weights,
                              SpaceError)
from tfbnas.space.supernet import reduction_cells


def _scaled_channels(channels: int, multiplier: float) -> int:
    # Even, so a following factorized reduce can split it in two halves.
    c = int(round(channels * float(multiplier)))
    return max(2, c + (c % 2))


def _check_widths(widths, num_cells: int):
    if widths is None:
        return [1.0] * num_cells
    try:
        values = [float(w) for w in widths]
    except (TypeError, ValueError):
        raise SpaceError(f"widths={widths!r} must be a list of {num_cells} positive numbers (one per cell).") from None
    if len(values) != num_cells or not all(np.isfinite(v) and v > 0 for v in values):
        raise SpaceError(f"widths={widths!r} must be {num_cells} positive multipliers (one per cell), "
                         "e.g. [0.5] * num_cells.")
    return values


def _as_genotype(genotype) -> Genotype:
    if isinstance(genotype, Genotype):
        return genotype
    if isinstance(genotype, dict):
        return Genotype.from_dict(genotype)
    if isinstance(genotype, (str, os.PathLike)):
        return Genotype.load(os.fspath(genotype))
    raise SpaceError(f"genotype must be a Genotype, its dict or a genotype.json path, got {type(genotype).__name__}.")


def child_cell(s0, s1, genotype: Genotype, channels: int, reduction: bool, reduction_prev: bool,
               binary: bool = True, group_policy="lce", prefix: str = "cell"):
    """One derived cell in the Functional API (Child form of :class:`~tfbnas.space.supernet.SearchCell`).

    Args:
        s0, s1: outputs of the two previous cells.
        genotype: supplies the kept edges of the ``"reduce"`` or ``"normal"`` cell.
        channels: channels of every node.
        reduction: use the reduction cell (stride 2 on edges from the inputs).
        reduction_prev: ``s0`` has twice the resolution of ``s1`` (binary factorized reduce on it).
        binary: 1-bit Child or Parent twin.
        group_policy: group-count rule of grouped convs.
        prefix: layer-name prefix.

    Returns:
        The cell output (concatenation of the ``concat`` states).
    """
    cell = "reduce" if reduction else "normal"
    if reduction_prev:
        p0, _ = child_op("skip_connect", s0, channels, 2, binary, group_policy, prefix=f"{prefix}_pre0")
    else:
        p0, _ = child_conv_bn(s0, channels, 1, binary=binary, prefix=f"{prefix}_pre0")
    p1, _ = child_conv_bn(s1, channels, 1, binary=binary, prefix=f"{prefix}_pre1")
    real = real_path(genotype.preset)
    if real:  # the real-valued inputs, folded onto `channels` and batch-normalised, around the binary 1x1s
        add = tf.keras.layers.Add
        r0 = FoldChannels(channels, name=f"{prefix}_pre0_fold")(
            child_shortcut(s0, 2 if reduction_prev else 1, f"{prefix}_pre0"))
        p0 = add(name=f"{prefix}_pre0_real_add")([batch_norm(name=f"{prefix}_pre0_real_bn")(r0), p0])
        r1 = FoldChannels(channels, name=f"{prefix}_pre1_fold")(s1)
        p1 = add(name=f"{prefix}_pre1_real_add")([batch_norm(name=f"{prefix}_pre1_real_bn")(r1), p1])
    states = [p0, p1]
    edges = genotype.cell(cell)
    for node in range(genotype.nodes):
        outs = []
        for op, source in edges[2 * node:2 * node + 2]:
            stride = 2 if reduction and source < 2 else 1
            y, _ = child_op(op, states[source], channels, stride, binary, group_policy,
                            prefix=f"{prefix}_node{node}_from{source}_{op}")
            outs.append(y)
        # bireal nodes are the mean of their two edges (keeps the real-valued stream's scale).
        merge = tf.keras.layers.Average if real else tf.keras.layers.Add
        states.append(merge(name=f"{prefix}_node{node}_sum")(outs))
    picked = [states[i] for i in genotype.concat(cell)]
    if len(picked) == 1:
        return picked[0]
    return tf.keras.layers.Concatenate(name=f"{prefix}_concat")(picked)


def child_stem(inputs, init_channels: int, stem_multiplier: int = 3, stride: int = 1):
    """The real-valued stem in the Functional API (Child form of the :class:`~tfbnas.space.supernet.SuperNet`'s).

    Stride 1: ``stem_conv`` (3x3) + ``stem_bn``. Stride 4: ``stem_conv0`` (3x3, stride 2) + ``stem_bn0`` +
    ``stem_relu0``, then ``stem_conv1`` (3x3, stride 2) + ``stem_bn1``; widths from
    :func:`~tfbnas.space.table.stem_channels`. Plain float ``Conv2D`` layers: LCE converts each to a float
    ``CONV_2D`` with its BatchNorm (and ReLU) folded in.
    """
    conv = dict(kernel_size=3, padding="same", use_bias=False)
    widths = stem_channels(init_channels, stem_multiplier, stride)
    if stride == 1:
        return batch_norm(name="stem_bn")(tf.keras.layers.Conv2D(widths[0], name="stem_conv", **conv)(inputs))
    x = tf.keras.layers.Conv2D(widths[0], strides=2, name="stem_conv0", **conv)(inputs)
    x = tf.keras.layers.ReLU(name="stem_relu0")(batch_norm(name="stem_bn0")(x))
    return batch_norm(name="stem_bn1")(tf.keras.layers.Conv2D(widths[1], strides=2, name="stem_conv1", **conv)(x))


def build_child(genotype: Union[Genotype, dict, str], num_classes: int = 10, input_shape=(28, 28, 1),
                init_channels: int = 16, num_cells: int = 8, binary: bool = True,
                widths: Optional[Sequence[float]] = None, name: Optional[str] = None, stem_multiplier: int = 3,
                group_policy="lce", stem_stride: Optional[int] = None) -> tf.keras.Model:
    """Build the network of a genotype as a Functional Keras model.

    Args:
        genotype: a :class:`Genotype`, its dict, or the path of a ``genotype.json``.
        num_classes: classifier outputs (logits).
        input_shape: image shape ``(H, W, C)``.
        init_channels: channels ``C`` of the first cells (doubled at each reduction, as in the supernet).
        num_cells: cells; reductions at ``num_cells // 3`` and ``2 * num_cells // 3``.
        binary: True: 1-bit Child; False: real-valued Parent twin (same layers and weight shapes).
        widths: optional per-cell channel multipliers (``num_cells`` positive floats, e.g. 0.5);
            a cell's channels become ``round(C * w)`` rounded up to even.
        name: model name (default ``"child"`` / ``"parent"``).
        stem_multiplier: the real-valued stem outputs ``stem_multiplier * init_channels`` channels.
        group_policy: group-count rule of grouped convs (``"lce"`` keeps every grouped conv binary
            in LCE; see :func:`tfbnas.space.ops.group_count`).
        stem_stride: 1, 4 or None (chosen from ``input_shape``, as the supernet chooses it); see
            :class:`~tfbnas.space.supernet.SuperNet`.

    Returns:
        A ``tf.keras.Model`` mapping images to logits.

    Raises:
        SpaceError: invalid ``widths``, ``group_policy``, ``stem_stride`` or sizes.
        GenotypeError: invalid genotype.

    Example:
        >>> g = Genotype("dcp", 1, [("sep_conv_3x3", 0), ("skip_connect", 1)], [("max_pool_3x3", 0), ("dil_conv_3x3", 1)])
        >>> build_child(g, init_channels=8, num_cells=3).output_shape
        (None, 10)
    """
    genotype = _as_genotype(genotype)
    check_group_policy(group_policy)
    for arg, value in (("num_classes", num_classes), ("init_channels", init_channels), ("num_cells", num_cells),
                       ("stem_multiplier", stem_multiplier)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise SpaceError(f"{arg}={value!r} must be a positive integer.")
    multipliers = _check_widths(widths, num_cells)
    binary = bool(binary)

    inputs = tf.keras.Input(tuple(input_shape), name="image")
    s0 = s1 = child_stem(inputs, init_channels, stem_multiplier, stem_stride_for(input_shape, stem_stride))
    reductions = reduction_cells(num_cells)
    channels, reduction_prev = init_channels, False
    for i in range(num_cells):
        reduction = i in reductions
        if reduction:
            channels *= 2
        cell_channels = _scaled_channels(channels, multipliers[i])
        out = child_cell(s0, s1, genotype, cell_channels, reduction, reduction_prev, binary, group_policy,
                         prefix=f"cell{i}")
        s0, s1 = s1, out
        reduction_prev = reduction
    x = tf.keras.layers.GlobalAveragePooling2D(name="global_pool")(s1)
    outputs = tf.keras.layers.Dense(num_classes, name="classifier")(x)
    return tf.keras.Model(inputs, outputs, name=name or ("child" if binary else "parent"))


def build_parent(genotype: Union[Genotype, dict, str], **kwargs) -> tf.keras.Model:
    """The real-valued Parent twin of :func:`build_child` (same arguments, ``binary=False``)."""
    kwargs["binary"] = False
    return build_child(genotype, **kwargs)


def _named_layers(model: tf.keras.Model, names) -> List[tf.keras.layers.Layer]:
    """``model``'s layers called ``names`` (or named as the layers ``names``), in that order."""
    try:
        return [model.get_layer(n if isinstance(n, str) else n.name) for n in names]
    except ValueError as e:
        raise SpaceError(f"the model is not the derived network of this genotype ({e}); build it with "
                         "build_child/build_parent from the genotype the supernet chose.") from None


def inherit_supernet_weights(model: tf.keras.Model, supernet, genotype: Union[Genotype, dict, str]) -> tf.keras.Model:
    """Start a derived network from a searched supernet's weights of the ops its genotype keeps.

    DCP-NAS's weight inheritance: the stem, the classifier, every cell's preprocessing (and, for the
    ``bireal`` table, the BatchNorms of its real-valued path) and, on every kept edge, the weights of the
    chosen op (:func:`~tfbnas.space.ops.transfer_weights`) are copied from ``supernet`` into ``model``; the
    dropped ops' weights go with the supernet. The 1-bit Child takes the Child supernet's weights, the Parent
    twin the Parent supernet's. BatchNorm statistics come along; a node of the derived cell mixes two edges
    where the supernet's mixed all of them, so training (BatchNorm in training mode) refits them.

    Args:
        model: :func:`build_child` (or :func:`build_parent`) of ``genotype`` with the supernet's sizes.
        supernet: a built :class:`~tfbnas.space.supernet.SuperNet` with all channels through every edge
            (``partial_channels=1``).
        genotype: the genotype ``model`` was built from (usually ``supernet.genotype()``).

    Returns:
        ``model``, holding the inherited weights.

    Raises:
        SpaceError: ``model`` is not this genotype's network at the supernet's sizes, or the supernet's
            edges see part of the channels (their ops' weights have other shapes than the Child's).

    Example:
        >>> genotype = supernet.genotype()
        >>> child = inherit_supernet_weights(build_child(genotype, init_channels=8, num_cells=5), supernet, genotype)
    """
    from tfbnas.space.genotype import edge_index
    from tfbnas.space.supernet import STEM_LAYERS

    genotype = _as_genotype(genotype)
    if not supernet.built:
        raise SpaceError("weight inheritance needs a built supernet: call it once on a batch first.")
    if supernet.partial_channels != 1:
        raise SpaceError("weight inheritance needs a supernet whose edges see all channels, not "
                         f"partial_channels={supernet.partial_channels}: its ops' weights have other shapes.")
    if (genotype.preset, genotype.nodes) != (supernet.preset, supernet.nodes):
        raise SpaceError(f"the genotype ({genotype.preset}, {genotype.nodes} nodes) is not of the supernet's space "
                         f"({supernet.preset}, {supernet.nodes} nodes).")
    if len(supernet.cells) != sum(1 for layer in model.layers if layer.name.endswith("_pre1_qconv")):
        raise SpaceError(f"the model does not have the supernet's {len(supernet.cells)} cells; build it with "
                         f"num_cells={len(supernet.cells)}.")
    names = STEM_LAYERS[supernet.stem_stride] + ("classifier",)
    real_layers = [(getattr(supernet, name), layer) for name, layer in zip(names, _named_layers(model, names))]
    binary = supernet.binary
    for i, cell in enumerate(supernet.cells):
        prefix, c = f"cell{i}", cell.channels
        probe = tf.keras.Input((8, 8, c))
        if cell.reduction_prev:
            _, pre0 = child_op("skip_connect", probe, c, 2, binary, cell.group_policy, prefix=f"{prefix}_pre0")
        else:
            _, pre0 = child_conv_bn(probe, c, 1, binary=binary, prefix=f"{prefix}_pre0")
        _, pre1 = child_conv_bn(probe, c, 1, binary=binary, prefix=f"{prefix}_pre1")
        transfer_weights(cell.pre0, _named_layers(model, pre0))
        transfer_weights(cell.pre1, _named_layers(model, pre1))
        if cell.real_path:
            real_layers += zip((cell.real_bn0, cell.real_bn1),
                               _named_layers(model, [f"{prefix}_pre{k}_real_bn" for k in (0, 1)]))
        edges = genotype.cell("reduce" if cell.reduction else "normal")
        for node in range(genotype.nodes):
            for op, source in edges[2 * node:2 * node + 2]:
                stride = 2 if cell.reduction and source < 2 else 1
                _, layers = child_op(op, probe, c, stride, binary, cell.group_policy,
                                     prefix=f"{prefix}_node{node}_from{source}_{op}")
                transfer_weights(cell.edges[edge_index(node, source)].op(op), _named_layers(model, layers))
    for source, layer in real_layers:  # plain Keras layers on both sides
        values = source.get_weights()
        if [v.shape for v in values] != [tuple(w.shape) for w in layer.weights]:
            raise SpaceError(f"layer {layer.name!r} has weight shapes {[tuple(w.shape) for w in layer.weights]}, the "
                             f"supernet's {[v.shape for v in values]}: build the model with the supernet's sizes.")
        layer.set_weights(values)
    return model


def clone_layers(model: tf.keras.Model, rebuild: Callable[[tf.keras.layers.Layer, dict], Optional[tf.keras.layers.Layer]],
                 name: Optional[str] = None) -> tf.keras.Model:
    """``model`` cloned layer by layer with some layers rebuilt, holding ``model``'s weights.

    The one clone-and-copy helper behind every model twin (the deploy float twin, the converter's native
    convs, the recipe's real twin and stage-1 model): ``rebuild(layer, config)`` gets each layer and a copy
    of its config and returns the new layer, or None to keep the layer as it is (rebuilt from its own
    config). The rebuilt layers must keep the weight shapes.

    Example:
        >>> def no_quantizers(layer, config):
        ...     keys = [k for k in config if k.endswith("_quantizer")]
        ...     return layer.__class__.from_config({**config, **dict.fromkeys(keys)}) if keys else None
        >>> twin = clone_layers(child, no_quantizers, name="child_float")
    """

    def clone(layer):
        new = rebuild(layer, dict(layer.get_config()))
        return new if new is not None else layer.__class__.from_config(layer.get_config())

    copy = tf.keras.models.clone_model(model, clone_function=clone)
    if name is not None:
        copy = tf.keras.Model(copy.inputs, copy.outputs, name=name)
    copy.set_weights(model.get_weights())
    return copy


def unregistered_layers(path: str) -> List[Tuple[str, str]]:
    """``(registered name, module)`` of every custom object a saved ``.keras`` file uses that this process has
    not registered (e.g. ``("mine>Twice", "my_layers")``): what Keras's own error (``'str' object is not
    callable``) does not say. Empty for other formats and for files whose objects are all known.
    """
    try:
        with zipfile.ZipFile(path) as archive:
            config = json.loads(archive.read("config.json"))
    except (OSError, KeyError, ValueError, zipfile.BadZipFile):
        return []
    found: List[Tuple[str, str]] = []

    def walk(node):
        if isinstance(node, dict):
            name = node.get("registered_name")
            if isinstance(name, str) and ">" in name and tf.keras.utils.get_registered_object(name) is None:
                entry = (name, str(node.get("module") or ""))
                if entry not in found:
                    found.append(entry)
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(config)
    return found


def custom_objects() -> Dict[str, type]:
    """Every tfbnas layer (by class name and registered name) plus Larq's ``QuantConv2D``.

    Registration already makes ``tf.keras.models.load_model("child.keras")`` work once
    :mod:`tfbnas.models` is imported; pass this to loaders that need explicit objects.
    """
    from tfbnas.space import supernet

    classes = dict(layer_classes())
    for cls in (supernet.MixedEdge, supernet.SearchCell, supernet.SuperNet):
        classes[cls.__name__] = cls
    objects = {**classes, **{f"tfbnas>{n}": c for n, c in classes.items()}}
    objects["QuantConv2D"] = lq.layers.QuantConv2D
    return objects


__all__ = ["build_child", "build_parent", "child_cell", "child_stem", "clone_layers", "custom_objects",
           "inherit_supernet_weights", "unregistered_layers"]
