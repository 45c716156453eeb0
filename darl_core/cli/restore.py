"""Restore one image or a folder of images.

    python -m darl_core.cli.restore IN.png OUT.png [--model PATH_OR_ID] [--steps N] [--seed 0]
    python -m darl_core.cli.restore IN_DIR OUT_DIR --model models/darl-blind
    python -m darl_core.cli.restore IN.png OUT.png --steps 0 --self-ensemble   # the most faithful setting

The default model is the shipped SFT model (models/sft-blind-fast; models/sft-blind is its
slower teacher). Outputs keep
the input's mode family (grey stays grey, alpha is carried over) and are
written as PNG when the output suffix is not an image format.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from typing import TYPE_CHECKING

from ..models.defaults import DEFAULT_STEPS, DEFAULT_TILE

if TYPE_CHECKING:
    from PIL import Image


def _target(out: Path) -> Path:
    from ..data.images import IMAGE_SUFFIXES

    return out if out.suffix.lower() in IMAGE_SUFFIXES else out.with_suffix(".png")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Restore images with a DARL restorer.")
    ap.add_argument("input", type=Path, help="an image file or a folder of images")
    ap.add_argument("output", type=Path, help="output file (for a file input) or folder")
    ap.add_argument("--model", default=None, help="model folder or Hugging Face id (default: models/sft-blind-fast)")
    ap.add_argument("--steps", type=int, default=DEFAULT_STEPS,
                    help="DDIM steps (more: more detail, fewer: more faithful; 0: stage 1 alone, two-stage models; "
                         "default %(default)s)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--eta", type=float, default=0.0, help="DDIM eta (0: deterministic given the seed)")
    ap.add_argument("--tile", type=int, default=DEFAULT_TILE, help="tile size for large images (multiple of 8; in "
                    "latent pixels for latent models; a tile grows by up to 25%% when fewer tiles then cover "
                    "the image with less work)")
    ap.add_argument("--tile-overlap", type=int, default=32, help="overlap of neighbouring tiles")
    ap.add_argument("--self-ensemble", action="store_true",
                    help="with --steps 0: average stage 1 over the 8 rotations and mirror images of the input "
                         "(8x stage 1's time; the most faithful setting, +0.17 dB on the evaluation set)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16"],
                    help="inference arithmetic: auto = bf16 autocast where the CPU (AVX512-BF16/AMX) or GPU "
                         "runs it natively, else fp32; channels-last on CPUs either way")
    args = ap.parse_args(argv)
    # torch, diffusers and the model load only now: --help and a wrong flag answer at once
    from tqdm.auto import tqdm

    from ..data.images import IMAGE_SUFFIXES, ImageError, load_image
    from ..models.loading import ModelLoadError, load_restorer

    if args.self_ensemble and args.steps != 0:  # before loading anything
        print(f"error: --self-ensemble applies to stage 1 alone (--steps 0): averaging 8 diffusion samples would "
              f"average away the detail they add; got --steps {args.steps}", file=sys.stderr)
        return 2
    first: Image.Image | None = None  # a single input file is read before the model loads: a bad file fails at once
    if not args.input.is_dir():
        try:
            first = load_image(args.input)
        except ImageError as e:
            print(f"error: {args.input}: {e}", file=sys.stderr)
            return 1
    try:
        pipe = load_restorer(args.model, args.device)
        pipe.set_precision(args.precision)
    except ModelLoadError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.input.is_dir():
        files = sorted(p for p in args.input.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            print(f"error: no images in {args.input}", file=sys.stderr)
            return 2
        jobs = [(p, args.output / (p.stem + ".png")) for p in files]
    else:
        jobs = [(args.input, _target(args.output))]
    failed = 0
    for src, dst in tqdm(jobs, desc="restore", unit="img", disable=len(jobs) == 1):
        try:
            im = first if first is not None else load_image(src)
        except ImageError as e:
            tqdm.write(f"skipped {src}: {e}", file=sys.stderr)  # above the progress bar, not inside it
            failed += 1
            continue
        try:
            out = pipe(im, num_inference_steps=args.steps, eta=args.eta, seed=args.seed, tile_size=args.tile,
                       tile_overlap=args.tile_overlap, progress=len(jobs) == 1,
                       self_ensemble=args.self_ensemble)[0]
        except ValueError as e:  # a bad tile or steps setting: the same for every image
            print(f"error: {e}", file=sys.stderr)
            return 2
        dst.parent.mkdir(parents=True, exist_ok=True)
        out.save(dst)
    done = len(jobs) - failed
    where = jobs[0][1] if len(jobs) == 1 else args.output
    print(f"restored {done} image{'s' if done != 1 else ''} with {getattr(pipe, 'source', args.model)}, "
          f"{args.steps} steps -> {where}" + (f" ({failed} skipped)" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
