"""PyTorch's side of bench/compare (run with Debian's python3 and python3-torch).

  torch_peer.py info
  torch_peer.py serve --net keras|torchvision --mode MODE [--batch 32] [--threads 2]
                      [--per-round 2] [--warmup 2]
      MODE: forward (eager), forward-jit (trace + freeze + optimize_for_inference),
      train-head, train-block_11, train-full (Adam, random labels, a new 10-class
      head on the last feature map). The worker protocol of bench/serve.h: a
      {"ready":...} line, then one {"seconds":[...]} line per "round" on stdin.
  torch_peer.py cold --input X.bin            cold start: load, one image, print the top class
  torch_peer.py outputs --input X.bin --batch N --out DIR   out_relu and dense_3, NHWC
  torch_peer.py export --out DIR               ONNX models for ONNX Runtime (see onnx_export.py)

X.bin files hold (N,224,224,3) float32 NHWC values, as graft reads them.
The model is always models/mobilenet_v2 (GRAFT_BENCH_MODEL overrides), channels_last.
"""
import argparse
import json
import os
import sys
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from keras_port import KerasGraph, load_tfjs_weights  # noqa: E402

MODEL_DIR = os.environ.get("GRAFT_BENCH_MODEL", "models/mobilenet_v2")
CHANNELS_LAST = torch.channels_last


def loaded_libraries():
    """Shared objects this process mapped, by real path: which libblas.so.3
    Debian's torch resolved to, and whether jemalloc was preloaded."""
    libs = set()
    with open("/proc/self/maps") as f:
        for line in f:
            parts = line.split()
            if len(parts) >= 6 and ".so" in parts[5]:
                libs.add(parts[5])
    blas = sorted({os.path.realpath(p) for p in libs if "libblas" in p or "openblas" in p})
    return {"blas": blas, "jemalloc": any("jemalloc" in p for p in libs)}


def info():
    torch.ones(8, 8) @ torch.ones(8, 8)
    print(json.dumps({"torch": torch.__version__, "threads": torch.get_num_threads(),
                      "mkldnn": torch.backends.mkldnn.is_available(), **loaded_libraries()}))


def read_input(path, batch):
    x = np.fromfile(path, dtype=np.float32)
    if x.size != batch * 224 * 224 * 3:
        raise SystemExit(f"torch_peer: {path}: expected {batch}x224x224x3 float32 values")
    return torch.from_numpy(x.reshape(batch, 224, 224, 3)).permute(0, 3, 1, 2).contiguous(
        memory_format=CHANNELS_LAST)


def inference_net(net):
    if net == "keras":
        model = KerasGraph(MODEL_DIR)
    else:
        import torchvision
        model = torchvision.models.mobilenet_v2(weights=None)
    return model.eval().to(memory_format=CHANNELS_LAST)


class GlobalAvgPool(nn.Module):
    def forward(self, x):
        return x.mean(dim=(2, 3))


def training_net(net, mode):
    """A new head (pooling, dropout 0.2, 10-way linear) on the last feature map,
    as bench_train builds it; layers below the trained part frozen, with their
    BatchNorm on moving statistics (Keras's behaviour for frozen layers)."""
    if net == "keras":
        base = KerasGraph(MODEL_DIR, output="out_relu")
        names = base.layer_names()
        first = {"head": len(names), "block_11": names.index("block_11_expand"), "full": 0}[mode]
        frozen = [base.layers[n] for n in names[:first] if n in base.layers]
    else:
        import torchvision
        base = torchvision.models.mobilenet_v2(weights=None).features
        # torchvision's features[k + 1] is Keras's block_k (features[1] = expanded_conv).
        first = {"head": len(base), "block_11": 12, "full": 0}[mode]
        frozen = list(base[:first])
    model = nn.Sequential(base, GlobalAvgPool(), nn.Dropout(0.2), nn.Linear(1280, 10))
    model.train()
    for module in frozen:
        module.eval()
        for p in module.parameters():
            p.requires_grad_(False)
    return model.to(memory_format=CHANNELS_LAST)


def forward_runner(net, mode, batch):
    model = inference_net(net)
    x = (torch.rand(batch, 3, 224, 224) * 2 - 1).contiguous(memory_format=CHANNELS_LAST)
    if mode == "forward-jit":
        with torch.no_grad():
            # check_trace would run the model twice more and compare: startup time only.
            traced = torch.jit.trace(model, x, check_trace=False)
            model = torch.jit.optimize_for_inference(torch.jit.freeze(traced))

    def run():
        with torch.inference_mode() if mode == "forward" else torch.no_grad():
            model(x)
    return run


def train_runner(net, mode, batch):
    model = training_net(net, mode.split("-", 1)[1])
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=1e-3)
    gen = torch.Generator().manual_seed(1)
    x = (torch.rand(batch, 3, 224, 224, generator=gen) * 2 - 1).contiguous(
        memory_format=CHANNELS_LAST)
    y = torch.randint(0, 10, (batch,), generator=gen)

    def run():
        optimizer.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        optimizer.step()
    return run


def serve(args):
    torch.set_num_threads(args.threads)
    make = forward_runner if args.mode.startswith("forward") else train_runner
    run = make(args.net, args.mode, args.batch)
    for _ in range(args.warmup):
        run()
    print(json.dumps({"ready": True, "torch": torch.__version__,
                      "threads": torch.get_num_threads(), **loaded_libraries()}), flush=True)
    for line in sys.stdin:
        if not line.startswith("round"):
            break
        seconds = []
        for _ in range(args.per_round):
            t0 = time.perf_counter()
            run()
            seconds.append(time.perf_counter() - t0)
        print(json.dumps({"seconds": seconds}), flush=True)


def cold(args):
    torch.set_num_threads(args.threads)
    x = read_input(args.input, 1)
    model = KerasGraph(MODEL_DIR).eval().to(memory_format=CHANNELS_LAST)
    with torch.inference_mode():
        probs = model(x)[0]
    top = int(torch.argmax(probs))
    print(f"top class {top} prob {float(probs[top]):.4f}", flush=True)


def outputs(args):
    torch.set_num_threads(args.threads)
    x = read_input(args.input, args.batch)
    weights = load_tfjs_weights(MODEL_DIR)
    for layer in ("out_relu", "dense_3"):
        model = KerasGraph(MODEL_DIR, output=layer, weights=weights).eval()
        with torch.inference_mode():
            y = model(x.contiguous())
        if y.dim() == 4:
            y = y.permute(0, 2, 3, 1)
        y.contiguous().numpy().astype(np.float32).tofile(os.path.join(args.out, f"{layer}.bin"))
    print(json.dumps({"batch": args.batch}))


def export(args):
    from onnx_export import export_onnx
    export_onnx(MODEL_DIR, args.out)


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=["info", "serve", "cold", "outputs", "export"])
    parser.add_argument("--net", choices=["keras", "torchvision"], default="keras")
    parser.add_argument("--mode", choices=["forward", "forward-jit", "train-head",
                                           "train-block_11", "train-full"], default="forward")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--per-round", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--input")
    parser.add_argument("--out")
    args = parser.parse_args()
    if args.command in ("cold", "outputs") and not args.input:
        parser.error(f"{args.command} needs --input")
    if args.command in ("outputs", "export") and not args.out:
        parser.error(f"{args.command} needs --out")
    {"info": lambda a: info(), "serve": serve, "cold": cold, "outputs": outputs,
     "export": export}[args.command](args)


if __name__ == "__main__":
    main()
