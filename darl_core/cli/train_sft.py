"""CLI of the supervised fine-tuning (see darl_core.train.sft for the trainer and its presets).

    darl train-sft --preset cpu --output runs/sft
    darl train-sft --preset gpu --output runs/sft --hq-folder ~/DIV2K/train
    darl train-sft --output runs/sft --resume      # continue from runs/sft/latest
"""

from __future__ import annotations

import argparse

from .config_args import add_config_args, config_from_args

__all__ = ["main"]


def main(argv: list[str] | None = None) -> None:
    from ..train.sft import PRESETS, SFTConfig, train_sft

    ap = argparse.ArgumentParser(prog="darl train-sft", description="SFT of the DARL restorer on synthetic "
                                 "degradations.")
    ap.add_argument("--preset", default="default", choices=sorted(PRESETS))
    ap.add_argument("--resume", action="store_true", help="continue from OUTPUT/latest")
    add_config_args(ap, SFTConfig)
    args = ap.parse_args(argv)
    try:
        cfg = config_from_args(PRESETS[args.preset](), args)
    except ValueError as e:  # the config's own checks (SFTConfig.__post_init__), before any model loads
        ap.error(str(e))
    print(f"model written to {train_sft(cfg, resume=args.resume)}")


if __name__ == "__main__":
    main()
