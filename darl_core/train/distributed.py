"""The training processes: one alone, or several launched by ``accelerate launch`` (one per GPU).

``Processes`` is this process's place among them and the few collectives the RL trainer needs:
rows of a global batch, gathering rewards, averaging gradients once per optimiser step, agreeing
on a stop. Alone, every collective is the identity, so the single-process trainer runs the same
code.
"""

from __future__ import annotations

import os

import torch

__all__ = ["Processes", "resolve_device"]


def resolve_device(name: str) -> torch.device:
    """``auto``: CUDA when there is one, else the CPU; any other name as it is."""
    return torch.device(("cuda" if torch.cuda.is_available() else "cpu") if name == "auto" else name)


class Processes:
    """This process's place among the training processes (an ``accelerate.Accelerator`` when launched
    by ``accelerate launch``; alone otherwise) and the few collectives the trainer needs."""

    def __init__(self, device: str = "auto") -> None:
        multi = int(os.environ.get("WORLD_SIZE", "1")) > 1  # set by accelerate launch / torchrun
        self.acc = None
        if multi:
            from accelerate import Accelerator

            self.acc = Accelerator(cpu=resolve_device(device).type == "cpu")
        self.rank = self.acc.process_index if multi else 0
        self.world = self.acc.num_processes if multi else 1
        self.main = self.rank == 0
        self.device = self.acc.device if multi else resolve_device(device)

    def rows(self, n: int) -> slice:
        """This process's rows of a global batch of ``n``."""
        b = n // self.world
        return slice(self.rank * b, (self.rank + 1) * b)

    def gather(self, x: torch.Tensor) -> torch.Tensor:
        """Concatenate every process's rows, in rank order (= the global batch's order)."""
        return x if self.acc is None else self.acc.gather(x.contiguous())

    def gather_objects(self, items: list) -> list:
        if self.acc is None:
            return items
        from accelerate.utils import gather_object

        return gather_object(items)

    def mean(self, x: torch.Tensor) -> torch.Tensor:
        return x if self.acc is None else self.acc.reduce(x, "mean")

    def average_gradients(self, params: list[torch.nn.Parameter]) -> None:
        # Several forward/backward passes make one optimiser step (each transition, the reference
        # with adapters off, the SFT term), so rather than DDP's per-backward hooks we average the
        # accumulated gradients once per step: one all-reduce of one flat buffer.
        if self.acc is None:
            return
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
        flat = self.mean(torch.cat([g_.flatten() for g_ in grads]))
        for p, g_ in zip(params, torch.split(flat, [g_.numel() for g_ in grads])):
            p.grad = g_.view_as(p).clone()

    def any(self, flag: bool) -> bool:
        """True on every process when it is True on any (stop flags agree)."""
        if self.acc is None:
            return flag
        return bool(self.mean(torch.tensor([float(flag)], device=self.device)) > 0)

    def barrier(self) -> None:
        if self.acc is not None:
            self.acc.wait_for_everyone()
