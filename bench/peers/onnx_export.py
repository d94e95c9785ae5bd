"""Exports the Keras-exact PyTorch port (keras_port.py) to ONNX for ONNX Runtime:
torch.onnx.export at opset 17 with a dynamic batch, then each Pad node that
feeds only a Conv (Keras's one-sided ZeroPadding2D before a stride-2
convolution) is folded into that Conv's pads attribute: ORT does not fold it
and runs the explicit Pad as a separate copy of the activations.

Writes DIR/mobilenet_v2.onnx (input "input" (N,3,224,224), output "probs") and
DIR/mobilenet_v2_check.onnx (the same graph with out_relu as a second output,
for the numerical check), and prints how many Pads were folded.
"""
import json
import os

import numpy as np
import onnx
import torch
import torch.nn as nn
from onnx import helper, mapping, numpy_helper

from keras_port import KerasGraph, load_tfjs_weights


class _WithFeatures(nn.Module):
    """The model's output and out_relu's, from one pass."""

    def __init__(self, model_dir, weights):
        super().__init__()
        self.base = KerasGraph(model_dir, output="out_relu", weights=weights)
        self.full = KerasGraph(model_dir, weights=weights)
        head_start = self.full.layer_names().index("out_relu") + 1
        self.head = self.full.order[head_start:]

    def forward(self, x):
        features = self.base(x)
        y = features
        for name, _ in self.head:
            y = self.full.layers[name](y)
        return y, features


def _attr(node, name, default=None):
    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


def _reshape(data, shape, allowzero):
    shape = [data.shape[i] if d == 0 and not allowzero else int(d) for i, d in enumerate(shape)]
    return data.reshape(shape)


def _slice(data, starts, ends, axes=None, steps=None):
    axes = range(len(starts)) if axes is None else axes
    steps = [1] * len(starts) if steps is None else steps
    index = [slice(None)] * data.ndim
    for s, e, a, k in zip(starts, ends, axes, steps):
        index[int(a)] = slice(int(s), int(e), int(k))
    return data[tuple(index)]


# numpy for the ops torch.onnx.export builds the Pad's pads from: enough to see
# through that subgraph, which its constant folding leaves (it cannot fold a
# Slice with step -1).
_EVAL = {
    "Concat": lambda n, xs: np.concatenate(xs, axis=_attr(n, "axis")),
    "Reshape": lambda n, xs: _reshape(xs[0], xs[1], _attr(n, "allowzero", 0)),
    "Slice": lambda n, xs: _slice(*xs),
    "Transpose": lambda n, xs: np.transpose(xs[0], _attr(n, "perm")),
    "Cast": lambda n, xs: xs[0].astype(mapping.TENSOR_TYPE_TO_NP_TYPE[_attr(n, "to")]),
    "ConstantOfShape": lambda n, xs: np.full(
        [int(d) for d in xs[0]],
        numpy_helper.to_array(_attr(n, "value")).item() if _attr(n, "value") else 0.0,
        dtype=numpy_helper.to_array(_attr(n, "value")).dtype if _attr(n, "value") else np.float32),
}


def _constant_values(graph, name, depth=0):
    """The value of a tensor computed from constants alone, or None."""
    if depth > 32:
        return None
    for init in graph.initializer:
        if init.name == name:
            return numpy_helper.to_array(init)
    node = next((n for n in graph.node if name in n.output), None)
    if node is None:
        return None
    if node.op_type == "Constant":
        return numpy_helper.to_array(_attr(node, "value"))
    if node.op_type not in _EVAL:
        return None
    inputs = [_constant_values(graph, i, depth + 1) if i else None for i in node.input]
    if any(x is None for x, i in zip(inputs, node.input) if i):
        return None
    return _EVAL[node.op_type](node, inputs)


def fold_pads(model):
    """Folds Pad -> Conv pairs into the Conv, and drops Pads that pad nothing
    (torch exports one before AveragePool); returns how many Pads went."""
    graph = model.graph
    graph_outputs = {o.name for o in graph.output}
    readers = {}
    for node in graph.node:
        for name in node.input:
            readers.setdefault(name, []).append(node)
    folded, dead = 0, []
    for pad in [n for n in graph.node if n.op_type == "Pad"]:
        consumers = readers.get(pad.output[0], [])
        if pad.output[0] in graph_outputs:
            continue
        mode = _attr(pad, "mode", b"constant")
        pads = _constant_values(graph, pad.input[1]) if len(pad.input) > 1 else None
        fill = _constant_values(graph, pad.input[2]) if len(pad.input) > 2 and pad.input[2] else 0
        if mode != b"constant" or pads is None or fill is None or np.any(np.asarray(fill) != 0):
            continue
        pads = [int(p) for p in pads]  # begins (N, C, H, W), then ends
        if not any(pads):
            for reader in consumers:
                for k, name in enumerate(reader.input):
                    if name == pad.output[0]:
                        reader.input[k] = pad.input[0]
            dead.append(pad)
            folded += 1
            continue
        if len(consumers) != 1 or consumers[0].op_type != "Conv":
            continue
        conv = consumers[0]
        if len(pads) != 8 or any(pads[i] for i in (0, 1, 4, 5)) or min(pads) < 0:
            continue
        attrs = {a.name: a for a in conv.attribute}
        if "auto_pad" in attrs and attrs["auto_pad"].s not in (b"", b"NOTSET"):
            continue
        old = list(attrs["pads"].ints) if "pads" in attrs else [0, 0, 0, 0]
        new = [old[0] + pads[2], old[1] + pads[3], old[2] + pads[6], old[3] + pads[7]]
        if "pads" in attrs:
            conv.attribute.remove(attrs["pads"])
        conv.attribute.append(helper.make_attribute("pads", new))
        conv.input[0] = pad.input[0]
        dead.append(pad)
        folded += 1
    for pad in dead:
        graph.node.remove(pad)
    _drop_unread(graph)
    return folded


def _drop_unread(graph):
    """Removes the nodes and initializers nothing reads any more (the folded
    Pads' constant subgraphs), until none is left."""
    while True:
        read = {name for node in graph.node for name in node.input} | {o.name for o in graph.output}
        unread = [n for n in graph.node if not any(o in read for o in n.output)]
        for node in unread:
            graph.node.remove(node)
        for init in [i for i in graph.initializer if i.name not in read]:
            graph.initializer.remove(init)
        if not unread:
            return


def _export(module, path, output_names):
    example = torch.rand(1, 3, 224, 224) * 2 - 1
    axes = {"input": {0: "batch"}, **{n: {0: "batch"} for n in output_names}}
    raw = path + ".raw.tmp"
    with torch.no_grad():
        torch.onnx.export(module, example, raw, opset_version=17, input_names=["input"],
                          output_names=output_names, dynamic_axes=axes, do_constant_folding=True)
    model = onnx.load(raw)
    os.remove(raw)
    pads_before = sum(n.op_type == "Pad" for n in model.graph.node)
    folded = fold_pads(model)
    onnx.checker.check_model(model)
    tmp = path + ".tmp"
    onnx.save(model, tmp)
    os.replace(tmp, path)
    return {"pads": pads_before, "folded": folded}


def export_onnx(model_dir, out_dir):
    os.makedirs(out_dir, exist_ok=True)
    weights = load_tfjs_weights(model_dir)
    bench = KerasGraph(model_dir, weights=weights).eval()
    report = {"bench": _export(bench, os.path.join(out_dir, "mobilenet_v2.onnx"), ["probs"])}
    check = _WithFeatures(model_dir, weights).eval()
    report["check"] = _export(check, os.path.join(out_dir, "mobilenet_v2_check.onnx"),
                              ["probs", "out_relu"])
    print(json.dumps(report))
