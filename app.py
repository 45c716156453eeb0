"""DARL app: `make run` (or `.venv/bin/python app.py`).

Starts the store (SQLite under ./data by default, or DARL_DATABASE_URL),
applies migrations, registers the shipped models, starts one job worker
process beside the web server, and serves the Gradio app.

Environment: DARL_DATA_DIR (data folder), DARL_DATABASE_URL (e.g.
postgresql+psycopg://user:pw@host/db), DARL_HOST / DARL_PORT (default
127.0.0.1:7860), DARL_AUTH ("user:password,user2:password2" turns on
login; the user name is recorded on flags and jobs), DARL_NO_WORKER=1 (do not
start a worker here, e.g. when workers run on GPU machines).
"""

from __future__ import annotations

import atexit
import os
import subprocess
import sys

from darl_core.loading import SHIPPED_MODELS, card_evaluation
from storage import Store, StoreUnavailable
from ui import AppContext, build_app


def register_shipped(store: Store) -> None:
    """Register the shipped models with the numbers their cards report (a parent before its children)."""
    ids: dict[str, int] = {}
    for m in sorted(SHIPPED_MODELS, key=lambda m: m.parent is not None):
        ids[m.name] = store.register_checkpoint(str(m.path), m.name, parent_id=ids.get(m.parent or ""),
                                                evaluation=card_evaluation(m.path))


def start_worker() -> subprocess.Popen[bytes]:
    proc = subprocess.Popen([sys.executable, "-m", "darl_core.worker"], env=os.environ.copy())
    atexit.register(proc.terminate)
    return proc


def main() -> None:
    try:
        store = Store()
    except StoreUnavailable as e:
        sys.exit(f"error: {e}\nCheck DARL_DATABASE_URL, or unset it to use the embedded SQLite database.")
    register_shipped(store)
    if os.environ.get("DARL_NO_WORKER") != "1":
        start_worker()
    precision = os.environ.get("DARL_PRECISION", "auto")
    if precision not in ("auto", "fp32", "bf16"):
        sys.exit(f"error: DARL_PRECISION must be auto, fp32 or bf16, got {precision!r}")
    demo = build_app(AppContext(store, precision=precision))
    demo.queue(default_concurrency_limit=1, max_size=64)
    auth = None
    if os.environ.get("DARL_AUTH"):
        auth = [tuple(pair.split(":", 1)) for pair in os.environ["DARL_AUTH"].split(",") if ":" in pair]
    # DARL_HOST/PORT first, then Gradio's own GRADIO_SERVER_NAME/PORT, then local-only defaults.
    host = os.environ.get("DARL_HOST") or os.environ.get("GRADIO_SERVER_NAME") or "127.0.0.1"
    port = os.environ.get("DARL_PORT") or os.environ.get("GRADIO_SERVER_PORT") or "7860"
    demo.launch(server_name=host, server_port=int(port), auth=auth, max_file_size="25mb")


if __name__ == "__main__":
    main()
