"""How close the shipped networks' convolutions run to the CPU's arithmetic peak.

    .venv/bin/python bench/cpu_roofline.py [--model models/sft-blind] [--side 256] [--repeats 5] [--no-tiles]

For each network of the model (stage 1, the denoiser) at one ``side`` x ``side`` tile, in the layout
the CLI and the app use (``set_precision("auto")``): the FLOPs of one forward pass by operator
(``torch.utils.flop_counter``), the median wall time of the pass, and the time torch's profiler
attributes to the convolutions; then the convolutions' achieved GFLOP/s against a nominal fp32 peak of
``threads x flops_per_cycle x MHz`` (``--flops-per-cycle`` 32 = two 256-bit FMA units, AVX2 CPUs such
as AMD Zen and Intel Haswell onwards; 64 for two AVX-512 FMA units; MHz read from /proc/cpuinfo, the
current clock, which turbo can exceed). A ratio near 1 says the layers are compute-bound at the CPU's
peak: only fewer FLOPs (a cheaper network, fewer or smaller tiles, fewer steps) or a faster number
format (bf16 on CPUs that compute it natively) can make them faster.

Then the cost per pixel of both networks at tile shapes from 128 to 384 px (median of ``--repeats``):
where it is flat, a tile can grow to cover an image with fewer, larger tiles (``tiling.STRETCH``).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cpu_speed import median_time
from darl_core.models.loading import load_restorer


def cpu_mhz() -> float | None:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("cpu MHz"):
                return float(line.split(":")[1])
    except OSError:
        pass
    return None


def measure_time(fn: Callable[[], object], repeats: int) -> float:
    with torch.inference_mode():
        return median_time(fn, repeats)  # after one warm-up call


def measure(name: str, fn: Callable[[], object], repeats: int) -> dict[str, float]:
    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        fn()
    flops = {str(k).replace("aten.", ""): v for k, v in counter.get_flop_counts()["Global"].items()}
    wall = measure_time(fn, repeats)  # the warm-up call lets oneDNN pick and cache its kernels
    with torch.inference_mode(), profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    conv_s = sum(e.self_cpu_time_total for e in prof.key_averages()
                 if "convolution" in e.key and e.key.startswith("aten::mkldnn")) / 1e6
    conv_s = conv_s or sum(e.self_cpu_time_total for e in prof.key_averages() if "conv" in e.key) / 1e6
    total = sum(flops.values())
    return {"network": name, "gflop": total / 1e9, "conv_gflop": flops.get("convolution", 0.0) / 1e9,
            "wall_s": wall, "conv_s": conv_s}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="models/sft-blind")
    ap.add_argument("--side", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--no-tiles", action="store_true", help="skip the cost-per-pixel table")
    ap.add_argument("--flops-per-cycle", type=int, default=32, help="fp32 FLOPs per cycle per core (see above)")
    args = ap.parse_args()
    pipe = load_restorer(args.model)
    pipe.set_precision("auto")
    threads, mhz = torch.get_num_threads(), cpu_mhz()
    print(f"torch {torch.__version__}, {threads} threads, CPU capability {torch.backends.cpu.get_cpu_capability()}, "
          f"{mhz} MHz")
    x = torch.rand(1, 3, args.side, args.side)
    t0 = torch.zeros(1, dtype=torch.long)
    rows = [measure("denoiser (one step)", lambda: pipe.predict(x, 500, x), args.repeats)]
    if pipe.has_stage1:
        s1_in = x.contiguous(memory_format=torch.channels_last)
        rows.insert(0, measure("stage 1", lambda: pipe.stage1(s1_in, t0), args.repeats))
    peak = threads * args.flops_per_cycle * mhz / 1e3 if mhz else None
    print(f"\n{args.model}, one {args.side}x{args.side} tile, fp32 as `set_precision('auto')` runs it here")
    print(f"nominal peak: {threads} threads x {args.flops_per_cycle} FLOP/cycle x {mhz} MHz = "
          f"{peak:.0f} GFLOP/s" if peak else "nominal peak: unknown (no /proc/cpuinfo MHz)")
    print("\n| network | GFLOP (conv) | wall s | conv s | conv GFLOP/s | of the nominal peak |")
    print("|---|---:|---:|---:|---:|---:|")
    for r in rows:
        rate = r["conv_gflop"] / r["conv_s"] if r["conv_s"] else float("nan")
        share = f"{rate / peak:.0%}" if peak else "—"
        print(f"| {r['network']} | {r['gflop']:.1f} ({r['conv_gflop']:.1f}) | {r['wall_s']:.3f} | {r['conv_s']:.3f} "
              f"| {rate:.0f} | {share} |")
    if args.no_tiles:
        return
    print("\ncost per pixel by tile shape (one pass, median)\n")
    print("| tile (h x w) | denoiser s | denoiser us/px | stage 1 s | stage 1 us/px |")
    print("|---|---:|---:|---:|---:|")
    for h, w in [(128, 128), (192, 192), (256, 256), (272, 256), (288, 256), (320, 256), (320, 320), (384, 384)]:
        xt = torch.rand(1, 3, h, w)
        times = [measure_time(lambda: pipe.predict(xt, 500, xt), args.repeats)]  # noqa: B023
        if pipe.has_stage1:
            s1 = xt.contiguous(memory_format=torch.channels_last)
            times.append(measure_time(lambda: pipe.stage1(s1, t0), args.repeats))  # noqa: B023
        cells = " | ".join(f"{t:.3f} | {t / (h * w) * 1e6:.2f}" for t in times)
        print(f"| {h} x {w} | {cells} |", flush=True)


if __name__ == "__main__":
    main()
