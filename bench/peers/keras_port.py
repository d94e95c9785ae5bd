"""A PyTorch copy of a Keras functional model saved in the TF.js layers format
(model.json + weight shards), with its weights: the same graph graft runs, so
that the benchmark compares engines and not networks.

Keras semantics kept: BatchNormalization with the layer's epsilon (1e-3 in
MobileNetV2), ReLU with max_value (ReLU6), one-sided ZeroPadding2D before the
stride-2 convolutions, 'same' padding of the stride-1 ones, Flatten in NHWC
order. Tensors are NCHW as PyTorch wants; the caller chooses the memory format.
Only the layer kinds MobileNetV2 and its nsfwjs head use are mapped; any other
kind raises, naming the layer.
"""
import json
import os

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

# Bytes per stored value, by TF.js dtype.
_STORED = {"uint8": np.uint8, "uint16": np.uint16, "float16": np.float16,
           "float32": np.float32, "int32": np.int32}


def load_tfjs_weights(model_dir):
    """Returns {weight name: float32 array} from model.json's weightsManifest,
    dequantised as TF.js's io.decodeWeights does: q * scale + min for uint8 and
    uint16 quantisation (computed in doubles, stored as float32), a plain
    conversion for float16."""
    with open(os.path.join(model_dir, "model.json")) as f:
        manifest = json.load(f)["weightsManifest"]
    weights = {}
    for group in manifest:
        blob = b"".join(open(os.path.join(model_dir, p), "rb").read() for p in group["paths"])
        offset = 0
        for spec in group["weights"]:
            count = int(np.prod(spec["shape"], dtype=np.int64))
            quant = spec.get("quantization")
            stored = _STORED[quant["dtype"] if quant else spec["dtype"]]
            raw = np.frombuffer(blob, dtype=stored, count=count, offset=offset)
            offset += count * np.dtype(stored).itemsize
            if quant and quant["dtype"] in ("uint8", "uint16"):
                values = raw.astype(np.float64) * quant["scale"] + quant["min"]
            else:
                values = raw
            weights[spec["name"]] = values.astype(np.float32).reshape(spec["shape"])
        if offset != len(blob):
            raise ValueError(f"{model_dir}: weight group {group['paths']} holds {len(blob)} bytes, "
                             f"the manifest describes {offset}")
    return weights


def _activation(name):
    table = {"linear": None, "relu": nn.ReLU(), "relu6": nn.ReLU6(),
             "softmax": nn.Softmax(dim=1), "sigmoid": nn.Sigmoid()}
    if name not in table:
        raise ValueError(f"activation '{name}' is not mapped")
    return table[name]


def _same_padding(cfg):
    """Symmetric padding of a stride-1 'same' convolution (odd kernels only:
    stride 2 'same' pads one-sidedly, which MobileNetV2 does with ZeroPadding2D)."""
    if cfg["padding"] == "valid":
        return 0
    k, s = cfg["kernel_size"], cfg["strides"]
    d = cfg.get("dilation_rate", [1, 1])
    if s != [1, 1] or k[0] % 2 == 0 or k[1] % 2 == 0:
        raise ValueError(f"layer {cfg['name']}: 'same' padding with strides {s}, kernel {k} "
                         "is one-sided and not mapped")
    return (d[0] * (k[0] - 1) // 2, d[1] * (k[1] - 1) // 2)


class _Conv(nn.Module):
    """Conv2D or DepthwiseConv2D with a fused Keras activation."""

    def __init__(self, cfg, weights, depthwise):
        super().__init__()
        name = cfg["name"]
        kernel = weights[f"{name}/depthwise_kernel" if depthwise else f"{name}/kernel"]
        kh, kw, cin, mult = kernel.shape  # HWIO; depthwise: H, W, C, multiplier
        if depthwise:
            # Keras orders the outputs of input channel c as c*multiplier + m.
            torch_w = kernel.reshape(kh, kw, cin * mult).transpose(2, 0, 1)[:, None]
            cout, groups = cin * mult, cin
        else:
            torch_w = kernel.transpose(3, 2, 0, 1)
            cout, groups = mult, 1
        self.conv = nn.Conv2d(cin, cout, (kh, kw), stride=tuple(cfg["strides"]),
                              padding=_same_padding(cfg),
                              dilation=tuple(cfg.get("dilation_rate", [1, 1])),
                              groups=groups, bias=cfg["use_bias"])
        with torch.no_grad():
            self.conv.weight.copy_(torch.from_numpy(np.ascontiguousarray(torch_w)))
            if cfg["use_bias"]:
                self.conv.bias.copy_(torch.from_numpy(weights[f"{name}/bias"]))
        self.act = _activation(cfg.get("activation", "linear"))

    def forward(self, x):
        x = self.conv(x)
        return self.act(x) if self.act is not None else x


def _batch_norm(cfg, weights):
    name, channels = cfg["name"], weights[f"{cfg['name']}/moving_mean"].shape[0]
    if cfg.get("axis", -1) not in (-1, 3, [3], [-1]):
        raise ValueError(f"layer {name}: BatchNormalization over axis {cfg['axis']} is not mapped")
    bn = nn.BatchNorm2d(channels, eps=cfg["epsilon"], momentum=1.0 - cfg["momentum"])
    with torch.no_grad():
        bn.running_mean.copy_(torch.from_numpy(weights[f"{name}/moving_mean"]))
        bn.running_var.copy_(torch.from_numpy(weights[f"{name}/moving_variance"]))
        if cfg.get("scale", True):
            bn.weight.copy_(torch.from_numpy(weights[f"{name}/gamma"]))
        if cfg.get("center", True):
            bn.bias.copy_(torch.from_numpy(weights[f"{name}/beta"]))
    return bn


class _Relu(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        if cfg.get("negative_slope", 0) or cfg.get("threshold", 0):
            raise ValueError(f"layer {cfg['name']}: leaky or thresholded ReLU is not mapped")
        self.max_value = cfg.get("max_value")

    def forward(self, x):
        if self.max_value is None:
            return F.relu(x)
        return F.hardtanh(x, 0.0, float(self.max_value))


class _ZeroPad(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        (top, bottom), (left, right) = cfg["padding"]
        self.pads = (left, right, top, bottom)

    def forward(self, x):
        return F.pad(x, self.pads)


class _Flatten(nn.Module):
    """Keras flattens NHWC; the NCHW tensor is put in that order first."""

    def forward(self, x):
        if x.dim() == 4:
            x = x.permute(0, 2, 3, 1)
        return torch.flatten(x, 1)


class _Dense(nn.Module):
    def __init__(self, cfg, weights):
        super().__init__()
        kernel = weights[f"{cfg['name']}/kernel"]
        self.linear = nn.Linear(kernel.shape[0], kernel.shape[1], bias=cfg["use_bias"])
        with torch.no_grad():
            self.linear.weight.copy_(torch.from_numpy(np.ascontiguousarray(kernel.T)))
            if cfg["use_bias"]:
                self.linear.bias.copy_(torch.from_numpy(weights[f"{cfg['name']}/bias"]))
        self.act = _activation(cfg.get("activation", "linear"))

    def forward(self, x):
        x = self.linear(x)
        return self.act(x) if self.act is not None else x


class _GlobalAvgPool(nn.Module):
    def forward(self, x):
        return x.mean(dim=(2, 3))


def _make_layer(class_name, cfg, weights):
    if class_name == "Conv2D":
        return _Conv(cfg, weights, depthwise=False)
    if class_name == "DepthwiseConv2D":
        return _Conv(cfg, weights, depthwise=True)
    if class_name == "BatchNormalization":
        return _batch_norm(cfg, weights)
    if class_name == "ReLU":
        return _Relu(cfg)
    if class_name == "ZeroPadding2D":
        return _ZeroPad(cfg)
    if class_name == "AveragePooling2D":
        if cfg["padding"] != "valid":
            raise ValueError(f"layer {cfg['name']}: 'same' average pooling is not mapped")
        return nn.AvgPool2d(tuple(cfg["pool_size"]), tuple(cfg["strides"]))
    if class_name == "GlobalAveragePooling2D":
        return _GlobalAvgPool()
    if class_name == "Flatten":
        return _Flatten()
    if class_name == "Dense":
        return _Dense(cfg, weights)
    if class_name == "Dropout":
        return nn.Dropout(cfg["rate"])
    if class_name == "Activation":
        act = _activation(cfg["activation"])
        return act if act is not None else nn.Identity()
    raise ValueError(f"layer {cfg['name']}: Keras class {class_name} is not mapped")


class KerasGraph(nn.Module):
    """The Keras functional graph up to `output` (default: the model's output),
    layer by layer in model.json's (topological) order."""

    def __init__(self, model_dir, output=None, weights=None):
        super().__init__()
        with open(os.path.join(model_dir, "model.json")) as f:
            config = json.load(f)["modelTopology"]["model_config"]["config"]
        weights = weights if weights is not None else load_tfjs_weights(model_dir)
        output = output or config["output_layers"][0][0]
        self.layers = nn.ModuleDict()
        self.order = []  # (name, input names)
        for layer in config["layers"]:
            cfg, name = layer["config"], layer["config"]["name"]
            inputs = [n[0] for n in layer["inbound_nodes"][0]] if layer["inbound_nodes"] else []
            if layer["class_name"] == "InputLayer":
                self.input_name = name
            elif layer["class_name"] == "Add":
                self.order.append((name, inputs))
            else:
                self.layers[name] = _make_layer(layer["class_name"], cfg, weights)
                self.order.append((name, inputs))
            if name == output:
                break
        else:
            raise ValueError(f"{model_dir}: no layer '{output}'")
        self.output_name = output
        # Each value is dropped after its last reader, as an engine frees it.
        last_use = {}
        for step, (_, inputs) in enumerate(self.order):
            for i in inputs:
                last_use[i] = step
        self.drop_after = [sorted({i for i in inputs if last_use[i] == step})
                           for step, (_, inputs) in enumerate(self.order)]

    def layer_names(self):
        return [name for name, _ in self.order]

    def forward(self, x):
        values = {self.input_name: x}
        for (name, inputs), drop in zip(self.order, self.drop_after):
            args = [values[i] for i in inputs]
            if name in self.layers:
                values[name] = self.layers[name](*args)
            else:
                total = args[0]
                for a in args[1:]:
                    total = total + a
                values[name] = total
            for i in drop:
                if i != name:
                    del values[i]
        return values[self.output_name]
