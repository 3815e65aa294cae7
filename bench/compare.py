"""lpt's phase-2 forward against the naive yardstick (``bench/naive.py``), same weights, one process.

    python bench/compare.py [--backbone vit_tiny_patch16_224] [--img 224] [--batch 32] [--repeats 10]

Builds one ``lpt.model.LPT`` (random timm weights, default LPT options: prompt length 10, m = 20,
K = 6, k = 2) in phase 2 and times, interleaved within every repeat (the order alternating from one
repeat to the next, so that slow drifts of a shared machine hit both alike):

- eval: one no-grad forward of a batch (``model.forward_train`` in eval mode, as
  ``lpt.evaluation.evaluate`` calls it) against ``naive_forward_train``;
- train: one phase-2 training step of dual sampling, a class-balanced and an instance-balanced batch
  of ``--batch`` images each, through lpt's LPT method, ``lpt.methods.lpt`` (A-GCL of both streams, key
  loss) or the same method on the naive forward, then backward and an SGD step.

A speedup is naive time / lpt time; each repeat gives one ratio and the median over repeats is
reported. Both the wall clock and the process CPU time are recorded (``--clock`` picks the one
reported as ``eval_speedup`` and ``train_speedup``), and the 1-minute load average at the start and
the end: on a shared machine, other jobs taking a core make every operation wait for the threads it
runs on, a cost per operation that both forwards pay alike, so the ratios shrink. Before timing, the
logits of both forwards on the same images are compared (``max_logit_diff``) and the selected groups
must agree. The last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections.abc import Callable

import torch
from naive import NaiveLPTMethod, naive_forward_train  # bench/naive.py, beside this file

from lpt.config import Config
from lpt.methods import Method, get_method
from lpt.model import LPT, create_backbone


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--backbone", default="vit_tiny_patch16_224", help="timm architecture (random weights)")
    p.add_argument("--img", type=int, default=224)
    p.add_argument("--batch", type=int, default=32, help="images per batch; a training step takes two")
    p.add_argument("--classes", type=int, default=365)
    p.add_argument("--repeats", type=int, default=10, help="interleaved timed repeats")
    p.add_argument("--warmup", type=int, default=1, help="untimed repeats first")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--precision", choices=("fp32", "bf16"), default="fp32")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument("--clock", choices=("wall", "cpu"), default="wall", help="clock of the reported speedups")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def timed(fn: Callable[[], None], device: torch.device) -> tuple[float, float]:
    """(wall seconds, process CPU seconds) of ``fn()``, the device synchronised at both ends."""
    if device.type == "cuda":
        torch.cuda.synchronize()
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - wall, time.process_time() - cpu


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    device = torch.device(args.device)
    backbone, _ = create_backbone(args.backbone, pretrained=False, img_size=args.img)
    model = LPT(backbone, args.classes).to(device)
    model.set_phase(2)
    counts = [max(1, int(500 * 100 ** (-i / (args.classes - 1)))) for i in range(args.classes)]
    gen = torch.Generator().manual_seed(args.seed)
    batches = {s: (torch.randn(args.batch, 3, args.img, args.img, generator=gen).to(device),
                   torch.randint(0, args.classes, (args.batch,), generator=gen).to(device))
               for s in ("balanced", "instance")}
    images = batches["balanced"][0]

    def amp() -> torch.autocast:
        return torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.precision == "bf16")

    model.eval()
    with torch.no_grad(), amp():
        ours, theirs = model.forward_train(images), naive_forward_train(model, images)
    max_logit_diff = (ours["logits"].float() - theirs["logits"].float()).abs().max().item()
    groups_equal = bool(torch.equal(ours["groups"], theirs["groups"]))

    def eval_fn(forward: Callable) -> Callable[[], None]:
        def run() -> None:
            model.eval()
            with torch.no_grad(), amp():
                forward(images)
        return run

    def train_fn(method: Method) -> Callable[[], None]:
        method.to(device)
        params = method.prepare(model, "phase2")
        opt = torch.optim.SGD(params, lr=1e-4, momentum=0.9)

        def run() -> None:
            model.train()
            with amp():
                out = method(model, batches, 0, 10)
            opt.zero_grad(set_to_none=True)
            out["loss"].backward()
            opt.step()
        return run

    cases = {
        "eval_lpt": eval_fn(model.forward_train), "eval_naive": eval_fn(lambda x: naive_forward_train(model, x)),
        "train_lpt": train_fn(get_method("lpt")(Config(), counts)),
        "train_naive": train_fn(NaiveLPTMethod(Config(), counts)),
    }
    load_start = os.getloadavg()[0]
    times: dict[str, list[tuple[float, float]]] = {k: [] for k in cases}
    for r in range(args.warmup + args.repeats):
        for name in (cases if r % 2 == 0 else reversed(cases)):
            t = timed(cases[name], device)
            if r >= args.warmup:
                times[name].append(t)
        if r >= args.warmup:
            line = "  ".join(f"{k} {1e3 * v[-1][0]:.0f}/{1e3 * v[-1][1]:.0f}" for k, v in times.items())
            print(f"repeat {r - args.warmup + 1}/{args.repeats} ms wall/cpu: {line}", file=sys.stderr, flush=True)

    def ratios(mode: str, clock: int) -> list[float]:
        return [n[clock] / f[clock] for n, f in zip(times[f"{mode}_naive"], times[f"{mode}_lpt"])]

    def median_ms(name: str, clock: int) -> float:
        return round(1e3 * statistics.median(t[clock] for t in times[name]), 1)

    c = 0 if args.clock == "wall" else 1
    result = {
        "eval_speedup": round(statistics.median(ratios("eval", c)), 3),
        "train_speedup": round(statistics.median(ratios("train", c)), 3),
        "max_logit_diff": max_logit_diff,
        "groups_equal": groups_equal,
        "clock": args.clock,
        "eval_speedup_wall": round(statistics.median(ratios("eval", 0)), 3),
        "train_speedup_wall": round(statistics.median(ratios("train", 0)), 3),
        "eval_speedup_cpu_time": round(statistics.median(ratios("eval", 1)), 3),
        "train_speedup_cpu_time": round(statistics.median(ratios("train", 1)), 3),
        "median_ms_wall": {k: median_ms(k, 0) for k in cases},
        "median_ms_cpu_time": {k: median_ms(k, 1) for k in cases},
        "backbone": args.backbone, "img": args.img, "batch": args.batch, "train_images_per_step": 2 * args.batch,
        "device": args.device, "precision": args.precision, "threads": torch.get_num_threads(),
        "repeats": args.repeats, "torch": torch.__version__,
        "loadavg_1min": [round(load_start, 2), round(os.getloadavg()[0], 2)],  # at start and end: others' jobs
    }
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
