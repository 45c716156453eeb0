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

from darl_core.pipeline import DEFAULT_MODEL
from storage import Store, StoreUnavailable
from ui import AppContext, build_app
from ui.context import SHIPPED_RL


def register_shipped(store: Store) -> None:
    sft = store.register_checkpoint(str(DEFAULT_MODEL), "sft-blind")
    store.register_checkpoint(str(SHIPPED_RL), "darl-blind", parent_id=sft,
                              evaluation={"psnr": 27.996, "ssim": 0.7785, "niqe": 5.535, "piqe": 15.87})


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
    demo = build_app(AppContext(store))
    demo.queue(default_concurrency_limit=1, max_size=64)
    auth = None
    if os.environ.get("DARL_AUTH"):
        auth = [tuple(pair.split(":", 1)) for pair in os.environ["DARL_AUTH"].split(",") if ":" in pair]
    demo.launch(server_name=os.environ.get("DARL_HOST", "127.0.0.1"),
                server_port=int(os.environ.get("DARL_PORT", "7860")), auth=auth, max_file_size="25mb")


if __name__ == "__main__":
    main()
