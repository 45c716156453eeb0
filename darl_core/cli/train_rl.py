"""CLI of the RL fine-tuning (see darl_core.train.rl for the method).

    python -m darl_core.cli.train_rl --preset darl --base-model models/sft-blind --output runs/darl
    python -m darl_core.cli.train_rl --preset rl_uniform --output runs/rl_uniform
    python -m darl_core.cli.train_rl --preset darl --output runs/darl --resume
    python -m darl_core.cli.train_rl --preset darl --samples-file flagged.json   # the app's hard samples

Several processes (one per GPU; gloo on CPUs) through accelerate:

    accelerate launch --multi_gpu --num_processes 4 -m darl_core.cli.train_rl --preset darl \\
        --base-model stabilityai/stable-diffusion-x4-upscaler --task sr4 --lora-rank 16 --output runs/sdx4
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from .config_args import add_config_args, config_from_args
from ..train.rl import PRESETS, RLConfig, train_rl

__all__ = ["main"]


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description="Difficulty-adaptive RL fine-tuning of a DARL restorer.")
    ap.add_argument("--preset", default="darl", choices=sorted(PRESETS),
                    help="the method or an ablation: darl, sft, rl_uniform, rl_gt_reward (tiny_test for tests)")
    ap.add_argument("--config", type=Path, default=None,
                    help="a JSON file of RLConfig fields (applied over the preset; flags override it)")
    ap.add_argument("--resume", action="store_true", help="continue exactly from OUTPUT/latest")
    add_config_args(ap, RLConfig)
    args = ap.parse_args(argv)
    cfg = PRESETS[args.preset]()
    if args.config is not None:
        try:
            cfg = RLConfig.from_dict(json.loads(args.config.read_text()), cfg)
        except ValueError as e:
            ap.error(f"{args.config}: {e}")
    path = train_rl(config_from_args(cfg, args), resume=args.resume)
    print(f"model written to {path}")


if __name__ == "__main__":
    main()
