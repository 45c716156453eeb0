"""Background job worker: claims queued fine-tune jobs from the store and runs the RL trainer.

    python -m darl_core.jobs.worker                 # loop forever (the run command starts one)
    python -m darl_core.jobs.worker --once          # run at most one job, then exit

A job with ``processes`` > 1 trains through ``accelerate launch`` with that many
processes (one per GPU; ``launch.train_in_processes``, which knows nothing of the
store), watched by the worker: rounds are read from the run's metrics log, and
cancelling creates the run's stop file.

A job's config holds ``preset`` (darl, sft, rl_uniform, rl_gt_reward) and
any RLConfig fields; its frozen ``sample_ids`` are the training pool. The
worker writes the pool as a samples file, trains into
``{data_dir}/jobs/{id}/`` and reports through the trainer's callbacks:
progress, metrics and a log line per round, a heartbeat (also from a
background thread, since a round can outlast the stale timeout), and the
cancel flag as the trainer's stop flag. The final model folder is written
atomically by the trainer and registered as a Checkpoint, child of the base
model, with its last validation numbers.

Running jobs whose heartbeat is older than ``--stale-after`` seconds (ten
missed heartbeats, 30 s: their worker died) are re-queued at start and then
every ``--stale-after``/3 seconds while the worker polls, and resume exactly
from their last checkpoint (``--fail-stale``: failed instead). The jobs of a
worker known dead (``--dead-worker ID``: the app's supervisor names the
worker it restarts) are taken back at once, whatever their heartbeat.
A worker stopped with SIGTERM or Ctrl-C hands its job back at once (queued
again, to resume from its last checkpoint) before it exits.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import sys
import threading
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from storage import IllegalTransition, Job, JobLost, Store

from ..train.checkpoint import latest_checkpoint
from .launch import train_in_processes
from ..evaluation.evaluate import heldout_check
from ..data.images import load_rgb, pil_to_tensor, save_tensor
from ..models.loading import DEFAULT_MODEL, load_restorer
from ..evaluation.payoff import SUMMARY_TERMS, PayoffItem, before_after, heldout_evaluation, heldout_items, payoff_summary
from ..train.rl import RLConfig, get_rl_preset, train_rl

__all__ = ["HEARTBEAT_S", "STALE_AFTER_S", "compare_job", "drop_resume_state", "job_config", "run_job", "run_worker", "summary_line"]

HEARTBEAT_S = 3.0  # a running job's heartbeat period
STALE_AFTER_S = 10 * HEARTBEAT_S  # a job whose heartbeat is this old lost its worker (ten beats missed)


def job_config(job: Job, out_dir: Path, samples_file: Path) -> RLConfig:
    """The RLConfig a job's stored config describes (its preset, then its fields; ``size`` is a
    label of the fields the app set, see ``rl.SIZES``)."""
    conf = dict(job.config)
    conf.pop("size", None)
    cfg = get_rl_preset(conf.pop("preset", "darl"))
    conf.update(output=str(out_dir), samples_file=str(samples_file), val_every=conf.get("val_every", 0))
    return RLConfig.from_dict(conf, cfg)


def _write_pool(store: Store, job: Job, path: Path) -> None:
    items = []
    for sid in job.sample_ids:
        s = store.sample(int(sid))
        items.append({"id": f"sample-{s.id}", "lq": str(store.path(s.lq_path)),
                      "gt": str(store.path(s.gt_path)) if s.gt_path else None})
    path.write_text(json.dumps(items, indent=1))


def compare_job(store: Store, job: Job, cfg: RLConfig, base: Any, new: Any, out: Path, worker: str | None
                ) -> tuple[dict[str, float], list[dict[str, Any]]]:
    """The finished job's before and after (``payoff``): its samples and its held-out check crops restored by
    the base and the new model, stored as the job's ``Comparison`` rows and summed up in its log; returns
    the summary numbers for the checkpoint's evaluation (``samples_d_psnr``, ``heldout_d_reward``, ...) and
    the held-out crops' metrics (the held-out check's own crops and noise). A failure here is logged and
    leaves the trained model registered."""
    store.heartbeat(job.id, log_line="before and after: the job's samples and the held-out crops, restored by "
                                     "the base model and the new one", worker=worker)
    try:
        samples = []
        for sid in job.sample_ids:
            smp = store.sample(int(sid))
            gt = pil_to_tensor(load_rgb(store.path(smp.gt_path))) if smp.gt_path else None
            samples.append(PayoffItem(f"sample {smp.id}", pil_to_tensor(load_rgb(store.path(smp.lq_path))), gt, smp.id))
        rows, numbers, heldout = [], {}, []
        for subset, items, seed in (("samples", samples, cfg.seed),  # held-out: the held-out check's noise
                                    ("heldout", heldout_items() if base.output_scale == 1 else [], 0)):
            done = before_after(base, new, items, cfg.num_steps, cfg.reward, out / "compare" / subset,
                                reference=cfg.reward_reference, seed=seed)
            if subset == "heldout":
                heldout = [r["metrics"] for r in done]
            summary = payoff_summary([r["metrics"] for r in done])
            numbers.update({f"{subset}_{k}": v for k, v in summary.items() if k.startswith("d_")})
            if done:
                store.heartbeat(job.id, log_line=f"before and after, {'its' if subset == 'samples' else 'held-out'} "
                                                 f"{len(done)} {'samples' if subset == 'samples' else 'crops'}: "
                                                 + summary_line(summary), worker=worker)
            for r in done:
                files = {k: (str(p.relative_to(store.dir)) if p is not None else None) for k, p in r["files"].items()}
                rows.append({"subset": subset, "name": r["name"], "sample_id": r["sample_id"], "lq_path": files["lq"],
                             "base_path": files["base"], "new_path": files["new"], "gt_path": files["gt"],
                             "metrics": r["metrics"]})
        store.set_comparisons(job.id, rows)
        return numbers, heldout
    except Exception as e:  # noqa: BLE001 - the model is trained and kept; the log says what went wrong
        store.heartbeat(job.id, log_line=f"before and after failed ({type(e).__name__}: {e}); the model is kept",
                        worker=worker)
        return {}, []


def summary_line(summary: dict[str, float]) -> str:
    """A ``payoff_summary`` in words: base -> new per quantity, the change, and how many improved."""
    parts = []
    for key, label, nd in SUMMARY_TERMS:
        if f"d_{key}" in summary:
            parts.append(f"{label} {summary[f'{key}_base']:.{nd}f} -> {summary[f'{key}_new']:.{nd}f} "
                         f"({summary[f'd_{key}']:+.{nd}f}, better on {100 * summary[f'better_{key}']:.0f} % "
                         f"of {int(summary[f'n_{key}'])})")
    return "; ".join(parts) or "no numbers (no ground truth and no reward that can be scored without one)"


def drop_resume_state(out: Path) -> int:
    """Delete a succeeded job's resume checkpoints (its exported model, before and after, and samples stay):
    they carry the optimizer's state beside a copy of the model, several times the model's size, and nothing
    resumes a finished job. Returns the bytes freed."""
    freed = 0
    for p in [*out.glob("checkpoint-*"), *out.glob(".tmp-checkpoint-*")]:
        freed += sum(f.stat().st_size for f in p.rglob("*") if f.is_file())
        shutil.rmtree(p, ignore_errors=True)
    (out / "latest").unlink(missing_ok=True)
    return freed


def run_job(store: Store, job: Job, heartbeat_s: float = HEARTBEAT_S) -> None:
    """Train one claimed job to a terminal state (succeeded, failed or cancelled)."""
    out = store.dir / "jobs" / str(job.id)
    out.mkdir(parents=True, exist_ok=True)
    cancel = threading.Event()
    done = threading.Event()
    lost = threading.Event()  # the job was taken back (stale) and may run elsewhere: stop, write nothing
    me = job.worker

    def beat() -> None:
        while not done.wait(heartbeat_s):
            try:
                if store.heartbeat(job.id, worker=me):
                    cancel.set()
            except JobLost:
                lost.set()
                cancel.set()
            except Exception as e:  # noqa: BLE001 - a busy database: beat again next period, never stop beating
                print(f"job {job.id}: heartbeat failed ({type(e).__name__}: {e}); trying again", file=sys.stderr)

    thread = threading.Thread(target=beat, daemon=True)
    thread.start()
    try:
        samples = out / "samples.json"
        _write_pool(store, job, samples)
        cfg = job_config(job, out, samples)
        resume = latest_checkpoint(out) is not None  # a re-queued job continues where it stopped
        store.heartbeat(job.id, log_line=f"{'resuming' if resume else 'starting'} {cfg.method} "
                                          f"on {len(job.sample_ids)} samples, {cfg.rounds} rounds", worker=me)
        last: dict[str, Any] = {}

        def on_round(rec: dict[str, Any]) -> None:
            last.update(rec)
            nums = {k: float(v) for k, v in rec.items() if isinstance(v, (int, float)) and k != "round"}
            nums["round_end"] = time.time()  # when it ended (epoch s): the app's time left counts the round under way
            store.add_metrics(job.id, int(rec["round"]), nums)
            line = f"round {rec['round']}/{cfg.rounds} " + " ".join(
                f"{k}={nums[k]:.4g}" for k in ("reward", "kl", "loss_sft", "val_psnr") if k in nums)
            try:
                if store.heartbeat(job.id, progress=rec["round"] / cfg.rounds, log_line=line, worker=me):
                    cancel.set()
            except JobLost:
                lost.set()
                cancel.set()

        def on_sample(rnd: int, lq: Any, restored: Any) -> None:
            # What training does to one picture, round by round (the Fine-tune tab shows the newest).
            (out / "samples").mkdir(exist_ok=True)
            if not (out / "samples" / "input.png").is_file():
                save_tensor(lq, out / "samples" / "input.png")
            save_tensor(restored, out / "samples" / f"round_{rnd:05d}.png")

        trained: dict[str, Any] = {}  # the trained restorer, kept in memory when training ran in this process
        if job.processes > 1:
            model_dir = train_in_processes(cfg, job.processes, resume, on_round, cancel)
        else:
            model_dir = train_rl(cfg, resume=resume, callbacks={"on_round": on_round, "should_stop": cancel.is_set,
                                                                "on_sample": on_sample,
                                                                "on_finish": lambda r: trained.update(restorer=r)})
        if lost.is_set():
            return  # another worker owns the job now: no state change, no registration
        if cancel.is_set():
            store.transition(job.id, "cancelled", worker=me)
            return
        store.heartbeat(job.id, worker=me)  # still the owner (raises JobLost otherwise) before registering
        base = cfg.base_model or str(DEFAULT_MODEL)
        parent = store.register_checkpoint(str(Path(base).resolve()) if Path(base).exists() else base,
                                           Path(base).name)
        # The finished model on photos no model trained on (Pillow/JPEG degradations), first; then its
        # last training numbers.
        store.heartbeat(job.id, log_line="checking the model on held-out photos", worker=me)
        restorer = trained.get("restorer") or load_restorer(model_dir)  # loaded only after a multi-process run
        base_restorer = load_restorer(cfg.base_model or DEFAULT_MODEL)
        # Its before and after: the job's samples and the held-out check's crops, by the base and the new model;
        # the held-out numbers come from the latter (restored once), beside the base's on the same crops and
        # noise, so the job says whether it got better.
        compared, heldout = compare_job(store, job, cfg, base_restorer, restorer, out, me)
        evaluation = heldout_evaluation(heldout)
        if not evaluation:  # no before and after (it failed): the quick check by itself
            evaluation = heldout_check(restorer, cfg.num_steps)
            base_eval = heldout_check(base_restorer, cfg.num_steps)
            if "heldout_psnr" in evaluation and "heldout_psnr" in base_eval:
                evaluation["heldout_psnr_base"] = base_eval["heldout_psnr"]
        if "heldout_psnr_base" in evaluation:
            delta = evaluation["heldout_psnr"] - evaluation["heldout_psnr_base"]
            store.heartbeat(job.id, log_line=f"held-out check: PSNR {evaluation['heldout_psnr']:.2f} dB against its "
                                             f"base's {evaluation['heldout_psnr_base']:.2f} ({delta:+.2f} dB: "
                                             f"{'better' if delta > 0.02 else 'worse' if delta < -0.02 else 'same'})",
                            worker=me)
        guard = Path(cfg.output) / "guard.json"
        if guard.is_file():  # the probe guard handed back an earlier round (or the base model): say so
            g = json.loads(guard.read_text())
            evaluation["guard_exported_round"] = float(g["exported_round"])
            store.heartbeat(job.id, log_line=f"probe guard: the model is round {g['exported_round']} of "
                                             f"{g['last_round']}: {g['why']}", worker=me)
        evaluation.update(compared)
        evaluation.update({k: float(v) for k, v in last.items()
                           if (k.startswith("val_") or k in ("reward", "d_mean")) and isinstance(v, (int, float))})
        store.register_checkpoint(str(model_dir.resolve()), f"job-{job.id}-{cfg.method}", parent_id=parent,
                                  job_id=job.id, evaluation=evaluation)
        store.transition(job.id, "succeeded", worker=me)
        drop_resume_state(out)
    except JobLost:
        pass  # taken back as stale while we ran: the new owner resumes it
    except KeyboardInterrupt:  # SIGTERM (the app stopping) or Ctrl-C: hand the job back, resumed by the next start
        try:
            store.heartbeat(job.id, log_line="worker stopped: the job is queued again and resumes from its last "
                                             "checkpoint", worker=me)
            store.transition(job.id, "queued", worker=me)
        except (IllegalTransition, JobLost):
            pass
        raise
    except Exception as e:  # the job fails; the worker lives on  # noqa: BLE001
        try:
            store.transition(job.id, "failed", error=f"{type(e).__name__}: {e}\n{traceback.format_exc(limit=5)}",
                             worker=me)
        except IllegalTransition:
            pass
    finally:
        done.set()
        thread.join()


def run_worker(store: Store, worker_id: str, once: bool = False, poll_s: float = 2.0,
               stale_after_s: float = STALE_AFTER_S, requeue_stale: bool = True, recover_every_s: float | None = None,
               should_stop: Callable[[], bool] | None = None, dead_workers: tuple[str, ...] = ()) -> int:
    """Claim and run jobs; returns how many ran (``once``: at most one; ``should_stop``: until it says so).

    The running jobs of ``dead_workers`` (known dead: the app's supervisor names the worker it restarts) are
    taken back at once. Stale jobs (another dead worker's: heartbeat older than ``stale_after_s``, ten missed
    heartbeats by default) are taken back at start and then every ``recover_every_s`` seconds (a third of the
    stale timeout by default) while this worker polls, so a job whose worker died is resumed within about
    40 s without waiting for a restart."""
    every = stale_after_s / 3 if recover_every_s is None else recover_every_s
    for dead in dead_workers:
        store.recover_worker(dead, requeue_stale)
    store.recover_stale(stale_after_s, requeue_stale)
    last_recovery = time.monotonic()
    ran = 0
    while should_stop is None or not should_stop():
        if time.monotonic() - last_recovery >= every:
            store.recover_stale(stale_after_s, requeue_stale)
            last_recovery = time.monotonic()
        job = store.claim_job(worker_id)
        if job is None:
            if once:
                return ran
            time.sleep(poll_s)
            continue
        run_job(store, job)
        ran += 1
        if once:
            return ran
    return ran


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description="Run queued DARL fine-tune jobs from the store.")
    ap.add_argument("--once", action="store_true", help="run at most one job, then exit")
    ap.add_argument("--poll", type=float, default=2.0, help="seconds between looks at the queue")
    ap.add_argument("--stale-after", type=float, default=STALE_AFTER_S,
                    help=f"heartbeat age that marks a dead worker (default {STALE_AFTER_S:g} s: ten missed heartbeats)")
    ap.add_argument("--dead-worker", action="append", default=[], metavar="ID",
                    help="a worker id known dead (the app names the worker it restarts): its running jobs are "
                         "taken back at once (repeatable)")
    ap.add_argument("--fail-stale", action="store_true", help="fail stale jobs instead of re-queueing them")
    ap.add_argument("--worker-id", default=f"{socket.gethostname()}:{os.getpid()}")
    args = ap.parse_args(argv)
    # SIGTERM (the app stopping, a service manager) ends a worker like Ctrl-C: its job is handed back.
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        run_worker(Store(), args.worker_id, args.once, args.poll, args.stale_after, not args.fail_stale,
                   dead_workers=tuple(args.dead_worker))
    except KeyboardInterrupt:
        sys.exit(0)


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


if __name__ == "__main__":
    main()
