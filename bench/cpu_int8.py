"""Is int8 a lever for the denoiser on this CPU? Static post-training quantisation of its convolutions.

    .venv/bin/python bench/cpu_int8.py [--model models/sft-blind] [--side 256] [--repeats 5] [--crops 8]

On a CPU without native bf16 (AVX2 only) fp32 convolutions already run at ~90 % of the arithmetic
peak (``bench/cpu_roofline.py``), so a narrower number format is the one kernel-level lever left:
fbgemm's int8 convolutions (u8 activations x s8 weights) do twice the multiply-adds per AVX2
instruction. This script swaps every ``Conv2d`` of the model's denoiser for a quantised one (weights
per output channel, activations per tensor with scales from min/max observed on the training
validation crops at the sampler's timesteps; GroupNorm, SiLU and attention stay fp32, so every
convolution quantises its input and dequantises its output) and reports, against the fp32 network in
the layout the CLI uses (``set_precision("auto")``):

1. each convolution shape alone, fp32 against int8 (median of ``--repeats``);
2. the whole denoiser's forward pass at ``side`` x ``side`` (median of ``--repeats``);
3. the default 2-step restoration of the validation crops (``darl_core.data.clean.validation_set``, not the
   evaluation set): PSNR against the ground truth, and PSNR of int8 against fp32.

It is a measurement, not a shipped mode: nothing in darl_core quantises.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import torch.ao.nn.quantized as nnq
from torch.ao.quantization import MinMaxObserver

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from cpu_speed import median_time

from darl_core.data.clean import validation_set
from darl_core.models.loading import load_restorer
from darl_core.rewards.registry import get_metric


class Int8Conv(torch.nn.Module):
    """A Conv2d that observes its input and output ranges until ``convert()``, then runs in int8."""

    def __init__(self, conv: torch.nn.Conv2d) -> None:
        super().__init__()
        self.conv = conv
        self.obs_in = MinMaxObserver(dtype=torch.quint8)
        self.obs_out = MinMaxObserver(dtype=torch.quint8)
        self.q: nnq.Conv2d | None = None
        self.fp32 = False  # True: converted, but kept in fp32 (where int8 is slower)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.fp32:
            return self.conv(x)
        if self.q is None:
            y = self.conv(x)
            self.obs_in(x.detach())
            self.obs_out(y.detach())
            return y
        s, z = self.in_qparams
        return self.q(torch.quantize_per_tensor(x.float(), s, z, torch.quint8)).dequantize()

    def convert(self) -> None:
        c = self.conv
        q = nnq.Conv2d(c.in_channels, c.out_channels, c.kernel_size, c.stride, c.padding, c.dilation, c.groups,
                       c.bias is not None)
        w = c.weight.detach().float()
        scale = (w.abs().amax(dim=(1, 2, 3)) / 127).clamp_min(1e-8)
        qw = torch.quantize_per_channel(w, scale, torch.zeros_like(scale, dtype=torch.long), 0, torch.qint8)
        q.set_weight_bias(qw, None if c.bias is None else c.bias.detach().float())
        s, z = self.obs_out.calculate_qparams()
        q.scale, q.zero_point = float(s), int(z)
        s, z = self.obs_in.calculate_qparams()
        self.in_qparams = (float(s), int(z))
        self.q = q


def wrap_convs(net: torch.nn.Module) -> list[Int8Conv]:
    """Replace every Conv2d under ``net`` by an observing ``Int8Conv``; returns the wrappers."""
    out = []
    for mod in list(net.modules()):
        for cname, child in list(mod.named_children()):
            if isinstance(child, torch.nn.Conv2d):
                w = Int8Conv(child)
                setattr(mod, cname, w)
                out.append(w)
    return out


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="models/sft-blind")
    ap.add_argument("--side", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--crops", type=int, default=8)
    ap.add_argument("--steps", type=int, default=2)
    args = ap.parse_args(argv)
    torch.backends.quantized.engine = "fbgemm" if "fbgemm" in torch.backends.quantized.supported_engines else "x86"
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, quantised engine "
          f"{torch.backends.quantized.engine}")

    pipe = load_restorer(args.model)
    pipe.set_precision("auto")
    lq, hq = validation_set("realistic", args.crops)
    psnr = get_metric("psnr")

    def restore() -> torch.Tensor:
        return pipe.restore_tensor(lq, args.steps, generator=torch.Generator().manual_seed(0)).clamp(0, 1)

    with torch.no_grad():
        ref = restore()
        x = torch.randn(1, pipe.unet.config.in_channels, args.side // pipe.unshuffle, args.side // pipe.unshuffle)
        x = x.contiguous(memory_format=torch.channels_last)
        t = torch.tensor([499])
        t_fp32 = median_time(lambda: pipe.unet(x, t), args.repeats)

        wrappers = wrap_convs(pipe.unet)
        shapes: dict[tuple, list] = {}  # one (module, input) per distinct shape
        seen: dict[Int8Conv, tuple] = {}  # every convolution's shape

        def record(m: Int8Conv, a: tuple) -> None:
            seen[m] = (m.conv.in_channels, m.conv.out_channels, m.conv.kernel_size[0], tuple(a[0].shape[2:]))
            shapes.setdefault(seen[m], [m, a[0]])
        hooks = [w.register_forward_pre_hook(record) for w in wrappers]
        pipe.unet(x, t)
        for h in hooks:
            h.remove()
        restore()  # calibration: the activation ranges of the 2-step restorations of the crops
        for w in wrappers:
            w.convert()
        t_int8 = median_time(lambda: pipe.unet(x, t), args.repeats)
        out = restore()

        print(f"\n1. convolutions at {args.side}x{args.side} (cin, cout, k, h x w): fp32 ms / int8 ms (with "
              "quantise + dequantise)")
        rows, slower = [], set()
        for key, (m, a) in sorted(shapes.items()):
            cin, cout, k, hw = key
            a = a.float().contiguous(memory_format=torch.channels_last)
            f = median_time(lambda m=m, a=a: m.conv(a), args.repeats)
            i = median_time(lambda m=m, a=a: m(a), args.repeats)
            rows.append({"shape": [cin, cout, k, list(hw)], "fp32_s": f, "int8_s": i})
            print(f"   {cin:4d} {cout:4d} {k} {hw[0]:4d}x{hw[1]:<4d} {f * 1e3:7.2f} / {i * 1e3:7.2f}  {f / i:4.2f}x")
            if i >= f:
                slower.add(key)
        # The best case for speed: int8 only where it is faster (shapes as seen at this side).
        for w, key in seen.items():
            w.fp32 = key in slower
        t_mixed = median_time(lambda: pipe.unet(x, t), args.repeats)
        out_mixed = restore()
    p_ref = float(psnr(ref, hq).mean())
    p_int8 = float(psnr(out, hq).mean())
    p_vs = float(psnr(out, ref).mean())
    p_mixed = float(psnr(out_mixed, hq).mean())
    print(f"\n2. denoiser forward {args.side}x{args.side}, median of {args.repeats}: fp32 {t_fp32:.3f} s, "
          f"int8 {t_int8:.3f} s, {t_fp32 / t_int8:.2f}x; int8 only where faster ({len(seen) - sum(w.fp32 for w in seen)} "
          f"of {len(seen)} convolutions) {t_mixed:.3f} s, {t_fp32 / t_mixed:.2f}x")
    print(f"3. {args.steps}-step restoration of {args.crops} validation crops: PSNR fp32 {p_ref:.3f} dB, "
          f"int8 {p_int8:.3f} dB ({p_int8 - p_ref:+.3f}), int8 where faster {p_mixed:.3f} dB ({p_mixed - p_ref:+.3f}); "
          f"int8 against fp32 {p_vs:.2f} dB")
    return {"fp32_s": t_fp32, "int8_s": t_int8, "int8_where_faster_s": t_mixed, "psnr_int8_where_faster": p_mixed, "psnr_fp32": p_ref, "psnr_int8": p_int8, "psnr_vs_fp32": p_vs,
            "convs": rows}


if __name__ == "__main__":
    main()
