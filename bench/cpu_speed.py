"""CPU inference speed, before and after the precision/layout/tile settings, measured in one run.

    .venv/bin/python bench/cpu_speed.py                       # everything (~10 min on 2 cores)
    .venv/bin/python bench/cpu_speed.py --big 800x600 --tiles 256 512 --repeats 2   # quicker look

"Before" is the code path as it was: fp32, default memory layout, 256-px tiles (a freshly loaded
model without ``set_precision``). "After" is what the CLI and the app do now:
``set_precision("auto")`` (channels-last on CPUs; bf16 autocast only where the CPU has native bf16),
the default tile size, and tiles stretched by up to ``tiling.STRETCH`` where that saves work ("before":
tiles of exactly the tile size). Sections:

1. one forward pass of each shipped network at 256x256 in fp32 / channels-last / bf16 autocast
   (bf16 is emulated, and slow, on CPUs without AVX512-BF16 or AMX: shown so the choice is visible),
   and one training step of each at its CPU training shape in fp32 and bf16 autocast;
2. the app's Restore handler on a 256x256 upload: both shipped models (SFT and RL), warm, default steps;
3. one model on a large photo (default 1600x1200) at the default steps, model load included, as the
   CLI does it; and a tile-size sweep that the default tile was chosen from.

With ``--before-models SFT RL`` the "before" rows run those model folders (an earlier release, e.g.
``git archive <rev> models | tar -x -C /tmp/old``) with the old settings, so a change of the shipped
models is measured too (``--before-models models/sft-blind models/darl-blind``: the default pair
before 2026-11-29); ``--after-models SFT RL`` runs other folders in the "after" rows (a model that is
shipped but not the default). Medians over ``--repeats``; ratios are before / after from the same run. Writes a JSON next to the
printout when ``--json`` is given.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from darl_core.data.clean import builtin_image
from darl_core.data.degrade import degrade, get_preset
from darl_core.data.images import pil_to_tensor, save_tensor, tensor_to_pil
from darl_core.models.loading import DEFAULT_MODEL, load_restorer
from darl_core.models.pipeline import DEFAULT_STEPS, DEFAULT_TILE, STAGE1_CACHE
from darl_core.models import tiling
from darl_core.models.restorer import cpu_bf16_supported
from darl_core.models.tiling import STRETCH


def median_time(fn: Callable[[], object], repeats: int, warm: int = 1) -> float:
    for _ in range(warm):
        fn()
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts)


def forward_table(repeats: int, bf16_rows: bool = True) -> list[dict[str, object]]:
    rows = []
    pipe = load_restorer(DEFAULT_MODEL)
    u = pipe.unshuffle  # the ``fast`` denoiser sees 256x256 as 128x128 with 4x the channels
    from darl_core.models.pipeline import build_unet

    nets = [("sft-blind stage 1", pipe.stage1, 3, 256),
            ("sft-blind denoiser", pipe.unet, pipe.unet.config.in_channels, 256 // u)]
    for size in ("small", "fast"):  # the denoiser architectures (fresh weights: the cost is the same)
        net = build_unet(size).eval()
        side = 256 // math.isqrt(net.config.in_channels // 6)  # `fast` sees 256x256 unshuffled: 128x128
        nets.append((f"`{size}` denoiser", net, net.config.in_channels, side))
    for name, net, cin, side in nets:
        x = torch.randn(1, cin, side, side)
        t = torch.zeros(1, dtype=torch.long)
        modes = ("fp32", "fp32, channels-last", "bf16 autocast", "bf16 autocast, channels-last")
        if name.startswith("`") or not bf16_rows:
            modes = modes[:2]  # the architectures compared where they would run here
        for mode in modes:
            cl = "channels-last" in mode
            net.to(memory_format=torch.channels_last if cl else torch.contiguous_format)
            xx = x.contiguous(memory_format=torch.channels_last) if cl else x
            bf16 = mode.startswith("bf16")
            reps = repeats if (not bf16 or cpu_bf16_supported()) else 1  # emulated bf16: once is enough to see it

            def fwd() -> None:
                with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):  # noqa: B023
                    net(xx, t)  # noqa: B023
            rows.append({"network": name, "mode": mode, "seconds": median_time(fwd, reps)})
            print(f"  {name:20s} {mode:30s} {rows[-1]['seconds']:.3f} s", flush=True)
    return rows


def train_table(repeats: int) -> list[dict[str, object]]:
    """One optimiser step (forward, backward, AdamW) of each network at its CPU training shape."""
    from darl_core.models.pipeline import build_stage1

    shipped = load_restorer(DEFAULT_MODEL)
    denoiser = type(shipped.unet).from_config(shipped.unet.config)  # the shipped architecture, fresh weights
    u = shipped.unshuffle
    rows = []
    for name, net, cin, batch, side in (("stage 1, batch 12 x 96 px", build_stage1("small"), 3, 12, 96),
                                        ("denoiser, batch 12 x 96 px", denoiser, 6 * u * u, 12, 96 // u)):
        opt = torch.optim.AdamW(net.parameters(), 1e-5)
        x, t = torch.randn(batch, cin, side, side), torch.zeros(batch, dtype=torch.long)
        for mode in ("fp32", "bf16 autocast"):
            bf16 = mode != "fp32"

            def step() -> None:
                with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):  # noqa: B023
                    loss = net(x, t).sample.float().abs().mean()  # noqa: B023
                opt.zero_grad()  # noqa: B023
                loss.backward()
                opt.step()  # noqa: B023
            reps = repeats if (not bf16 or cpu_bf16_supported()) else 1
            rows.append({"network": name, "mode": mode, "seconds": median_time(step, reps)})
            print(f"  {name:28s} {mode:15s} {rows[-1]['seconds']:.3f} s", flush=True)
    return rows


def app_path(repeats: int, steps: int, before_models: tuple[str, str] | None = None,
             after_models: tuple[str, str] | None = None) -> dict[str, float]:
    from storage import Store
    from ui.context import SHIPPED_RL, AppContext
    from ui.restore_service import restore

    tmp = Path(tempfile.mkdtemp(prefix="darl-speed-"))
    hq = pil_to_tensor(builtin_image("coffee.png"))[None, :, :256, :256]
    save_tensor(degrade(hq, get_preset("blind"), torch.Generator().manual_seed(0))[0], tmp / "lq.png")
    out = {}
    shipped = (str(DEFAULT_MODEL), str(SHIPPED_RL))
    for label in ("before", "after"):
        # max_kept_pixels 0: every call restores (the app reuses the restorations of a repeated request)
        ctx = AppContext(Store(directory=tmp / f"data-{label}"), max_kept_pixels=0)
        models = (before_models if label == "before" else after_models) or shipped
        if label == "before":  # the models as the app loaded them before set_precision existed
            for p in models:
                ctx._models[p] = load_restorer(p)
        tile = 256 if label == "before" else DEFAULT_TILE
        def run() -> None:  # a new upload each time: nothing left in the stage-1 cache from the last one
            STAGE1_CACHE.clear()
            tiling.STRETCH = 0.0 if label == "before" else STRETCH  # noqa: B023
            restore(ctx, str(tmp / "lq.png"), steps=steps, tile=tile, sft_model=models[0], rl_model=models[1])  # noqa: B023
        out[label] = median_time(run, repeats)
        print(f"  app, both models, 256x256, {steps} steps, {label}: {out[label]:.2f} s", flush=True)
    return out


def big_image(size: tuple[int, int], steps: int, tiles: list[int | None], repeats: int,
              before_model: str | None = None, after_model: str | None = None) -> dict[str, object]:
    w, h = size
    photo = pil_to_tensor(builtin_image("coffee.png"))[None]
    hq = torch.nn.functional.interpolate(photo, size=(h, w), mode="bicubic", align_corners=False).clamp(0, 1)
    im = tensor_to_pil(degrade(hq, get_preset("blind"), torch.Generator().manual_seed(0))[0])
    res: dict[str, object] = {}

    def cli(after: bool, tile: int | None) -> None:  # what `python -m darl_core.cli.restore` does, minus imports
        STAGE1_CACHE.clear()
        tiling.STRETCH = STRETCH if after else 0.0  # before: tiles of exactly the tile size
        pipe = load_restorer((after_model or DEFAULT_MODEL) if after else (before_model or DEFAULT_MODEL))
        if after:
            pipe.set_precision("auto")
        pipe(im, num_inference_steps=steps, tile_size=tile)
    res["before"] = median_time(lambda: cli(False, 256), repeats, warm=0)
    print(f"  {w}x{h}, {steps} steps, before (fp32, tile 256): {res['before']:.1f} s", flush=True)
    res["after"] = median_time(lambda: cli(True, DEFAULT_TILE), repeats, warm=0)
    print(f"  {w}x{h}, {steps} steps, after (auto, tile {DEFAULT_TILE}): {res['after']:.1f} s", flush=True)
    sweep = {}
    pipe = load_restorer(after_model or DEFAULT_MODEL)
    pipe.set_precision("auto")
    for tile in tiles:
        if tile == DEFAULT_TILE:
            continue
        STAGE1_CACHE.clear()
        sweep[str(tile)] = median_time(lambda: pipe(im, num_inference_steps=steps, tile_size=tile), 1, warm=0)  # noqa: B023
        print(f"  {w}x{h}, {steps} steps, after, tile {tile}: {sweep[str(tile)]:.1f} s", flush=True)
    res["tile_sweep"] = sweep
    tiling.STRETCH = 0.0  # the "after" settings with tiles of exactly the tile size: what stretching saves
    STAGE1_CACHE.clear()
    res["after_unstretched"] = median_time(lambda: pipe(im, num_inference_steps=steps, tile_size=DEFAULT_TILE), 1,
                                           warm=0)
    tiling.STRETCH = STRETCH
    print(f"  {w}x{h}, {steps} steps, after, tile {DEFAULT_TILE} not stretched: {res['after_unstretched']:.1f} s "
          f"(model loaded)", flush=True)
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--steps", type=int, default=DEFAULT_STEPS)
    ap.add_argument("--big", default="1600x1200", help="WxH of the large-image test")
    ap.add_argument("--big-repeats", type=int, default=1)
    ap.add_argument("--tiles", nargs="*", default=["256", "384", "512", "none"], help="tile sizes to sweep")
    ap.add_argument("--skip", nargs="*", default=[], choices=["forward", "train", "app", "big"])
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--no-bf16-rows", action="store_true", help="skip the bf16 forward rows (minutes where emulated)")
    ap.add_argument("--before-models", nargs=2, default=None, metavar=("SFT", "RL"),
                    help="model folders of the 'before' rows (default: the shipped ones), e.g. an earlier "
                         "release extracted with git archive")
    ap.add_argument("--after-models", nargs=2, default=None, metavar=("SFT", "RL"),
                    help="model folders of the 'after' rows (default: the shipped ones), e.g. "
                         "models/sft-blind-fast models/darl-blind")
    args = ap.parse_args()
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU capability "
          f"{torch.backends.cpu.get_cpu_capability()}, native bf16: {cpu_bf16_supported()}")
    report: dict[str, object] = {"threads": torch.get_num_threads(), "native_bf16": cpu_bf16_supported(),
                                 "steps": args.steps, "default_tile": DEFAULT_TILE,
                                 "before_models": args.before_models, "after_models": args.after_models}
    if "forward" not in args.skip:
        print("1. one forward pass at 256x256 (median)")
        report["forward"] = forward_table(args.repeats, not args.no_bf16_rows)
    if "train" not in args.skip:
        print("1b. one training step (forward + backward + AdamW), median")
        report["train"] = train_table(args.repeats)
    if "app" not in args.skip:
        print("2. the app's Restore handler (median, warm)")
        app = app_path(args.repeats, args.steps, args.before_models, args.after_models)
        report["app"] = app | {"ratio": app["before"] / app["after"]}
        print(f"  ratio before/after: {report['app']['ratio']:.2f}x")
    if "big" not in args.skip:
        print("3. one model on a large image, model load included")
        w, h = (int(v) for v in args.big.lower().split("x"))
        tiles = [None if t == "none" else int(t) for t in args.tiles]
        big = big_image((w, h), args.steps, tiles, args.big_repeats,
                        args.before_models[0] if args.before_models else None,
                        args.after_models[0] if args.after_models else None)
        report["big"] = big | {"size": args.big, "ratio": big["before"] / big["after"]}
        print(f"  ratio before/after: {report['big']['ratio']:.2f}x")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
