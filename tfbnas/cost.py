"""Cost model of tf.keras / Larq models: parameters, memory, BOPs, FLOPs and OPs.

:func:`model_cost` walks a built Functional or Sequential model (nested models are flattened,
shared layers are counted once per call) and returns a :class:`CostReport` with one
:class:`LayerCost` row per layer and the totals the binary-network literature reports:

- **binary params**: the latent kernel of a layer whose kernel *and* input are binarised
  (``QuantConv1D/2D/3D`` or ``QuantDense`` with 1-bit ``kernel_quantizer`` and ``input_quantizer``);
  stored as 1 bit each.
- **real params**: every other weight (biases, BatchNorm, depthwise and float convs, binary kernels
  behind a real input); stored as 32 bits each. BatchNorm counts 2 per channel (the folded
  inference scale and offset), as ``larq.models.summary`` does.
- **BOPs**: multiply-accumulates (MACs) of binary layers, e.g.
  ``kh * kw * Cin / groups * Cout * H_out * W_out`` for a binary conv.
- **FLOPs**: MACs of every other conv / depthwise / dense layer (one MAC = one FLOP, as Bi-Real
  Net, ReActNet, BATS and DCP-NAS count).
- **OPs** = BOPs / 64 + FLOPs (Bi-Real Net's measure: a 64-bit CPU does 64 binary MACs per
  instruction).
- **minor ops**: element-wise work (BatchNorm, bias, activations, input binarisation, pooling,
  adds) per output element; reported separately and *not* part of FLOPs or OPs, because the
  papers above leave it out.

See ``docs/cost_model.md`` for every counting rule.

Example:
    >>> report = model_cost(model)
    >>> print(report.summary_line())
    >>> report.ops == report.bops / 64 + report.flops
    True
"""

from __future__ import annotations

import dataclasses
import json
import math
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import larq as lq
import tensorflow as tf

from tfbnas.errors import CostModelError  # noqa: F401  (importable from here)
from tfbnas.quantizers import quantizer_bits

__all__ = [
    "BOPS_PER_OP",
    "CostModelError",
    "CostReport",
    "LayerCost",
    "OpCount",
    "UncountedLayerWarning",
    "conv_macs",
    "dense_macs",
    "depthwise_macs",
    "model_cost",
    "register_layer_cost",
    "total_ops",
]

#: Binary MACs that count as one OP (Bi-Real Net: 64 XNOR-popcount lanes per 64-bit word).
BOPS_PER_OP = 64

#: Input channels per group that LCE 0.16 needs to emit a grouped ``LceBconv2d``.
LCE_GROUP_CHANNEL_MULTIPLE = 32


class UncountedLayerWarning(UserWarning):
    """Some layers of a model have no known op count; their ops are missing from the totals."""


# --------------------------------------------------------------------------------------------
# Arithmetic helpers (usable without a Keras model, e.g. for a supernet's op table).
# --------------------------------------------------------------------------------------------


def _as_dims(value: int | Sequence[int], rank: int, what: str) -> tuple[int, ...]:
    dims = (value,) * rank if isinstance(value, int) else tuple(value)
    if len(dims) != rank or any((not isinstance(d, int)) or d < 0 for d in dims):
        raise CostModelError(
            f"{what} must be a non-negative int or a tuple of {rank} non-negative ints, "
            f"got {value!r}."
        )
    return dims


def conv_macs(
    kernel_size: int | Sequence[int],
    cin: int,
    cout: int,
    out_hw: int | Sequence[int],
    groups: int = 1,
) -> int:
    """Multiply-accumulates of one (grouped) convolution call.

    ``prod(kernel_size) * cin / groups * cout * prod(out_hw)``; dilation and stride only enter
    through the output size.

    Args:
        kernel_size: an int (square kernel) or one int per spatial dimension.
        cin: input channels.
        cout: output channels (filters).
        out_hw: output spatial size: an int (square map) or one int per spatial dimension.
        groups: channel groups; ``cin`` and ``cout`` must both be multiples of it.

    Returns:
        The MAC count as an int.

    Example:
        >>> conv_macs(3, 16, 16, 14) == 3 * 3 * 16 * 16 * 14 * 14
        True
    """
    if isinstance(kernel_size, int) and isinstance(out_hw, int):
        rank = 2
    else:
        rank = len(out_hw) if not isinstance(out_hw, int) else len(kernel_size)
    kernel = _as_dims(kernel_size, rank, "kernel_size")
    out = _as_dims(out_hw, rank, "out_hw")
    if groups < 1 or cin % groups or cout % groups:
        raise CostModelError(
            f"groups={groups} must be >= 1 and divide cin={cin} and cout={cout}; "
            "pick a group count that divides both channel counts."
        )
    return math.prod(kernel) * (cin // groups) * cout * math.prod(out)


def depthwise_macs(
    kernel_size: int | Sequence[int],
    channels: int,
    out_hw: int | Sequence[int],
    depth_multiplier: int = 1,
) -> int:
    """Multiply-accumulates of one depthwise convolution call.

    ``prod(kernel_size) * channels * depth_multiplier * prod(out_hw)``.

    Args:
        kernel_size: an int (square kernel) or one int per spatial dimension.
        channels: input channels.
        out_hw: output spatial size: an int or one int per spatial dimension.
        depth_multiplier: output channels per input channel.

    Returns:
        The MAC count as an int.

    Example:
        >>> depthwise_macs(3, 32, 7) == 3 * 3 * 32 * 7 * 7
        True
    """
    return conv_macs(kernel_size, channels, channels * depth_multiplier, out_hw, groups=channels)


def dense_macs(cin: int, cout: int, positions: int = 1) -> int:
    """Multiply-accumulates of a dense layer: ``cin * cout`` per position (1 for a flat input).

    Example:
        >>> dense_macs(128, 10) == 128 * 10
        True
    """
    if min(cin, cout, positions) < 0:
        raise CostModelError(
            f"dense_macs needs non-negative sizes, got cin={cin}, cout={cout}, "
            f"positions={positions}."
        )
    return cin * cout * positions


def total_ops(bops: float, flops: float) -> float:
    """OPs as Bi-Real Net / ReActNet / BATS / DCP-NAS count them: ``bops / 64 + flops``."""
    return bops / BOPS_PER_OP + flops


# --------------------------------------------------------------------------------------------
# Report types.
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class OpCount:
    """Ops of one layer call (returned by a cost function given to :func:`register_layer_cost`).

    Args:
        bops: binary multiply-accumulates.
        flops: real multiply-accumulates.
        minor_ops: element-wise ops (not part of FLOPs/OPs).
        binary_params: how many of the layer's parameters are binary (1 bit); the rest of the
            layer's weights count as real (32 bit). Read from the first call only.
        lce_binary: whether LCE runs the binary part as a binary op (None: no binary part).
        note: a short remark shown in the report.
    """

    bops: int = 0
    flops: int = 0
    minor_ops: int = 0
    binary_params: int = 0
    lce_binary: bool | None = None
    note: str = ""


@dataclasses.dataclass(frozen=True)
class LayerCost:
    """Cost of one (flattened) layer, summed over all its calls in the model.

    ``bops``, ``flops`` and ``minor_ops`` are None when the layer is uncounted (unknown type).
    """

    name: str
    class_name: str
    output_shape: Any
    binary_params: int
    real_params: int
    bops: int | None
    flops: int | None
    minor_ops: int | None
    calls: int = 1
    lce_binary: bool | None = None
    note: str = ""

    @property
    def counted(self) -> bool:
        return self.bops is not None

    @property
    def params(self) -> int:
        return self.binary_params + self.real_params

    @property
    def memory_bits(self) -> int:
        return self.binary_params + 32 * self.real_params

    @property
    def memory_bytes(self) -> float:
        return self.memory_bits / 8

    @property
    def ops(self) -> float | None:
        return None if not self.counted else total_ops(self.bops, self.flops)

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "class": self.class_name,
            "output_shape": _jsonable_shape(self.output_shape),
            "binary_params": self.binary_params,
            "real_params": self.real_params,
            "memory_bytes": self.memory_bytes,
            "bops": self.bops,
            "flops": self.flops,
            "minor_ops": self.minor_ops,
            "ops": self.ops,
            "calls": self.calls,
            "counted": self.counted,
            "lce_binary": self.lce_binary,
            "note": self.note,
        }


def _jsonable_shape(shape):
    if isinstance(shape, (list, tuple)):
        return [_jsonable_shape(s) for s in shape]
    return shape


def _readable(num: float) -> str:
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(num) >= scale:
            return f"{num / scale:.3g}{unit}"
    return f"{num:.4g}"


def _readable_bytes(num: float) -> str:
    for unit, scale in (("MiB", 1024**2), ("KiB", 1024)):
        if num >= scale:
            return f"{num / scale:.3g} {unit}"
    return f"{num:.4g} B"


@dataclasses.dataclass(frozen=True)
class CostReport:
    """Per-layer costs of a model and their totals (see the module docstring for definitions).

    Totals skip uncounted layers' ops (their parameters are counted); :attr:`uncounted` names
    them, and :attr:`complete` is False when there are any.
    """

    model_name: str
    layers: tuple[LayerCost, ...]

    def _sum(self, field: str) -> int:
        return sum(getattr(row, field) or 0 for row in self.layers)

    @property
    def binary_params(self) -> int:
        return self._sum("binary_params")

    @property
    def real_params(self) -> int:
        return self._sum("real_params")

    @property
    def params(self) -> int:
        return self.binary_params + self.real_params

    @property
    def memory_bits(self) -> int:
        return self._sum("memory_bits")

    @property
    def memory_bytes(self) -> float:
        return self.memory_bits / 8

    @property
    def bops(self) -> int:
        return self._sum("bops")

    @property
    def flops(self) -> int:
        return self._sum("flops")

    @property
    def minor_ops(self) -> int:
        return self._sum("minor_ops")

    @property
    def ops(self) -> float:
        """OPs = BOPs / 64 + FLOPs (minor ops excluded, as in the papers)."""
        return total_ops(self.bops, self.flops)

    @property
    def lce_float_bops(self) -> int:
        """BOPs of binary layers that LCE 0.16 runs as float ops (see ``LayerCost.lce_binary``)."""
        return sum(row.bops or 0 for row in self.layers if row.lce_binary is False)

    @property
    def lce_ops(self) -> float:
        """OPs after LCE conversion: BOPs LCE cannot keep binary count as FLOPs."""
        fallback = self.lce_float_bops
        return total_ops(self.bops - fallback, self.flops + fallback)

    @property
    def uncounted(self) -> tuple[str, ...]:
        return tuple(row.name for row in self.layers if not row.counted)

    @property
    def complete(self) -> bool:
        return not self.uncounted

    def totals(self) -> dict:
        """The totals as a dict of plain numbers."""
        return {
            "binary_params": self.binary_params,
            "real_params": self.real_params,
            "params": self.params,
            "memory_bytes": self.memory_bytes,
            "bops": self.bops,
            "flops": self.flops,
            "ops": self.ops,
            "minor_ops": self.minor_ops,
            "lce_float_bops": self.lce_float_bops,
            "lce_ops": self.lce_ops,
        }

    def to_dict(self) -> dict:
        """A JSON-serialisable dict: conventions, per-layer rows, totals and uncounted layers."""
        return {
            "model": self.model_name,
            "conventions": {
                "flops": "real multiply-accumulates (1 MAC = 1 FLOP)",
                "bops": "binary multiply-accumulates (1-bit kernel and 1-bit input)",
                "ops": f"bops / {BOPS_PER_OP} + flops",
                "minor_ops": "element-wise ops per output element; not in flops or ops",
                "memory": "binary params 1 bit, real params 32 bit",
            },
            "layers": [row.to_dict() for row in self.layers],
            "totals": self.totals(),
            "uncounted": list(self.uncounted),
        }

    def to_json(self, **kwargs) -> str:
        return json.dumps(self.to_dict(), **kwargs)

    def to_markdown(self) -> str:
        """A per-layer Markdown table followed by a totals table."""

        def cell(value):
            return "?" if value is None else f"{value:,}" if isinstance(value, int) else str(value)

        header = (
            "| Layer | Class | Output | Binary params | Real params | Memory (bytes) | BOPs "
            "| FLOPs | Minor ops | Calls | Note |"
        )
        lines = [
            f"### Cost of `{self.model_name}`",
            "",
            header,
            "|" + "---|" * 11,
        ]
        for row in self.layers:
            note = row.note
            if row.lce_binary is False:
                note = (note + "; " if note else "") + "float in LCE"
            lines.append(
                "| "
                + " | ".join(
                    [
                        row.name,
                        row.class_name,
                        str(row.output_shape).replace("|", "/"),
                        cell(row.binary_params),
                        cell(row.real_params),
                        f"{row.memory_bytes:,.1f}",
                        cell(row.bops),
                        cell(row.flops),
                        cell(row.minor_ops),
                        str(row.calls),
                        note.replace("|", "/"),
                    ]
                )
                + " |"
            )
        lines += [
            "",
            "| Total | Value |",
            "|---|---|",
            f"| Binary params (1 bit) | {self.binary_params:,} |",
            f"| Real params (32 bit) | {self.real_params:,} |",
            f"| Memory | {self.memory_bytes:,.1f} bytes ({_readable_bytes(self.memory_bytes)}) |",
            f"| BOPs (binary MACs) | {self.bops:,} |",
            f"| FLOPs (real MACs) | {self.flops:,} |",
            f"| OPs = BOPs/{BOPS_PER_OP} + FLOPs | {self.ops:,.1f} |",
            f"| Minor ops (not in OPs) | {self.minor_ops:,} |",
        ]
        if self.lce_float_bops:
            lines.append(f"| BOPs run as float by LCE | {self.lce_float_bops:,} |")
            lines.append(f"| OPs after LCE conversion | {self.lce_ops:,.1f} |")
        if self.uncounted:
            names = ", ".join(self.uncounted)
            lines += ["", f"**Uncounted layers (ops missing from totals):** {names}"]
        return "\n".join(lines)

    def summary_line(self) -> str:
        """One line: OPs, BOPs, FLOPs, parameters and memory (plus warnings, if any)."""
        line = (
            f"{self.model_name}: OPs {_readable(self.ops)} (BOPs {_readable(self.bops)}"
            f"/{BOPS_PER_OP} + FLOPs {_readable(self.flops)}), "
            f"params {_readable(self.binary_params)} binary"
            f" + {_readable(self.real_params)} real, memory {_readable_bytes(self.memory_bytes)}"
        )
        if self.lce_float_bops:
            line += f", LCE runs {_readable(self.lce_float_bops)} BOPs as float"
        if self.uncounted:
            line += f", {len(self.uncounted)} layer(s) UNCOUNTED"
        return line

    def __str__(self) -> str:
        return self.summary_line()


# --------------------------------------------------------------------------------------------
# Precision detection (what is 1-bit: tfbnas.quantizers).
# --------------------------------------------------------------------------------------------


def _kernel_bits(layer) -> int:
    # larq tags the latent kernel with the quantizer's precision (NoOp(precision=1) included).
    precision = getattr(getattr(layer, "kernel", None), "precision", None)
    if isinstance(precision, int):
        return precision
    return quantizer_bits(getattr(layer, "kernel_quantizer", None))


# Layers whose binary form is a binary MAC layer. Depthwise/separable/transposed/locally
# connected Larq layers never run binary in LCE and count as real.
_BINARY_CAPABLE = (
    lq.layers.QuantConv1D,
    lq.layers.QuantConv2D,
    lq.layers.QuantConv3D,
    lq.layers.QuantDense,
)


def _is_binary(layer) -> bool:
    return (
        isinstance(layer, _BINARY_CAPABLE)
        and quantizer_bits(getattr(layer, "input_quantizer", None)) == 1
        and _kernel_bits(layer) == 1
    )


# --------------------------------------------------------------------------------------------
# Per-layer op rules. Each takes (layer, input_shapes, output_shapes) of one call.
# --------------------------------------------------------------------------------------------


def _size(shape) -> int:
    """Elements per example (batch dimension dropped)."""
    return math.prod(shape[1:])


def _channels_first(layer) -> bool:
    return getattr(layer, "data_format", "channels_last") == "channels_first"


def _spatial(layer, shape) -> tuple[int, ...]:
    return tuple(shape[2:]) if _channels_first(layer) else tuple(shape[1:-1])


def _channels(layer, shape) -> int:
    return shape[1] if _channels_first(layer) else shape[-1]


def _has_activation(layer) -> bool:
    activation = getattr(layer, "activation", None)
    return activation is not None and activation is not tf.keras.activations.linear


def _mac_layer_minor(layer, inputs, outputs) -> int:
    """Bias add, fused activation and input binarisation of a conv / dense layer."""
    out = _size(outputs[0])
    minor = 0
    if getattr(layer, "use_bias", False):
        minor += out
    if _has_activation(layer):
        minor += out
    if getattr(layer, "input_quantizer", None) is not None:
        minor += _size(inputs[0])
    return minor


def _conv_ops(layer, inputs, outputs) -> OpCount:
    kernel = tuple(layer.kernel_size)
    cin = _channels(layer, inputs[0])
    groups = getattr(layer, "groups", 1) or 1
    minor = _mac_layer_minor(layer, inputs, outputs)
    if isinstance(layer, tf.keras.layers.DepthwiseConv2D) or isinstance(
        layer, getattr(tf.keras.layers, "DepthwiseConv1D", ())
    ):
        macs = depthwise_macs(kernel, cin, _spatial(layer, outputs[0]), layer.depth_multiplier)
        return OpCount(flops=macs, minor_ops=minor)
    if isinstance(layer, (tf.keras.layers.SeparableConv1D, tf.keras.layers.SeparableConv2D)):
        out_hw = _spatial(layer, outputs[0])
        mult = layer.depth_multiplier
        pointwise = conv_macs(1, cin * mult, layer.filters, out_hw)
        macs = depthwise_macs(kernel, cin, out_hw, mult) + pointwise
        return OpCount(flops=macs, minor_ops=minor)
    if isinstance(layer, tf.keras.layers.Conv2DTranspose) or isinstance(
        layer, (tf.keras.layers.Conv1DTranspose, tf.keras.layers.Conv3DTranspose)
    ):
        # Every input pixel scatters a full kernel into the output.
        macs = conv_macs(kernel, cin, layer.filters, _spatial(layer, inputs[0]))
        return OpCount(flops=macs, minor_ops=minor)
    macs = conv_macs(kernel, cin, layer.filters, _spatial(layer, outputs[0]), groups)
    if _is_binary(layer):
        lce = isinstance(layer, lq.layers.QuantConv2D) and (
            groups == 1 or (cin // groups) % LCE_GROUP_CHANNEL_MULTIPLE == 0
        )
        return OpCount(
            bops=macs,
            minor_ops=minor,
            binary_params=int(layer.kernel.shape.num_elements()),
            lce_binary=lce,
        )
    return OpCount(flops=macs, minor_ops=minor, note=_real_quant_note(layer))


def _real_quant_note(layer) -> str:
    if not isinstance(layer, _BINARY_CAPABLE):
        return ""
    in_bits = quantizer_bits(getattr(layer, "input_quantizer", None))
    k_bits = _kernel_bits(layer)
    if k_bits == 1 and in_bits != 1:
        return "binary kernel, real input: FLOPs"
    if in_bits == 1 and k_bits != 1:
        return "binary input, real kernel: FLOPs"
    return ""


def _dense_ops(layer, inputs, outputs) -> OpCount:
    cin = inputs[0][-1]
    positions = math.prod(outputs[0][1:-1])
    macs = dense_macs(cin, layer.units, positions)
    minor = _mac_layer_minor(layer, inputs, outputs)
    if _is_binary(layer):
        # LCE 0.16 runs a binary QuantDense as a float FULLY_CONNECTED on +-1 values.
        return OpCount(
            bops=macs,
            minor_ops=minor,
            binary_params=int(layer.kernel.shape.num_elements()),
            lce_binary=False,
        )
    return OpCount(flops=macs, minor_ops=minor, note=_real_quant_note(layer))


def _per_output(ops_per_element: int) -> Callable:
    def rule(layer, inputs, outputs) -> OpCount:
        return OpCount(minor_ops=ops_per_element * sum(_size(s) for s in outputs))

    return rule


def _free(layer, inputs, outputs) -> OpCount:
    return OpCount()


def _activation_ops(layer, inputs, outputs) -> OpCount:
    if getattr(layer, "activation", None) is tf.keras.activations.linear:
        return OpCount()
    return OpCount(minor_ops=_size(outputs[0]))


def _pool_ops(layer, inputs, outputs) -> OpCount:
    return OpCount(minor_ops=math.prod(layer.pool_size) * _size(outputs[0]))


def _global_pool_ops(layer, inputs, outputs) -> OpCount:
    # One read-and-accumulate (or compare) per input element.
    return OpCount(minor_ops=_size(inputs[0]))


def _merge_ops(layer, inputs, outputs) -> OpCount:
    n = len(inputs)
    per_element = n if isinstance(layer, tf.keras.layers.Average) else n - 1
    return OpCount(minor_ops=per_element * _size(outputs[0]))


# TF ops called on Keras tensors in a Functional model (TFOpLambda), by symbol suffix.
_FREE_TF_OPS = frozenset(
    "reshape concat transpose identity getitem expand_dims squeeze stack cast shape split "
    "unstack gather pad zeros_like ones_like stop_gradient".split()
)
_ELEMENTWISE_TF_OPS = frozenset(
    "add add_v2 subtract sub multiply mul truediv divide maximum minimum relu relu6 sign "
    "sigmoid tanh abs negative neg clip_by_value square sqrt exp log softmax elu selu swish "
    "silu gelu".split()
)


def _tf_op_ops(layer, inputs, outputs) -> OpCount | None:
    symbol = getattr(layer, "symbol", "") or ""
    op = symbol.rsplit(".", 1)[-1].strip("_")
    if op in _FREE_TF_OPS:
        return OpCount()
    if op in _ELEMENTWISE_TF_OPS:
        return OpCount(minor_ops=sum(_size(s) for s in outputs))
    return None


_RULES: list[tuple[type, Callable]] = []


def register_layer_cost(layer_class: type) -> Callable:
    """Decorator: count the ops of ``layer_class`` (and subclasses) with the decorated function.

    The function gets ``(layer, input_shapes, output_shapes)`` of one call (lists of shape tuples,
    batch dimension first) and returns an :class:`OpCount` for that call. Rules registered later
    win over earlier ones and over the built-in rules.

    Args:
        layer_class: a Keras layer class.

    Returns:
        A decorator that registers and returns the function unchanged.

    Example:
        >>> @register_layer_cost(MyScale)
        ... def _my_scale_cost(layer, input_shapes, output_shapes):
        ...     return OpCount(minor_ops=math.prod(output_shapes[0][1:]))
    """
    if not (isinstance(layer_class, type) and issubclass(layer_class, tf.keras.layers.Layer)):
        raise CostModelError(
            f"register_layer_cost needs a tf.keras Layer class, got {layer_class!r}."
        )

    def decorator(fn: Callable) -> Callable:
        _RULES.insert(0, (layer_class, fn))
        return fn

    return decorator


def _builtin_rules() -> list[tuple[type, Callable]]:
    L = tf.keras.layers

    def optional(*names):
        # Layer classes that only some Keras 2 versions have.
        return tuple(getattr(L, n) for n in names if hasattr(L, n))

    return [
        (L.Conv1D, _conv_ops),
        (L.Conv2D, _conv_ops),
        (L.Conv3D, _conv_ops),
        (L.DepthwiseConv2D, _conv_ops),
        (L.SeparableConv1D, _conv_ops),
        (L.SeparableConv2D, _conv_ops),
        *((cls, _conv_ops) for cls in optional("DepthwiseConv1D")),
        (L.Dense, _dense_ops),
        (L.BatchNormalization, _per_output(1)),  # folded scale + shift: one MAC-like op
        (L.Rescaling, _per_output(1)),
        (L.Normalization, _per_output(1)),
        (L.Activation, _activation_ops),
        (L.ReLU, _per_output(1)),
        (L.LeakyReLU, _per_output(1)),
        (L.PReLU, _per_output(1)),
        (L.ELU, _per_output(1)),
        (L.ThresholdedReLU, _per_output(1)),
        (L.Softmax, _per_output(1)),
        (lq.quantizers.Quantizer, _per_output(1)),  # a larq quantizer used as a layer
        (L.MaxPooling1D, _pool_ops),
        (L.MaxPooling2D, _pool_ops),
        (L.MaxPooling3D, _pool_ops),
        (L.AveragePooling1D, _pool_ops),
        (L.AveragePooling2D, _pool_ops),
        (L.AveragePooling3D, _pool_ops),
        (L.GlobalMaxPooling1D, _global_pool_ops),
        (L.GlobalMaxPooling2D, _global_pool_ops),
        (L.GlobalMaxPooling3D, _global_pool_ops),
        (L.GlobalAveragePooling1D, _global_pool_ops),
        (L.GlobalAveragePooling2D, _global_pool_ops),
        (L.GlobalAveragePooling3D, _global_pool_ops),
        (L.Add, _merge_ops),
        (L.Subtract, _merge_ops),
        (L.Multiply, _merge_ops),
        (L.Average, _merge_ops),
        (L.Maximum, _merge_ops),
        (L.Minimum, _merge_ops),
        (L.Concatenate, _free),
        (L.InputLayer, _free),
        (L.Flatten, _free),
        (L.Reshape, _free),
        (L.Permute, _free),
        (L.RepeatVector, _free),
        (L.ZeroPadding1D, _free),
        (L.ZeroPadding2D, _free),
        (L.ZeroPadding3D, _free),
        (L.Cropping1D, _free),
        (L.Cropping2D, _free),
        (L.Cropping3D, _free),
        (L.Dropout, _free),  # SpatialDropout* subclass Dropout; identity at inference
        (L.GaussianNoise, _free),
        (L.GaussianDropout, _free),
        (L.AlphaDropout, _free),
        (L.ActivityRegularization, _free),
        *((cls, _free) for cls in optional("Identity")),
    ]


_BUILTIN_RULES = _builtin_rules()


# tfbnas's own data-movement layers (tfbnas.space.ops), by registered name so that this module
# needs no import of the search space: strided slicing and a one-pixel shift cost no arithmetic.
_FREE_REGISTERED = frozenset({"tfbnas>Subsample2D", "tfbnas>ShiftPixel"})


def _find_rule(layer) -> Callable | None:
    if type(layer).__name__ in ("TFOpLambda", "SlicingOpLambda"):
        return _tf_op_ops
    for cls, rule in _RULES:
        if isinstance(layer, cls):
            return rule
    if tf.keras.utils.get_registered_name(type(layer)) in _FREE_REGISTERED:
        return _free
    for cls, rule in _BUILTIN_RULES:
        if isinstance(layer, cls):
            return rule
    return None


# --------------------------------------------------------------------------------------------
# Parameters.
# --------------------------------------------------------------------------------------------


def _weight_count(weights) -> int:
    return sum(int(w.shape.num_elements()) for w in weights)


def _inference_param_count(layer) -> int:
    """All weights of a layer; BatchNorm counts its folded scale and offset (2 per channel)."""
    weights = list(layer.weights)
    if isinstance(layer, tf.keras.layers.BatchNormalization):
        names = [w.name.split("/")[-1].split(":")[0] for w in weights]
        # gamma folds into the variance term, beta into the mean term.
        for fused, stat in (("gamma", "moving_variance"), ("beta", "moving_mean")):
            if fused in names and stat in names:
                i = names.index(fused)
                del weights[i], names[i]
    return _weight_count(weights)


# --------------------------------------------------------------------------------------------
# Model walk.
# --------------------------------------------------------------------------------------------


def _is_graph_model(layer) -> bool:
    return isinstance(layer, tf.keras.Model) and getattr(layer, "_is_graph_network", False)


def _as_shape_list(shapes) -> list[tuple]:
    """Node shapes (one tuple, or nested lists/dicts of tuples) -> a flat list of shape tuples."""
    if isinstance(shapes, dict):
        shapes = list(shapes.values())
    if isinstance(shapes, tuple) and all(d is None or isinstance(d, int) for d in shapes):
        return [shapes]
    out: list[tuple] = []
    if isinstance(shapes, (list, tuple)):
        for shape in shapes:
            out.extend(_as_shape_list(shape))
    return out


def _layer_calls(model, layer) -> list:
    """The nodes (calls) of ``layer`` that belong to ``model``'s graph."""
    nodes = []
    for index, node in enumerate(layer._inbound_nodes):
        if f"{layer.name}_ib-{index}" in model._network_nodes:
            nodes.append(node)
    return nodes


def _check_known(shapes, name: str) -> None:
    for shape in shapes:
        if any(d is None for d in shape[1:]):
            raise CostModelError(
                f"layer '{name}' has a shape with unknown dimensions {shape}; build the model "
                "with a fixed input shape, e.g. tf.keras.Input((28, 28, 1)), before counting costs."
            )


def _display_shape(shapes: list[tuple]):
    return shapes[0] if len(shapes) == 1 else shapes


def _walk(model, prefix: str, multiplicity: int, rows: list, uncounted: list) -> None:
    for layer in model.layers:
        name = prefix + layer.name
        nodes = _layer_calls(model, layer)
        if isinstance(layer, tf.keras.layers.InputLayer):
            continue
        calls = len(nodes) * multiplicity
        if _is_graph_model(layer):
            _walk(layer, name + "/", calls, rows, uncounted)
            continue
        rows.append(_layer_row(layer, name, nodes, multiplicity, uncounted))


def _layer_row(layer, name: str, nodes: list, multiplicity: int, uncounted: list) -> LayerCost:
    rule = _find_rule(layer)
    total_params = _inference_param_count(layer)
    calls = len(nodes) * multiplicity
    out_shape = None
    counts: list[OpCount] = []
    for node in nodes:
        inputs = _as_shape_list(node.input_shapes)
        outputs = _as_shape_list(node.output_shapes)
        if out_shape is None:
            out_shape = _display_shape(outputs)
        if rule is None:
            continue
        _check_known(inputs + outputs, name)
        count = rule(layer, inputs, outputs)
        if count is None:
            break
        counts.append(count)
    if rule is None or len(counts) != len(nodes) or (not nodes and rule is not _free):
        # Unknown layer (or unknown TF op): parameters still counted, ops left open.
        uncounted.append(f"{name} ({type(layer).__name__})")
        return LayerCost(
            name=name,
            class_name=type(layer).__name__,
            output_shape=out_shape,
            binary_params=0,
            real_params=total_params,
            bops=None,
            flops=None,
            minor_ops=None,
            calls=calls,
            note="uncounted: unknown layer type, ops not in totals",
        )
    binary_params = counts[0].binary_params if counts else 0
    if binary_params > total_params:
        raise CostModelError(
            f"cost rule for '{name}' reports {binary_params} binary params but the layer has only "
            f"{total_params}; fix the function registered for {type(layer).__name__}."
        )
    return LayerCost(
        name=name,
        class_name=type(layer).__name__,
        output_shape=out_shape,
        binary_params=binary_params,
        real_params=total_params - binary_params,
        bops=sum(c.bops for c in counts) * multiplicity,
        flops=sum(c.flops for c in counts) * multiplicity,
        minor_ops=sum(c.minor_ops for c in counts) * multiplicity,
        calls=calls,
        lce_binary=counts[0].lce_binary if counts else None,
        note=counts[0].note if counts else "",
    )


def model_cost(model: tf.keras.Model, strict: bool = False) -> CostReport:
    """Counts parameters, memory, BOPs, FLOPs, OPs and minor ops of a built Keras model.

    Args:
        model: a built Functional or Sequential ``tf.keras.Model`` with fixed input size; nested
            Functional/Sequential models are flattened (rows named ``outer/inner``), a layer
            called several times is counted once per call.
        strict: raise :class:`CostModelError` instead of warning when a layer type is unknown.

    Returns:
        A :class:`CostReport`. Layers of unknown type keep their parameters (counted as real)
        but their ops are left out of the totals; they are listed in ``report.uncounted`` and an
        :class:`UncountedLayerWarning` is issued.

    Raises:
        CostModelError: the model is not a built graph model, a shape is not fully known, or
            (with ``strict=True``) a layer type is unknown.

    Example:
        >>> report = model_cost(tf.keras.Sequential([tf.keras.Input((8, 8, 3)),
        ...                                          tf.keras.layers.Conv2D(4, 3)]))
        >>> report.flops == conv_macs(3, 3, 4, 6)
        True
    """
    if not isinstance(model, tf.keras.Model):
        raise CostModelError(
            f"model_cost needs a tf.keras.Model, got {type(model).__name__}; import tfbnas before "
            "tensorflow so that tf.keras is Keras 2."
        )
    if not model.built or not _is_graph_model(model):
        raise CostModelError(
            f"model '{model.name}' is not a built Functional/Sequential model; build it on a "
            "tf.keras.Input with a fixed shape (subclassed models have no graph to count)."
        )
    rows: list[LayerCost] = []
    uncounted: list[str] = []
    _walk(model, "", 1, rows, uncounted)
    if uncounted:
        message = (
            f"model '{model.name}': no op count for {', '.join(uncounted)}; their parameters are "
            "counted as real but their ops are missing from the totals. Register a cost function "
            "with tfbnas.cost.register_layer_cost(LayerClass)."
        )
        if strict:
            raise CostModelError(message)
        warnings.warn(message, UncountedLayerWarning, stacklevel=2)
    return CostReport(model_name=model.name, layers=tuple(rows))
