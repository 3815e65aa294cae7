"""Throughput, peak memory and FLOPs of one lpt method: prints one JSON line.

    python bench/throughput.py --method {linear,vpt,lpt1,lpt2,full,adaptformer,lora,ssf,bitfit,lpt_adaptformer1,
                                         lpt_adaptformer2} --mode {train,eval} \
        --backbone vit_base_patch16_224 --img 224 --batch 64 --device {cpu,cuda} --precision {fp32,bf16} [--compile]

The model is the library's own (``lpt.run.load.build_run_model``) built from the method's Places-LT
preset (LIFT's for the PEFT modules; head, loss, dropout, sampling as in a real run), on the named
timm architecture with random weights (``pretrained=False``) and random images already on the
device, so data loading is not measured. A train step is what ``lpt.engine.step.TrainStep`` does per
iteration: the method's forward and loss (``lpt.methods``), backward, SGD step; lpt1 and lpt2 use dual sampling, so a
step takes two batches of ``--batch`` images (class-balanced + instance-balanced), the baselines one.
The linear probe's step includes the frozen forward that gives its features (lpt caches those once
per run, so this is its cost per image when the features are computed).

Reported: ``images_per_s`` (median over timed steps after warm-up), ``peak_mem_mb``
(``torch.cuda.max_memory_allocated`` on GPU; on CPU the peak resident set of a fresh process that
builds the model and runs the steps, ``ru_maxrss``, next to ``base_rss_mb``, its resident set once
the model is built), ``fwd_gflop_per_image`` (counted with ``torch.utils.flop_counter``), the
counted FLOPs of one step and the FLOP rate achieved.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable

import torch
from torch.utils.flop_counter import FlopCounterMode, sdpa_backward_flop_count, sdpa_flop_count

from lpt.config import load_config
from lpt.methods import get_method
from lpt.run.load import build_run_model

# method -> (preset, phase, overrides)
METHODS = {
    "linear": ("linear_places_lt", 1, []),
    "vpt": ("vpt_deep_places_lt", 1, []),
    "lpt1": ("places_lt", 1, []),
    "lpt2": ("places_lt", 2, []),
    "full": ("full_places_lt", 1, []),
    "adaptformer": ("lift_places_lt", 1, []),  # LIFT's recipe
    "lora": ("lift_places_lt", 1, ["model.peft=[lora]"]),
    "ssf": ("lift_places_lt", 1, ["model.peft=[ssf]"]),
    "bitfit": ("lift_places_lt", 1, ["model.peft=[bitfit]"]),
    "lpt_adaptformer1": ("lpt_adaptformer_places_lt", 1, []),
    "lpt_adaptformer2": ("lpt_adaptformer_places_lt", 2, []),
}


def _sdpa_cpu_flops(q, k, v, *args, out_val=None, **kwargs) -> int:
    return sdpa_flop_count(q.shape, k.shape, v.shape)


def _sdpa_cpu_backward_flops(grad_out, q, k, v, *args, out_val=None, **kwargs) -> int:
    return sdpa_backward_flop_count(grad_out.shape, q.shape, k.shape, v.shape)


_sdpa_cpu_flops._get_raw = _sdpa_cpu_backward_flops._get_raw = True
# torch's counter knows the GPU attention kernels but not the CPU flash kernel F.scaled_dot_product_attention uses
CPU_ATTENTION_FLOPS = {
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _sdpa_cpu_flops,
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward: _sdpa_cpu_backward_flops,
}


def count_flops(fn: Callable[[], object], model: torch.nn.Module, no_grad: bool) -> int:
    """FLOPs of ``fn()``. Under no_grad the parameters are frozen while counting: the counter's module
    hooks reject the views that no_grad makes of parameters which require grad."""
    flags = [(p, p.requires_grad) for p in model.parameters()]
    if no_grad:
        model.requires_grad_(False)
    try:
        with FlopCounterMode(display=False, custom_mapping=CPU_ATTENTION_FLOPS) as counter:
            fn()
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)
    return counter.get_total_flops()


def longtail_counts(num_classes: int, n_max: int = 500, ratio: float = 100.0) -> list[int]:
    return [max(1, int(n_max * ratio ** (-i / max(1, num_classes - 1)))) for i in range(num_classes)]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--method", choices=METHODS, required=True)
    p.add_argument("--mode", choices=("train", "eval"), required=True)
    p.add_argument("--backbone", default="vit_base_patch16_224", help="timm architecture (random weights)")
    p.add_argument("--img", type=int, default=224)
    p.add_argument("--batch", type=int, default=64, help="images per batch (a dual-sampling step takes two)")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--precision", choices=("fp32", "bf16"), default="fp32")
    p.add_argument("--compile", action="store_true", help="torch.compile the model's forward")
    p.add_argument("--classes", type=int, default=365, help="number of classes (Places-LT: 365)")
    p.add_argument("--steps", type=int, default=10, help="timed steps")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps first (compilation, allocator, caches)")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def build(args: argparse.Namespace):
    """The preset's config, the model on the device, the method and the step function to time."""
    preset, phase, overrides = METHODS[args.method]
    cfg = load_config(preset, [f"model.backbone={args.backbone}", "model.pretrained=false", "model.checkpoint=",
                               f"model.backbone_args={{img_size: {args.img}}}", f"data.img_size={args.img}",
                               *overrides])
    pcfg = getattr(cfg, f"phase{phase}")
    device = torch.device(args.device)
    counts = longtail_counts(args.classes)
    model, _ = build_run_model(cfg, args.classes)
    model.to(device)
    method = get_method(cfg.method)(cfg, counts).to(device)
    params = method.prepare(model, f"phase{phase}")
    streams = ("balanced", "instance") if pcfg.sampling == "dual" else (pcfg.sampling,)
    gen = torch.Generator().manual_seed(0)
    batches = {s: (torch.randn(args.batch, 3, args.img, args.img, generator=gen).to(device),
                   torch.randint(0, args.classes, (args.batch,), generator=gen).to(device)) for s in streams}

    def amp() -> torch.autocast:
        return torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.precision == "bf16")

    if args.mode == "eval":
        images = torch.cat([x for x, _ in batches.values()])[: args.batch]

        def step() -> None:
            with torch.no_grad(), amp():
                model.forward_train(images)

        model.eval()
        return cfg, model, params, step, args.batch

    opt = torch.optim.SGD(params, lr=1e-4, momentum=pcfg.momentum, weight_decay=pcfg.weight_decay)

    def step() -> None:
        step_batches = batches
        with amp():
            if method.features:  # its inputs are the frozen model's features
                with torch.no_grad():
                    step_batches = {s: (model.forward_features(x)["feature"].float(), y)
                                    for s, (x, y) in batches.items()}
            out = method(model, step_batches, 0, pcfg.epochs)
        opt.zero_grad(set_to_none=True)
        out["loss"].backward()
        opt.step()

    model.train()
    method.train()
    return cfg, model, params, step, args.batch * len(batches)


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def vm_kb(field: str) -> int:
    """A ``/proc/self/status`` memory field (VmRSS, VmHWM) in KiB; 0 where there is none."""
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def measure(args: argparse.Namespace) -> dict:
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    load_start = os.getloadavg()[0]
    cfg, model, params, step, images_per_step = build(args)
    base_rss_mb = vm_kb("VmRSS") / 1024
    # FLOPs are counted on the eager model, before any compilation: one step, and one eval forward.
    step_flops = count_flops(step, model, no_grad=args.mode == "eval")
    was_training = model.training
    model.eval()
    images = torch.randn(args.batch, 3, args.img, args.img, device=args.device)
    with torch.no_grad(), torch.autocast(args.device, dtype=torch.bfloat16, enabled=args.precision == "bf16"):
        fwd_flops = count_flops(lambda: model.forward_train(images), model, no_grad=True) / args.batch
    model.train(was_training)
    if args.compile:
        model.forward_features = torch.compile(model.forward_features)
        model.forward_train = torch.compile(model.forward_train)
    if args.device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    for _ in range(args.warmup):
        step()
    _sync(args.device)
    times = []
    for _ in range(args.steps):
        start = time.perf_counter()
        step()
        _sync(args.device)
        times.append(time.perf_counter() - start)
    peak = torch.cuda.max_memory_allocated() / 2**20 if args.device == "cuda" else None
    seconds = statistics.median(times)
    return {
        "method": args.method, "mode": args.mode, "backbone": args.backbone, "img": args.img, "batch": args.batch,
        "images_per_step": images_per_step, "device": args.device, "precision": args.precision,
        "compile": args.compile, "threads": torch.get_num_threads(), "steps": args.steps, "warmup": args.warmup,
        "images_per_s": round(images_per_step / seconds, 2), "step_ms_median": round(1e3 * seconds, 2),
        "step_ms_min": round(1e3 * min(times), 2), "step_ms_max": round(1e3 * max(times), 2),
        "peak_mem_mb": None if peak is None else round(peak, 1),
        "peak_mem_kind": "torch.cuda.max_memory_allocated" if args.device == "cuda" else "ru_maxrss of a fresh process",
        "base_rss_mb": None if args.device == "cuda" else round(base_rss_mb, 1),
        "fwd_gflop_per_image": round(fwd_flops / 1e9, 4),
        "step_gflop": round(step_flops / 1e9, 3),
        "achieved_gflop_per_s": round(step_flops / seconds / 1e9, 2),
        "trainable_params": sum(p.numel() for p in params),
        "prompt_len": cfg.model.prompt_len, "head": cfg.model.head, "loss": cfg.loss.name,
        "torch": torch.__version__,
        "loadavg_1min": [round(load_start, 2), round(os.getloadavg()[0], 2)],  # at start and end: others' jobs
    }


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    if args.device == "cpu" and not args.child:
        # Peak resident memory must be that of a process doing only this: measure in a fresh child.
        proc = subprocess.run([sys.executable, os.path.abspath(__file__), *argv, "--child"], stdout=subprocess.PIPE,
                              text=True, check=False)
        if proc.returncode != 0:
            return proc.returncode
        result = json.loads(proc.stdout.strip().splitlines()[-1])
        result["peak_mem_mb"] = round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024, 1)
    else:
        result = measure(args)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
