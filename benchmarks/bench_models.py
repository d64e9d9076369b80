"""CPU throughput of the registered face networks: forward+backward and eval forward, img/s.

    python benchmarks/bench_models.py --batch 16 --threads 2 --repeats 3

For each model of ``facenet.model.list_models()`` (``--models`` to choose): random raw RGB
0..255 batches at the model's input size; a train step is forward + a simple loss +
backward (no optimiser), an eval step is a ``no_grad`` forward.  One untimed warm-up, then
``--repeats`` timed steps, median reported.  Models run interleaved (a, b, c, a, b, c, ...)
so that load from other processes on a shared machine hits all alike;
``--layouts contiguous,channels_last`` adds the NHWC memory format (mkldnn's preferred).  Figures only: the
guide's field notes give ~12 img/s (MobileFaceNet) and ~4 img/s (Inception-ResNet-v1) for
training on this 2-core machine.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main(argv: list[str] | None = None) -> dict:
    import torch

    from facenet import model as fm

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default=",".join(fm.list_models()), help="comma-separated registry names")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--layouts", default="contiguous",
                    help="comma-separated memory formats to compare: contiguous, channels_last")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    formats = {"contiguous": torch.contiguous_format, "channels_last": torch.channels_last}
    nets, inputs = {}, {}
    for name in args.models.split(","):
        for layout in args.layouts.split(","):
            key = name if layout == "contiguous" else f"{name}/{layout}"
            try:
                net = fm.build_model(name)
            except ImportError as e:  # dlib_resnet before facenet/dlib_resnet.py exists
                print(f"skip {name}: {e}")
                break
            s = net.input_size
            nets[key] = net.to(memory_format=formats[layout])
            inputs[key] = (torch.rand(args.batch, 3, s, s) * 255.0).contiguous(memory_format=formats[layout])

    def train_step(name: str) -> float:
        net, x = nets[name].train(), inputs[name]
        t = time.perf_counter()
        net.zero_grad(set_to_none=True)
        net(x).square().sum().backward()
        return time.perf_counter() - t

    def eval_step(name: str) -> float:
        net, x = nets[name].eval(), inputs[name]
        t = time.perf_counter()
        with torch.no_grad():
            net(x)
        return time.perf_counter() - t

    times: dict[tuple[str, str], list[float]] = {}
    for rep in range(args.repeats + 1):
        for name in nets:
            for kind, step in (("train", train_step), ("eval", eval_step)):
                dt = step(name)
                if rep:  # the first round warms up allocators and kernels
                    times.setdefault((name, kind), []).append(dt)

    print(f"batch {args.batch}, torch threads {args.threads}, median of {args.repeats}, torch {torch.__version__}")
    print(f"{'model':36s} {'params':>11s} {'size':>5s} {'fwd+bwd img/s':>14s} {'eval img/s':>11s}")
    out = {}
    for name, net in nets.items():
        tr = args.batch / statistics.median(times[(name, "train")])
        ev = args.batch / statistics.median(times[(name, "eval")])
        out[name] = {"train_img_s": tr, "eval_img_s": ev, "params": fm.count_parameters(net)}
        print(f"{name:36s} {fm.count_parameters(net):11,d} {net.input_size:5d} {tr:14.1f} {ev:11.1f}")
    return out


if __name__ == "__main__":
    main()
