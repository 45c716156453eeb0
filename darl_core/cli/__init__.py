"""The command line: ``darl <command>`` (``main.py``) and config flags generated from a dataclass
(``config_args.py``, one ``--flag`` per field, its comment as the help)."""

from .config_args import add_config_args, config_from_args

__all__ = ["add_config_args", "config_from_args"]
