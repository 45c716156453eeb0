"""The defaults of a restore that a command's ``--help`` shows (kept here, so it imports nothing heavy)."""

__all__ = ["DEFAULT_STEPS", "DEFAULT_TILE"]

DEFAULT_STEPS = 2  # DDIM steps of the app and CLI: 0 = stage 1 alone (most faithful); more steps add detail and cost fidelity (docs/quality)
DEFAULT_TILE = 256  # tile side of the app and CLI for large images (bench/cpu_speed.py measured the choice)
