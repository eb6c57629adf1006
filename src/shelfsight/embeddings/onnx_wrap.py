"""A user's ONNX file (``onnx:`` backbones) wrapped into extraction's graph contract: ``pixels`` uint8
``(B, 3, H, W)`` in, L2-normalised float32 ``embedding`` out, the declared preprocessing inside the graph.

So the runtimes and the service run it exactly as they run an export of a PyTorch backbone (ONNX Runtime,
OpenVINO, the service's ONNX encoder), checked against the PyTorch path (``backbones.onnx_model``, the same file
with the preprocessing done in torch) by the usual agreement rule. The wrapper adds standard operators only
(Cast, Div, Sub, Gather, Transpose, Flatten, LpNormalization), at the graph's own opset.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from shelfsight.backbones import Backbone

PREFIX = "shelfsight_"
WRAP_VERSION = 2
"""Part of an ``onnx:`` export's cache key: bump when the wrapper's graph changes (2: no second L2 normalisation
of a graph that ends normalised)."""


class WrapError(ValueError):
    """The graph cannot be wrapped (several image inputs, a fixed batch): the PyTorch path runs it instead."""


def wrap_onnx(backbone: Backbone, target: Path) -> None:
    """Write ``backbone``'s ONNX file wrapped with its preprocessing and L2 normalisation to ``target``."""
    import onnx

    model = onnx.load(backbone.spec.checkpoint)
    graph = model.graph
    weights = {tensor.name for tensor in graph.initializer}
    inputs = [i for i in graph.input if i.name not in weights]
    if len(inputs) != 1:
        raise WrapError(f"{len(inputs)} graph inputs; one image input is needed")
    image = inputs[0]
    dims = image.type.tensor_type.shape.dim
    if dims and dims[0].HasField("dim_value") and dims[0].dim_value == 1:
        raise WrapError("the graph's batch is fixed at 1")
    output = backbone.spec.onnx_output or graph.output[0].name
    inner_in, inner_out = f"{PREFIX}input", f"{PREFIX}features"
    unit = _ends_normalised(graph, output)
    _rename(graph, image.name, inner_in)
    _rename(graph, output, inner_out)
    pre_nodes, pre_weights = _preprocessing(backbone, image.type.tensor_type.elem_type, inner_in)
    post_nodes = [onnx.helper.make_node("Cast", [inner_out], [f"{PREFIX}f32"], to=onnx.TensorProto.FLOAT),
                  onnx.helper.make_node("Flatten", [f"{PREFIX}f32"], [f"{PREFIX}flat"], axis=1),
                  onnx.helper.make_node("Identity", [f"{PREFIX}flat"], ["embedding"]) if unit else
                  onnx.helper.make_node("LpNormalization", [f"{PREFIX}flat"], ["embedding"], axis=1, p=2)]
    nodes = [*pre_nodes, *graph.node, *post_nodes]
    del graph.node[:]
    graph.node.extend(nodes)
    graph.initializer.extend(pre_weights)
    graph.input.remove(next(i for i in graph.input if i.name == inner_in))
    size = backbone.preprocess.input_size
    graph.input.insert(0, onnx.helper.make_tensor_value_info("pixels", onnx.TensorProto.UINT8,
                                                              ["batch", 3, size, size]))
    del graph.output[:]
    graph.output.append(onnx.helper.make_tensor_value_info("embedding", onnx.TensorProto.FLOAT, ["batch", None]))
    onnx.save(model, str(target))


NORM_PATH_OPS = {"Clip", "Max", "Expand", "Unsqueeze", "Reshape", "Cast", "Identity", "Add"}
"""Operators between a norm and the division by it in an exported ``F.normalize`` (clamp, broadcast)."""


def _ends_normalised(graph: object, output: str) -> bool:
    """Whether ``output`` is already L2-normalised by the graph (its last node an ``LpNormalization`` with p=2, or a
    division by a ``ReduceL2``, as torch exports ``F.normalize``; a shelfsight export ends so). Normalising twice
    moves values by ~1e-8 and can swap near-tied neighbours, so such a graph is left to give its own vectors."""
    producer = {name: node for node in graph.node for name in node.output}  # type: ignore[attr-defined]
    last = producer.get(output)
    if last is None:
        return False
    if last.op_type == "LpNormalization":
        return all(a.i == 2 for a in last.attribute if a.name == "p")
    if last.op_type != "Div" or len(last.input) != 2:
        return False
    node = producer.get(last.input[1])
    while node is not None and node.op_type in NORM_PATH_OPS:
        node = producer.get(node.input[0]) if node.input else None
    return node is not None and node.op_type == "ReduceL2" and node.input[0] == last.input[0]


def _rename(graph: object, old: str, new: str) -> None:
    """Every reference to tensor ``old`` in the graph (nodes, inputs, outputs, shapes) now says ``new``."""
    for node in graph.node:  # type: ignore[attr-defined]
        node.input[:] = [new if name == old else name for name in node.input]
        node.output[:] = [new if name == old else name for name in node.output]
    for info in (*graph.input, *graph.output, *graph.value_info):  # type: ignore[attr-defined]
        if info.name == old:
            info.name = new


def _preprocessing(backbone: Backbone, elem_type: int, result: str) -> tuple[list[object], list[object]]:
    """Nodes from uint8 ``pixels`` to the graph's input ``result``: extraction's ``normalize_pixels`` (skipped for a
    graph that takes uint8 pixels itself), then the declared channel order and layout."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    preprocess = backbone.preprocess
    nodes: list[object] = []
    weights: list[object] = []
    current = "pixels"

    def step(op: str, *extra: str, **attrs: Any) -> None:
        nonlocal current
        out = f"{PREFIX}{len(nodes)}"
        nodes.append(helper.make_node(op, [current, *extra], [out], **attrs))
        current = out

    def constant(name: str, values: np.ndarray) -> str:
        weights.append(numpy_helper.from_array(values, f"{PREFIX}{name}"))
        return f"{PREFIX}{name}"

    if preprocess.channel_order == "bgr":
        step("Gather", constant("bgr", np.array([2, 1, 0], np.int64)), axis=1)
    if elem_type != TensorProto.UINT8:
        shape = (1, 3, 1, 1)
        step("Cast", to=TensorProto.FLOAT)
        step("Div", constant("scale", np.array(255.0, np.float32)))
        step("Sub", constant("mean", np.asarray(preprocess.mean, np.float32).reshape(shape)))
        step("Div", constant("std", np.asarray(preprocess.std, np.float32).reshape(shape)))
        if elem_type != TensorProto.FLOAT:
            step("Cast", to=elem_type)
    if preprocess.layout == "nhwc":
        step("Transpose", perm=[0, 2, 3, 1])
    nodes.append(onnx.helper.make_node("Identity", [current], [result]))
    return nodes, weights
