"""Deploy: Keras (Larq) model → LCE TFLite flatbuffer → parity check → benchmark.

* :mod:`tfbnas.deploy.lint` — which layers LCE will make binary, and the fix for each that it will not.
* :mod:`tfbnas.deploy.convert` — load, check, convert, report (``deploy/convert.py``).
* :mod:`tfbnas.deploy.flatbuffer` — op histogram and byte counts of a ``.tflite`` file.
* :mod:`tfbnas.deploy.parity` — Keras vs ``lce.testing.Interpreter`` on real test images.
* :mod:`tfbnas.deploy.benchmark` — latency on the host (LCE's interpreter, every kernel path) and on
  an ARM board through ``lce_benchmark_model``, locally or over ssh (``deploy/benchmark.py``).

Example:
    >>> from tfbnas.deploy import convert_model_file
    >>> report = convert_model_file("run/child.keras", "run/child.tflite")
"""

from tfbnas.errors import DeployError  # noqa: F401  (importable from here)
from tfbnas.deploy.flatbuffer import FlatbufferSummary, op_histogram, summarize_flatbuffer
from tfbnas.deploy.parity import ParityError, ParityResult, parity_batch, parity_check
from tfbnas.deploy.lint import BinarizationIssue, binarization_issues
from tfbnas.deploy.convert import (
    convert_keras,
    convert_model_file,
    float_twin,
    load_keras_model,
)
from tfbnas.deploy.benchmark import Latency, benchmark_board, benchmark_host, parse_benchmark_output

__all__ = [
    "DeployError", "ParityError", "BinarizationIssue", "FlatbufferSummary", "ParityResult", "Latency",
    "load_keras_model", "binarization_issues", "float_twin", "convert_keras", "convert_model_file",
    "op_histogram", "summarize_flatbuffer", "parity_batch", "parity_check",
    "benchmark_host", "benchmark_board", "parse_benchmark_output",
]
