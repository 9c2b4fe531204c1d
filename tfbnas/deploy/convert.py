"""Keras (Larq) model → LCE TFLite flatbuffer, with the checks a deployment needs.

:func:`convert_model_file` is the whole deploy-conversion step behind ``deploy/convert.py``:

1. load the ``.keras`` model (tfbnas's custom layers are registered first);
2. inspect it for layers LCE cannot make binary (:func:`tfbnas.deploy.lint.binarization_issues`) and refuse them,
   naming the layer and the change, unless float fallback is allowed;
3. convert with Larq Compute Engine (:func:`convert_keras`);
4. parity check on real test images through Keras and ``lce.testing.Interpreter``;
5. compare with a float reference (the same model without quantizers, or a given Parent);
6. write ``<output>.json`` and ``<output>.md`` next to the flatbuffer.

Example:
    >>> report = convert_model_file("run/child.keras", "run/child.tflite", parity_examples=256)
    >>> report["flatbuffer"]["ops"]["LceBconv2d"], report["parity"]["agreement"]
    (6, 1.0)
"""

import contextlib
import importlib
import importlib.util
import os
import sys
import tempfile
import warnings
import zipfile
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

import larq as lq
import tensorflow as tf

from tfbnas.cost import CostModelError, UncountedLayerWarning, model_cost
from tfbnas.deploy import DeployError
from tfbnas.deploy import flatbuffer as fbs
from tfbnas.deploy import parity as par
from tfbnas.deploy.lint import BinarizationIssue, all_layers, binarization_issues, expected_binary_convs  # noqa: F401
from tfbnas.runs import write_json

# --target choices → LCE's `target` argument. LCE knows "arm" (generic TFLite; the same flatbuffer runs
# on aarch64, armv7 and, through LCE's portable kernels, on x86) and "xcore" (XMOS).
TARGETS = {"arm": "arm", "arm64": "arm", "aarch64": "arm", "armv7": "arm", "aarch32": "arm",
           "x86": "arm", "x86_64": "arm", "xcore": "xcore"}
# Modules that register tfbnas's custom Keras layers when imported.
CUSTOM_LAYER_MODULES = ("tfbnas.space", "tfbnas.models")


# ------------------------------------------------------------------------------------------- loading


def register_custom_layers(modules: Sequence[str] = CUSTOM_LAYER_MODULES) -> Dict[str, str]:
    """Imports the modules that register custom layers, skipping those that do not exist.

    Args:
        modules: dotted module names.

    Returns:
        ``{module: error}`` for modules that exist but failed to import (empty when all is well).
    """
    failures = {}
    for name in modules:
        try:
            if importlib.util.find_spec(name) is None:
                continue
            importlib.import_module(name)
        except Exception as e:  # a broken module must not hide the model's own load error
            failures[name] = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
    return failures


def _looks_like_keras(path: str) -> bool:
    if os.path.isdir(path):
        return os.path.exists(os.path.join(path, "saved_model.pb")) or os.path.exists(
            os.path.join(path, "keras_metadata.pb"))
    with open(path, "rb") as f:
        head = f.read(8)
    if head == b"\x89HDF\r\n\x1a\n":
        return True
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as z:
            return "config.json" in z.namelist()
    return False


def load_keras_model(path: str, custom_modules: Sequence[str] = CUSTOM_LAYER_MODULES) -> tf.keras.Model:
    """Loads a ``.keras`` (or ``.h5`` / SavedModel) file for conversion, with one-line errors.

    Args:
        path: the model file written by training.
        custom_modules: modules imported first so custom layers deserialise.

    Returns:
        The uncompiled ``tf.keras.Model``.

    Raises:
        DeployError: the file is missing, is not a Keras model, or uses layers nobody registered.
    """
    if not os.path.exists(path):
        raise DeployError(f"model file not found: {path}; pass the .keras file written by training "
                          "(e.g. --model=RUN/child.keras)")
    failures = register_custom_layers(custom_modules)
    if not _looks_like_keras(path):
        raise DeployError(f"{path} is not a Keras model (expected a .keras archive, an .h5 file or a SavedModel "
                          "folder); export the model with model.save('child.keras')")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = tf.keras.models.load_model(path, compile=False)
    except Exception as e:
        from tfbnas.models import unregistered_layers

        message = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        missing = unregistered_layers(path)
        if missing:
            modules = ",".join(dict.fromkeys(m for _, m in missing if m)) or "my.module"
            raise DeployError(f"{path} uses {', '.join(n for n, _ in missing)}, not registered in this process; "
                              f"import the module that defines it (--custom_modules={modules})") from None
        if "Unknown" in message or "locate" in message or "custom" in message.lower():
            broken = "; ".join(f"{k} failed to import ({v})" for k, v in failures.items())
            raise DeployError(f"{path} uses a layer that is not registered ({message}); import the module that "
                              "defines it (--custom_modules=my.module)" + (f"; note: {broken}" if broken else ""))
        raise DeployError(f"{path} could not be loaded as a Keras model: {message}") from None
    if not isinstance(model, tf.keras.Model):
        raise DeployError(f"{path} holds a {type(model).__name__}, not a Keras model; save a tf.keras.Model")
    return model


# ------------------------------------------------------------------------------------------ float twin


def float_twin(model) -> tf.keras.Model:
    """The same architecture and weights with every Larq quantizer removed.

    For a Child this is its real-valued counterpart: the reference whose flatbuffer size and
    latency the binary model is compared with.

    Args:
        model: a Keras model with Larq layers (top-level or inside custom layers that expose
            ``*_quantizer`` constructor arguments).

    Returns:
        A new model with identical weights.

    Raises:
        DeployError: the model cannot be cloned (e.g. a subclassed model).
    """
    from tfbnas.models import clone_layers

    def strip(layer, config):
        keys = [k for k in config if k.endswith("_quantizer")]
        return layer.__class__.from_config({**config, **dict.fromkeys(keys)}) if keys else None

    try:
        twin = clone_layers(model, strip)
    except Exception as e:
        raise DeployError(f"cannot build a float twin of '{model.name}': {str(e).splitlines()[0]}; "
                          "pass --float_model=<the real-valued Parent>") from None
    return twin


# ------------------------------------------------------------------------------------------ conversion


@contextlib.contextmanager
def _capture_native_stderr(sink: List[str]):
    """Collects what native code (the MLIR converter) writes to file descriptor 2."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as tmp:
        os.dup2(tmp.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            sink.append(tmp.read().decode(errors="replace"))


def _converter_messages(text: str) -> List[str]:
    lines = []
    for line in text.splitlines():
        line = line.strip()
        if line.startswith(("error:", "warning:")) and line not in lines:
            lines.append(line)
    return lines


def _needs_native_conv(layer) -> bool:
    """A stock Larq ``QuantConv2D`` whose Keras graph form can defeat LCE (dilated or grouped)."""
    return (type(layer) is lq.layers.QuantConv2D and layer.data_format == "channels_last"
            and (max(layer.dilation_rate) > 1 or int(layer.groups or 1) > 1))


def with_native_convs(model):
    """``model`` with every dilated or grouped Larq ``QuantConv2D`` as :class:`NativeQuantConv2D`.

    Same weights and values; the convs become single native ``Conv2D`` ops, which LCE always turns into
    ``LceBconv2d`` (Keras's space-to-batch form of a dilated conv does not convert when two such convs
    share an input). Models without such layers, and models that cannot be cloned (subclassed), are
    returned unchanged.
    """
    from tfbnas.models import clone_layers
    from tfbnas.space.ops import NativeQuantConv2D

    if not any(_needs_native_conv(layer) for layer in all_layers(model)):
        return model

    def native(layer, config):
        return NativeQuantConv2D.from_config(config) if _needs_native_conv(layer) else None

    try:
        return clone_layers(model, native)
    except Exception:  # noqa: BLE001  (unclonable model: convert it as it is; the LceBconv2d count still checks it)
        return model


def _serving_saved_model(model, directory: str) -> bool:
    """Writes the SavedModel that ``lce.convert_keras_model`` converts: the model's variables and its inference
    call as the serving signature, inputs and outputs named as Keras names them (the flatbuffers are equal).
    Keras's own SavedModel export, which LCE uses, also traces every layer's call functions: ~4x the
    conversion's time for a Child of ~450 layers. False when the model has no functional inputs (LCE's
    path is used then)."""
    inputs = getattr(model, "inputs", None)
    if not inputs:
        return False
    specs = [tf.TensorSpec(t.shape, t.dtype, name=name) for t, name in zip(inputs, model.input_names)]
    names = list(model.output_names)

    @tf.function(input_signature=specs)
    def serve(*tensors):
        outputs = model(list(tensors) if len(tensors) > 1 else tensors[0], training=False)
        return dict(zip(names, outputs if isinstance(outputs, (list, tuple)) else [outputs]))

    module = tf.Module()
    module.model_variables = list(model.variables)
    try:
        tf.saved_model.save(module, directory, signatures={"serving_default": serve})
    except Exception:  # noqa: BLE001  (LCE's own path reports what fails)
        return False
    return True


def convert_keras(model, *, target: str = "arm", int8_io: bool = False,
            int8_default_range: Optional[Tuple[float, float]] = None,
            messages: Optional[List[str]] = None, strip_names: bool = False) -> bytes:
    """Converts a Keras model as ``lce.convert_keras_model`` does (through :func:`_serving_saved_model`).

    Args:
        model: the Keras model.
        target: one of :data:`TARGETS` (``arm``/``arm64``/``armv7``/``x86`` give LCE's ``"arm"``
            flatbuffer, which every TFLite CPU runtime with LCE's ops executes; ``xcore`` is XMOS).
        int8_io: int8 input and output tensors (``inference_input_type/output_type=tf.int8``); needs a
            model with int8 quantisation (fake-quant ops from quantisation-aware training) or
            ``int8_default_range``.
        int8_default_range: ``(min, max)`` assumed for every tensor without quantisation statistics
            (LCE's ``experimental_default_int8_range``): for latency tests only, accuracy is not kept.
        messages: when given, the converter's own error/warning lines are appended here.
        strip_names: drop tensor/subgraph names and signature defs (:func:`flatbuffer.strip_names`).

    Returns:
        The flatbuffer bytes.

    Raises:
        DeployError: unknown target, failed conversion, or int8 I/O that the model cannot provide.
    """
    import larq_compute_engine as lce

    if target not in TARGETS:
        raise DeployError(f"unknown target '{target}'; use one of {', '.join(sorted(TARGETS))}")
    io_type = tf.int8 if int8_io else tf.float32
    native, caught = [], []
    try:
        with _capture_native_stderr(native), warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            options = dict(inference_input_type=io_type, inference_output_type=io_type, target=TARGETS[target],
                           experimental_default_int8_range=tuple(int8_default_range) if int8_default_range else None)
            model = with_native_convs(model)
            flatbuffer = None
            with tempfile.TemporaryDirectory() as directory:
                if _serving_saved_model(model, directory):
                    try:
                        flatbuffer = lce.convert_saved_model(directory, **options)
                    except Exception:  # noqa: BLE001  (LCE's own path retries from a GraphDef, as it does)
                        pass
            if flatbuffer is None:
                flatbuffer = lce.convert_keras_model(model, **options)
    except Exception as e:
        detail = _converter_messages(native[0] if native else "")
        raise DeployError(f"LCE conversion failed: {str(e).splitlines()[0] if str(e) else type(e).__name__}"
                          + (f" ({detail[0]})" if detail else "")) from None
    found = _converter_messages(native[0] if native else "")
    found += [str(w.message) for w in caught if "Saved-model conversion failed" not in str(w.message)]
    found = list(dict.fromkeys(found))  # LCE repeats some warnings once per conversion attempt
    for line in found:
        print(line, file=sys.stderr)
    if messages is not None:
        messages.extend(found)
    if int8_io:
        summary = fbs.summarize_flatbuffer(flatbuffer)
        types = {t.dtype for t in summary.inputs + summary.outputs}
        if types != {"int8"}:
            raise DeployError(
                "--int8_io needs an int8-quantised model, but this one has no int8 quantisation statistics "
                f"(converted I/O types: {sorted(types)}); add fake-quant ops (quantisation-aware training), "
                "or for latency tests only pass --int8_default_range=-3,3, or drop --int8_io")
    return fbs.strip_names(flatbuffer) if strip_names else flatbuffer


# ------------------------------------------------------------------------------------------------ cost


def _cost(model) -> Tuple[Optional[dict], str]:
    """The model's cost totals (:func:`tfbnas.cost.model_cost`) and the report's note on them.

    A model the cost model cannot count is still converted: its totals are None and the note says why.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UncountedLayerWarning)  # the note names them instead
            report = model_cost(model)
    except CostModelError as e:
        return None, f"tfbnas.cost.model_cost cannot count this model ({str(e).splitlines()[0]}); BOPs/FLOPs/OPs left out"
    note = "from tfbnas.cost.model_cost (OPs = BOPs/64 + FLOPs)"
    if report.uncounted:
        note += f"; layers without an op count: {', '.join(report.uncounted)}"
    return report.totals(), note


# --------------------------------------------------------------------------------------------- reports


def _float_reference(model, float_model, target: str, use_twin: bool, notes: List[str],
                     strip_names: bool = False) -> Tuple[Optional[bytes], str, bool]:
    """The float flatbuffer to compare with, where it came from, and whether it was converted here
    (converted ones get the same name stripping as the binary file, so sizes compare like for like)."""
    if float_model is not None:
        if isinstance(float_model, tf.keras.Model):
            return convert_keras(float_model, target=target, strip_names=strip_names), "given float model", True
        if not os.path.exists(float_model):
            raise DeployError(f"float model not found: {float_model}; pass the Parent's .keras or .tflite file")
        if float_model.endswith(".tflite"):
            with open(float_model, "rb") as f:
                return f.read(), float_model, False
        converted = convert_keras(load_keras_model(float_model), target=target, strip_names=strip_names)
        return converted, float_model, True
    if not use_twin:
        return None, "", False
    try:
        twin = float_twin(model)
    except DeployError as e:
        notes.append(str(e))
        return None, "", False
    return (convert_keras(twin, target=target, strip_names=strip_names),
            "float twin (same model and weights, quantizers removed)", True)


def _ratios(binary: fbs.FlatbufferSummary, floating: fbs.FlatbufferSummary) -> dict:
    """Whole-file ratio and the ratio restricted to the parts that became binary.

    The layers that stay real-valued (stem, classifier, fallbacks) hold the same bytes in both files,
    so the float size of the binary parts is the float file's constants minus the binary file's
    non-binary constants.
    """
    binary_part = binary.constant_bytes["binary"]
    shared = sum(v for k, v in binary.constant_bytes.items() if k != "binary")
    float_part = sum(floating.constant_bytes.values()) - shared
    return {
        "size_bytes": floating.size_bytes,
        "size_ratio": binary.size_bytes / floating.size_bytes,
        "binary_part_bytes": binary_part,
        "float_part_bytes": float_part,
        "binary_part_ratio": (binary_part / float_part) if binary_part and float_part > 0 else None,
        "ops": floating.ops,
    }


def _kb(n) -> str:
    return f"{n / 1024:.1f} KiB"


def summary_lines(report: dict) -> List[str]:
    """The few lines ``deploy/convert.py`` prints."""
    fb = report["flatbuffer"]
    ops = ", ".join(f"{k} {v}" for k, v in fb["ops"].items())
    lines = [f"{report['output']}: {_kb(fb['size_bytes'])}, {sum(fb['ops'].values())} ops ({ops})",
             f"binary ops {fb['binary_ops']} (LceBconv2d {fb['ops'].get('LceBconv2d', 0)} of "
             f"{report['binarization']['expected_binary_convs']} binary convs), float compute ops "
             f"{fb['float_compute_ops']}, int8 compute ops {fb['int8_compute_ops']}, bitpack ops {fb['bitpack_ops']}"]
    ref = report.get("float_reference")
    if ref:
        line = f"size vs float reference: {_kb(fb['size_bytes'])} / {_kb(ref['size_bytes'])} = {ref['size_ratio']:.3f}"
        if ref.get("binary_part_ratio") is not None:
            line += (f" (binary parts: {_kb(ref['binary_part_bytes'])} / {_kb(ref['float_part_bytes'])} = "
                     f"{ref['binary_part_ratio']:.3f})")
        lines.append(line)
    cost = report.get("cost")
    if cost:
        lines.append("cost: " + ", ".join(f"{k} {v:.4g}" for k, v in cost.items()))
    p = report.get("parity")
    if p:
        lines.append(f"parity on {p['examples']} {report['dataset']} test images: "
                     f"top-1 agreement {p['agreement']:.2%}, "
                     f"max |{p['output_kind']} error| {p['max_abs_error']:.3g}, max |prob error| "
                     f"{p['max_abs_prob_error']:.3g}")
    return lines


def markdown_report(report: dict) -> str:
    """``child.md``: the conversion report as Markdown."""
    fb = report["flatbuffer"]
    out = [f"# Deploy: {os.path.basename(report['output'])}", "",
           f"- model: `{report['model']}`", f"- target: `{report['target']}` (LCE target `{report['lce_target']}`)",
           f"- I/O: {', '.join(t['dtype'] + str(t['shape']) for t in fb['inputs'])} → "
           f"{', '.join(t['dtype'] + str(t['shape']) for t in fb['outputs'])}",
           f"- flatbuffer size: {fb['size_bytes']} bytes ({_kb(fb['size_bytes'])})",
           f"- versions: tfbnas {report['versions']['tfbnas']}, LCE {report['versions']['larq_compute_engine']}, "
           f"TensorFlow {report['versions']['tensorflow']}", "",
           "## Ops", "", "| op | count | kind |", "| --- | ---: | --- |"]
    for name, count in fb["ops"].items():
        kind = ("binary" if name in fbs.BINARY_OPS else "bitpack" if name in fbs.BITPACK_OPS
                else "compute" if name in fbs.COMPUTE_OPS else "other")
        out.append(f"| {name} | {count} | {kind} |")
    out += ["", f"binary ops: {fb['binary_ops']}, float compute ops: {fb['float_compute_ops']}, "
                f"int8 compute ops: {fb['int8_compute_ops']}, bitpack ops: {fb['bitpack_ops']}, "
                f"other ops: {fb['other_ops']}", "",
            "constant bytes: " + ", ".join(f"{k} {v}" for k, v in fb["constant_bytes"].items()), ""]
    b = report["binarization"]
    out += ["## Binarisation", "", f"- binary convs in the Keras model: {b['expected_binary_convs']}, "
                                   f"LceBconv2d in the flatbuffer: {fb['ops'].get('LceBconv2d', 0)}"]
    out += [f"- issue: {i}" for i in b["issues"]] + [f"- converter: `{m}`" for m in b["converter_messages"]]
    out.append("")
    if report.get("cost"):
        out += ["## Cost", "", "| measure | value |", "| --- | ---: |"]
        out += [f"| {k} | {v:.6g} |" for k, v in report["cost"].items()]
        out += ["", report["cost_note"], ""]
    else:
        out += ["## Cost", "", report.get("cost_note", ""), ""]
    ref = report.get("float_reference")
    if ref:
        out += ["## Size vs float", "", f"reference: {ref['source']}", "",
                "| | binary | float | ratio |", "| --- | ---: | ---: | ---: |",
                f"| whole file | {fb['size_bytes']} | {ref['size_bytes']} | {ref['size_ratio']:.3f} |"]
        if ref.get("binary_part_ratio") is not None:
            out.append(f"| binary parts (constants) | {ref['binary_part_bytes']} | {ref['float_part_bytes']} | "
                       f"{ref['binary_part_ratio']:.3f} |")
        out.append("")
    p = report.get("parity")
    if p:
        out += ["## Parity", "", f"{p['examples']} `{report['dataset']}` test images, preprocessing "
                                 f"{p['preprocess']}, {p['interpreter']}", "",
                "| measure | value |", "| --- | ---: |",
                f"| top-1 agreement | {p['agreement']:.4f} (threshold {report['min_agreement']}) |",
                f"| max abs error ({p['output_kind']}) | {p['max_abs_error']:.3g} |",
                f"| max abs error (probabilities) | {p['max_abs_prob_error']:.3g} |"]
        if p.get("keras_accuracy") is not None:
            out += [f"| Keras top-1 accuracy | {p['keras_accuracy']:.4f} |",
                    f"| TFLite top-1 accuracy | {p['tflite_accuracy']:.4f} |"]
        out.append("")
    if report.get("notes"):
        out += ["## Notes", ""] + [f"- {n}" for n in report["notes"]] + [""]
    return "\n".join(out)


def _versions() -> dict:
    import larq_compute_engine as lce

    import tfbnas

    return {"tfbnas": tfbnas.__version__, "larq_compute_engine": lce.__version__, "tensorflow": tf.__version__,
            "larq": getattr(lq, "__version__", "unknown")}


def convert_model_file(model_path: str, output_path: str, *, target: str = "arm", int8_io: bool = False,
                       int8_default_range: Optional[Tuple[float, float]] = None, parity_examples: int = 256,
                       dataset: str = "fashion_mnist", data_dir: Optional[str] = None,
                       preprocess: Union[str, Callable] = "auto", min_agreement: float = 0.99,
                       num_threads: int = 1, allow_float_fallback: bool = False,
                       float_model: Optional[str] = None, use_float_twin: bool = True,
                       custom_modules: Sequence[str] = CUSTOM_LAYER_MODULES, strip_names: bool = True) -> dict:
    """Loads, checks, converts, parity-checks and reports one model (what ``deploy/convert.py`` runs).

    Args:
        model_path: the ``.keras`` file.
        output_path: where the ``.tflite`` goes; ``<stem>.json`` and ``<stem>.md`` are written next to it,
            and ``<stem>_float.tflite`` when a float reference is converted here.
        target: see :func:`convert_keras`.
        int8_io: int8 input/output tensors.
        int8_default_range: see :func:`convert_keras`.
        parity_examples: test images for the parity check (0 skips it, with a note).
        dataset: dataset the images come from (``tfbnas.data.load_arrays``).
        data_dir: where the data lives.
        preprocess: how uint8 images become model inputs: a callable or ``auto``/``mean_std``/``unit``/``raw``
            (see :func:`tfbnas.deploy.parity.resolve_preprocess`).
        min_agreement: minimum top-1 agreement; below it :class:`~tfbnas.deploy.parity.ParityError`.
        num_threads: interpreter threads for the parity check.
        allow_float_fallback: turn layers LCE cannot binarise into warnings instead of errors.
        float_model: the float reference (Parent) as ``.keras`` or ``.tflite``; default: the float twin.
        use_float_twin: convert the float twin when no ``float_model`` is given.
        custom_modules: modules that register custom layers.
        strip_names: drop tensor names and signature defs from the flatbuffer (and from a float reference
            converted here): smaller files, same graph; keep them (False) to debug per-tensor.

    Returns:
        The report (also written as JSON).

    Raises:
        DeployError: any problem, with a one-line message.
    """
    model = load_keras_model(model_path, custom_modules)
    notes: List[str] = []
    issues = binarization_issues(model)
    if issues and not allow_float_fallback:
        more = f" (and {len(issues) - 1} more)" if len(issues) > 1 else ""
        raise DeployError(f"LCE cannot binarise {issues[0]}{more}; "
                          "or pass --allow_float_fallback to deploy it as float")
    for issue in issues:
        print(f"warning: {issue}", file=sys.stderr)
        notes.append(f"float fallback allowed: {issue}")
    messages: List[str] = []
    flatbuffer = convert_keras(model, target=target, int8_io=int8_io, int8_default_range=int8_default_range,
                               messages=messages, strip_names=strip_names)
    out_dir = os.path.dirname(os.path.abspath(output_path))
    os.makedirs(out_dir, exist_ok=True)
    with open(output_path, "wb") as f:
        f.write(flatbuffer)
    stem = os.path.splitext(output_path)[0]
    summary = fbs.summarize_flatbuffer(flatbuffer)
    expected = expected_binary_convs(model)
    if summary.ops.get("LceBconv2d", 0) < expected:
        shortfall = (f"only {summary.ops.get('LceBconv2d', 0)} LceBconv2d for {expected} binary QuantConv2D layers: "
                     "some binary convs became float ops (see the converter messages above)")
        if not allow_float_fallback:
            raise DeployError(f"{model_path}: {shortfall}; build the convs as tfbnas.space.ops.NativeQuantConv2D "
                              "or pass --allow_float_fallback to keep the float ops")
        notes.append(shortfall)
    report = {
        "model": model_path, "output": output_path, "target": target, "lce_target": TARGETS[target],
        "names_stripped": strip_names,
        "int8_io": int8_io, "dataset": dataset, "min_agreement": min_agreement, "versions": _versions(),
        "flatbuffer": summary.to_dict(),
        "binarization": {"issues": [str(i) for i in issues], "expected_binary_convs": expected,
                         "converter_messages": messages},
    }
    cost, report["cost_note"] = _cost(model)
    report["cost"] = cost
    reference, source, converted_here = _float_reference(model, float_model, target, use_float_twin, notes,
                                                         strip_names)
    if reference is not None:
        report["float_reference"] = {"source": source, **_ratios(summary, fbs.summarize_flatbuffer(reference))}
        float_path = float_model if not converted_here else stem + "_float.tflite"
        if converted_here:  # keep it: it is the float baseline of deploy/benchmark.py
            with open(float_path, "wb") as f:
                f.write(reference)
        report["float_reference"]["output"] = float_path
    failure = None
    if parity_examples > 0:
        x, y, description = par.parity_batch(dataset, parity_examples, model, preprocess, data_dir)
        result = par.parity_check(model, flatbuffer, x, y, num_threads=num_threads, preprocess=description)
        report["parity"] = result.to_dict()
        try:
            par.require_agreement(result, min_agreement, model)
        except par.ParityError as e:
            failure = e
    else:
        notes.append("parity check skipped (parity_examples=0)")
    report["notes"] = notes
    write_json(stem + ".json", report)
    with open(stem + ".md", "w") as f:
        f.write(markdown_report(report))
    if failure is not None:
        raise failure
    return report
