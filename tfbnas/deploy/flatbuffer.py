"""What is inside a TFLite flatbuffer: an op histogram, binary vs float ops, and where the bytes go.

The file is parsed with the flatbuffer schema bindings that ship with TensorFlow
(``tensorflow.lite.python.schema_py_generated``; LCE's copy is the fallback), so no extra package
is needed. LCE's custom ops appear under their custom codes (``LceBconv2d``, ``LceQuantize``,
``LceDequantize``, ``LceBMaxPool2d``), builtin ops under their schema names (``CONV_2D``,
``DEPTHWISE_CONV_2D``, ``FULLY_CONNECTED``, ...).

Example:
    >>> summary = summarize_flatbuffer(open("child.tflite", "rb").read())
    >>> summary.ops["LceBconv2d"], summary.binary_ops, summary.float_compute_ops
    (6, 6, 2)
"""

import collections
import dataclasses
from typing import Dict, List, Optional

try:
    from tensorflow.lite.python import schema_py_generated as schema
except ImportError:  # older or trimmed TensorFlow builds
    from larq_compute_engine.mlir.python import tflite_schema as schema

# Ops that compute on bit-packed (1-bit) tensors.
BINARY_OPS = ("LceBconv2d", "LceBMaxPool2d")
# Ops that move between float/int8 and bit-packed tensors.
BITPACK_OPS = ("LceQuantize", "LceDequantize")
# Builtin ops that carry the multiply-accumulates of a CNN; they run in float32 or int8.
COMPUTE_OPS = ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED", "TRANSPOSE_CONV", "BATCH_MATMUL", "CONV_3D")

_BUILTIN_NAMES = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}
_TENSOR_TYPES = {v: k.lower() for k, v in vars(schema.TensorType).items() if not k.startswith("_")}
_INT_TYPES = {"int8", "uint8", "int16"}


class FlatbufferError(ValueError):
    """The bytes are not a TFLite flatbuffer."""


@dataclasses.dataclass
class TensorInfo:
    """An input or output of the main subgraph."""

    name: str
    shape: List[int]
    dtype: str
    scale: Optional[float] = None
    zero_point: Optional[int] = None


@dataclasses.dataclass
class FlatbufferSummary:
    """Counts and sizes of one flatbuffer.

    Attributes:
        size_bytes: file size.
        ops: op histogram, ``{op name: count}`` over all subgraphs, most frequent first.
        binary_ops: ops on bit-packed tensors (``LceBconv2d``, ``LceBMaxPool2d``).
        bitpack_ops: ``LceQuantize`` / ``LceDequantize`` (binarise / un-pack activations).
        float_compute_ops: conv / depthwise / fully-connected ops whose input is float.
        int8_compute_ops: the same ops with integer input.
        other_ops: everything else (pooling, elementwise, reshapes, pads, ...).
        constant_bytes: bytes of constant tensors (weights, biases, BN folded into multipliers), split
            into ``binary`` (inputs of binary ops), ``float`` / ``int8`` (inputs of compute ops) and ``other``.
        constant_bytes_by_op: constant bytes per op name.
        inputs, outputs: the main subgraph's I/O tensors.
    """

    size_bytes: int
    ops: Dict[str, int]
    binary_ops: int
    bitpack_ops: int
    float_compute_ops: int
    int8_compute_ops: int
    other_ops: int
    constant_bytes: Dict[str, int]
    constant_bytes_by_op: Dict[str, int]
    inputs: List[TensorInfo]
    outputs: List[TensorInfo]

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _root(flatbuffer: bytes):
    data = bytes(flatbuffer)
    if len(data) < 8 or data[4:8] != b"TFL3":
        raise FlatbufferError("not a TFLite flatbuffer (file identifier 'TFL3' missing); convert the model first")
    return schema.Model.GetRootAsModel(data, 0)


def _op_names(model) -> List[str]:
    names = []
    for i in range(model.OperatorCodesLength()):
        code = model.OperatorCodes(i)
        # Since schema v3a the real code is in BuiltinCode; old files only fill the deprecated byte.
        builtin = max(code.BuiltinCode(), code.DeprecatedBuiltinCode())
        if builtin == schema.BuiltinOperator.CUSTOM:
            custom = code.CustomCode()
            names.append(custom.decode() if custom else "CUSTOM")
        else:
            names.append(_BUILTIN_NAMES.get(builtin, f"BUILTIN_{builtin}"))
    return names


def _buffer_bytes(model, index: int) -> int:
    if index <= 0 or index >= model.BuffersLength():
        return 0  # buffer 0 is the empty sentinel: the tensor is not constant
    buf = model.Buffers(index)
    if buf.Offset() > 1:  # large models keep data after the flatbuffer; Offset/Size locate it
        return int(buf.Size())
    return int(buf.DataLength())


def _tensor_info(subgraph, index: int) -> TensorInfo:
    t = subgraph.Tensors(index)
    q = t.Quantization()
    scale = zero_point = None
    if q is not None and q.ScaleLength() == 1:
        scale, zero_point = float(q.Scale(0)), int(q.ZeroPoint(0))
    name = t.Name()
    return TensorInfo(
        name=name.decode() if name else "",
        shape=[int(d) for d in t.ShapeAsNumpy()] if t.ShapeLength() else [],
        dtype=_TENSOR_TYPES.get(t.Type(), str(t.Type())),
        scale=scale,
        zero_point=zero_point,
    )


def op_histogram(flatbuffer: bytes) -> Dict[str, int]:
    """``{op name: count}`` over all subgraphs of a TFLite flatbuffer, most frequent first.

    Args:
        flatbuffer: the ``.tflite`` bytes.

    Returns:
        The histogram, e.g. ``{"LceBconv2d": 6, "LceQuantize": 6, "CONV_2D": 1, "FULLY_CONNECTED": 1}``.
    """
    return summarize_flatbuffer(flatbuffer).ops


def summarize_flatbuffer(flatbuffer: bytes) -> FlatbufferSummary:
    """Op histogram, binary/float op counts and constant bytes of a TFLite flatbuffer.

    Args:
        flatbuffer: the ``.tflite`` bytes.

    Returns:
        A :class:`FlatbufferSummary`.

    Raises:
        FlatbufferError: the bytes are not a TFLite flatbuffer.
    """
    model = _root(flatbuffer)
    names = _op_names(model)
    ops = collections.Counter()
    kinds = collections.Counter()
    const_by_kind = collections.Counter()
    const_by_op = collections.Counter()
    seen_buffers = set()
    for g in range(model.SubgraphsLength()):
        subgraph = model.Subgraphs(g)
        for j in range(subgraph.OperatorsLength()):
            op = subgraph.Operators(j)
            name = names[op.OpcodeIndex()]
            ops[name] += 1
            inputs = [int(i) for i in op.InputsAsNumpy()] if op.InputsLength() else []
            if name in BINARY_OPS:
                kind = "binary"
            elif name in BITPACK_OPS:
                kind = "bitpack"
            elif name in COMPUTE_OPS and inputs and inputs[0] >= 0:
                dtype = _TENSOR_TYPES.get(subgraph.Tensors(inputs[0]).Type(), "")
                kind = "int8" if dtype in _INT_TYPES else "float"
            else:
                kind = "other"
            kinds[kind] += 1
            for i in inputs:
                if i < 0:
                    continue  # optional input left out
                buffer = subgraph.Tensors(i).Buffer()
                if buffer in seen_buffers:
                    continue  # a constant shared by several ops is stored once
                size = _buffer_bytes(model, buffer)
                if size:
                    seen_buffers.add(buffer)
                    const_by_kind["other" if kind == "bitpack" else kind] += size
                    const_by_op[name] += size
    main = model.Subgraphs(0)
    return FlatbufferSummary(
        size_bytes=len(flatbuffer),
        ops=dict(ops.most_common()),
        binary_ops=kinds["binary"],
        bitpack_ops=kinds["bitpack"],
        float_compute_ops=kinds["float"],
        int8_compute_ops=kinds["int8"],
        other_ops=kinds["other"],
        constant_bytes={k: int(const_by_kind[k]) for k in ("binary", "float", "int8", "other")},
        constant_bytes_by_op=dict(const_by_op.most_common()),
        inputs=[_tensor_info(main, int(main.Inputs(k))) for k in range(main.InputsLength())],
        outputs=[_tensor_info(main, int(main.Outputs(k))) for k in range(main.OutputsLength())],
    )


def strip_names(flatbuffer: bytes) -> bytes:
    """``flatbuffer`` without its tensor and subgraph names, description and signature defs.

    TFLite's own ``strip_strings``: the graph, the weights and the custom op codes (``LceBconv2d``)
    stay, so every interpreter runs the result alike (inputs and outputs by index); only the names a
    debugger would show go. Keras names are long (``StatefulPartitionedCall/model/cell3_...``), so
    this saves about a tenth of a small Child's file.

    Args:
        flatbuffer: a TFLite flatbuffer.

    Returns:
        The stripped flatbuffer.
    """
    from tensorflow.lite.tools import flatbuffer_utils

    model = flatbuffer_utils.read_model_from_bytearray(bytearray(flatbuffer))
    flatbuffer_utils.strip_strings(model)
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model))
