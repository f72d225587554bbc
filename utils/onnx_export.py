"""ONNX export of MXNet symbols (`mx.onnx.export_model`) and onnxruntime sessions.

DESIGN.md §2: mxnet 1.9.1's exporter needs onnx < 1.19 and writes opset-13 nodes, but it stamps
the model with onnx's newest opset and checks the graph against it, so ops whose signature
changed later (Split and ReduceMean take inputs instead of attributes from opset 18) make
onnxruntime refuse the file. Both the stamped opset (`onnx.defs.onnx_opset_version`) and the
checker's opset are forced to 13 while exporting.
"""
import contextlib
import io
import os

import numpy as np

from utils.checkpoint import atomic_write
from utils.errors import UserError

OPSET = 13


@contextlib.contextmanager
def forced_opset(version=OPSET):
    """Make the onnx package report opset `version` (exporter and checker) inside the block."""
    try:
        import onnx
        import onnx.checker
    except ImportError:
        raise UserError("ONNX export needs the onnx package (pip install -c constraints.txt 'onnx<1.19')")
    saved_version = onnx.defs.onnx_opset_version
    saved_imports = onnx.checker.DEFAULT_CONTEXT.opset_imports
    onnx.defs.onnx_opset_version = lambda: version
    onnx.checker.DEFAULT_CONTEXT.opset_imports = {"": version}
    try:
        yield
    finally:
        onnx.defs.onnx_opset_version = saved_version
        onnx.checker.DEFAULT_CONTEXT.opset_imports = saved_imports


def export_onnx(sym, params, input_shapes, path, metadata=None):
    """Write `sym` with `params` ({name: NDArray}) to `path` atomically; float32 inputs of
    `input_shapes` (one static shape per input, in sym.list_inputs() order); `metadata` {key: str}
    goes into the model's metadata_props. Returns `path`.

    The exporter lists every weight as a graph input too, which makes onnxruntime treat them as
    overridable (no constant folding, one warning per weight); they are removed from the inputs.
    """
    import mxnet as mx

    def write(tmp):
        # redirect_stdout: the exporter prints the name of every reversed scalar op (1 - x).
        with forced_opset(), contextlib.redirect_stdout(io.StringIO()):
            mx.onnx.export_model(sym, params, [tuple(s) for s in input_shapes],
                                 [np.float32] * len(input_shapes), tmp)
        import onnx      # present: forced_opset checked
        model = onnx.load(tmp)
        weights = {t.name for t in model.graph.initializer}
        inputs = [i for i in model.graph.input if i.name not in weights]
        del model.graph.input[:]
        model.graph.input.extend(inputs)
        for key, value in (metadata or {}).items():
            entry = model.metadata_props.add()
            entry.key, entry.value = key, value
        onnx.save(model, tmp)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    atomic_write(path, write)
    return path


def ort_session(path, threads=None):
    """onnxruntime InferenceSession on CPU with `threads` intra-op threads (None = one per core
    this process may use) and warnings silenced (errors still raise)."""
    try:
        import onnxruntime as ort
    except ImportError:
        raise UserError("this needs the onnxruntime package (pip install -c constraints.txt onnxruntime)")
    options = ort.SessionOptions()
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    options.intra_op_num_threads = threads or cores
    options.log_severity_level = 3
    return ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
