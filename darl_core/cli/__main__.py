"""``python -m darl_core.cli``: the ``darl`` command."""

import sys

from .main import main

sys.exit(main())
