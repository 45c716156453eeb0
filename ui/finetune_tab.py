"""Fine-tune tab: launch RL jobs on flagged samples, watch them live, cancel them, and see whether a
finished job paid off (its before and after, kept in the store).

Jobs run in the worker process (``python -m darl_core.jobs.worker``, started by the
run command), not in the web server: closing the browser tab changes nothing.
"""

from __future__ import annotations

import time
from typing import Any

import gradio as gr
import pandas as pd

from darl_core.evaluation.payoff import HELDOUT_CROPS
from darl_core.rewards.registry import MissingWeightsError, parse_spec
from darl_core.train.rl import CPU_SECONDS_PER_UNIT, SIZES, RLConfig, get_rl_preset, round_cost
from darl_core.train.rl import PRESETS as RL_PRESETS

from . import fields
from .context import AppContext, UserError, caller, int_arg, user_errors, user_messages

__all__ = ["JOB_HEADERS", "cancel_job", "curve_colors", "initial_job", "job_choices", "job_curves", "job_from_row",
           "job_sample", "job_status", "launch_job", "list_jobs", "listen", "plot_frame", "render", "status_text",
           "compare_colors", "compare_frame", "estimate_text", "expected_minutes", "seconds_per_unit",
           "PAYOFF_HEADERS", "rounds_left_seconds", "waiting_for", "finish_minutes", "payoff_open", "payoff_pick_from_gallery", "payoff_view",
           "SIZE_LABELS", "curve_panels", "curves_title", "model_label", "size_choices"]

JOB_HEADERS = ["job", "state", "progress", "method", "reward", "samples", "user", "created"]
METHODS = [m for m in RL_PRESETS if m != "tiny_test"]
CURVES = ("reward", "kl", "val_psnr", "loss_sft", "grad_norm_rl", "grad_norm_sft", "grad_norm_kl", "pool_w_mean",
          "probe_reward", "group_reward_std", "probe_psnr", "probe_flat_hf")  # the training metrics the plot shows
# One fixed colour per curve, so a curve keeps its colour from job to job (Tableau 10 and two more; grey:
# placeholder)
PALETTE = ("#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f", "#edc948", "#b07aa1", "#ff9da7", "#9c755f",
           "#bab0ac", "#17becf", "#8c564b")
PLACEHOLDER_COLOR = "#9ca3af"
# What each curve is, above its own panel (each panel has its own y axis: the metrics' scales differ by orders)
CURVE_TITLES = {"reward": "reward", "kl": "KL to the base", "val_psnr": "validation PSNR, dB", "loss_sft": "SFT loss",
                "grad_norm_rl": "gradient norm: RL term", "grad_norm_sft": "gradient norm: SFT term",
                "grad_norm_kl": "gradient norm: KL term", "pool_w_mean": "pool's mean RL weight w",
                "probe_reward": "probe reward (held-out crops)", "group_reward_std": "reward spread in a group",
                "probe_psnr": "probe PSNR, dB (held-out crops)", "probe_flat_hf": "probe flat-area texture"}
SIZE_LABELS = {"quick": "quick test (no probe, guard or diagnostics)",
               "full": "full (the CPU study's setting: 96-px crops, the held-out probe)",
               "paper": "paper (the method's own settings: use a GPU)"}


def launch_job(ctx: AppContext, base_model: str, reward: str, preset: str, rounds: int,
               sample_ids: str = "", user: str = "anonymous", hardest_k: int = 0,
               extra: dict[str, Any] | None = None, processes: int = 1, size: str = "full") -> int:
    """Queue a job on the flagged samples (all, or the comma-separated ids given), plus optionally
    the ``hardest_k`` hardest samples of the built-in synthetic pool; returns its id. With
    ``processes`` > 1 the worker trains it with that many processes (GPUs) through accelerate;
    ``size`` "quick" trains smaller (``rl.SIZES``) to try a method in minutes."""
    if not isinstance(base_model, str) or base_model not in {p for _, p in ctx.model_choices()}:
        raise UserError(f"base model: {str(base_model)[:80]!r} is not one of the app's models (the Models tab "
                        f"lists them)")
    if not isinstance(preset, str) or preset not in RL_PRESETS:
        raise UserError(f"unknown method {preset!r}; choose one of {', '.join(METHODS)}")
    if not isinstance(size, str) or size not in SIZES:
        raise UserError(f"unknown run size {size!r}; choose one of {', '.join(SIZES)}")
    if not isinstance(reward, str):
        raise UserError(f"reward: {str(reward)[:40]!r} is not a reward spec such as \"niqe\" or \"psnr + 0.1*ssim\"")
    try:
        parse_spec(reward)
    except ValueError as e:
        raise UserError(str(e)) from None
    rounds = int_arg("rounds", rounds, 1, ctx.max_rounds)
    hardest_k = int_arg("extra hard samples", hardest_k or 0, 0, 256)
    processes = int_arg("processes", 1 if processes is None else processes, 1, ctx.max_processes)
    flagged = {r.sample_id: r for r in ctx.store.flagged(user=ctx.sees(user))}  # with login: the user's own
    if sample_ids and sample_ids.strip():
        try:
            ids = [int(s) for s in sample_ids.replace(" ", "").split(",") if s]
        except ValueError:
            raise UserError("sample ids must be numbers separated by commas") from None
        missing = [i for i in ids if i not in flagged]
        if missing:
            raise UserError(f"samples {missing} are not flagged" + (f" by you ({user}): a job trains on its user's own "
                                                                    f"samples" if ctx.sees(user) else ""))
    else:
        ids = sorted(flagged)
    if not ids:
        raise UserError("there are no flagged samples to train on: flag some in the Restore tab first")
    if preset == "rl_gt_reward" or _full_reference(reward):
        # darl_anchored compares with stage 1's restoration where a sample has no ground truth
        if not any(flagged[i].gt_path for i in ids) and get_rl_preset(preset).reward_reference == "gt":
            raise UserError("a full-reference reward needs flagged samples with a ground truth (or the method "
                            "darl_anchored, which compares with the model's stage-1 restoration without one)")
    config: dict[str, Any] = {"preset": preset, "reward": reward, "rounds": rounds, "base_model": base_model,
                              "batch_size": -(-min(8, len(ids) + hardest_k) // processes) * processes}
    if hardest_k:
        config.update(extra_hardest_k=hardest_k, pool_size=max(64, 4 * hardest_k))
    config.update(SIZES[size])
    if size != "full":
        config["size"] = size  # shown in the jobs table; not an RLConfig field (the worker drops it)
    config.update(extra or {})
    try:  # the trainer's own checks (RLConfig.__post_init__), now: a bad job is refused before it is queued
        _effective(preset, config)
    except ValueError as e:
        raise UserError(f"the method {preset} cannot train this: {e}") from None
    _check_user_cap(ctx, user, preset, rounds, len(ids), hardest_k, size)
    return ctx.store.create_job(config, ids, user, processes)  # the sample list is frozen here


def _check_user_cap(ctx: AppContext, user: str, preset: str, rounds: int, n_samples: int, hardest_k: int,
                    size: str) -> None:
    """UserError unless ``user`` may queue one more job: at most ``ctx.max_user_jobs`` queued or running and
    ``ctx.max_user_hours`` of estimated training left among them, this one included (admins: no cap), so
    one user cannot fill the single worker's next days."""
    if ctx.auth and user in ctx.admins:
        return
    active = ctx.store.active_jobs(user)
    if len(active) >= ctx.max_user_jobs:
        raise UserError(f"you already have {len(active)} jobs queued or running (at most {ctx.max_user_jobs} per "
                        f"user, DARL_MAX_JOBS_PER_USER): cancel one or wait for it to finish")
    this = expected_minutes(ctx, preset, rounds, n_samples, hardest_k)[0][size] / 60
    left = 0.0
    for j in active:
        n = len(j.sample_ids)
        k = int(j.config.get("extra_hardest_k", 0))
        try:
            hours = expected_minutes(ctx, j.config.get("preset", "darl"), int(j.config.get("rounds", 1)), n, k)[0][
                j.config.get("size", "full")] / 60
        except (KeyError, ValueError):
            continue
        left += hours * (1 - j.progress)
    if this + left > ctx.max_user_hours:
        raise UserError(f"this job (about {this:.1f} h) and your {len(active)} queued or running jobs (about "
                        f"{left:.1f} h left) come to {this + left:.1f} h of training, more than the "
                        f"{ctx.max_user_hours:g} h each user may have queued (DARL_MAX_JOB_HOURS_PER_USER): choose "
                        f"fewer rounds or the quick size, or wait for your jobs")


def _effective(preset: str, config: dict[str, Any]) -> RLConfig:
    """The RLConfig a job of ``preset`` with these stored fields trains with (as the worker builds it)."""
    known = {k: v for k, v in config.items() if k in RLConfig.__dataclass_fields__}
    return RLConfig.from_dict(known, get_rl_preset(preset))


def seconds_per_unit(ctx: AppContext) -> tuple[float, str]:
    """Seconds per unit of ``rl.round_cost`` on this machine: measured from the newest job with timed rounds
    (the median of its rounds after the first), else this project's CPU benchmark; and where it came from."""
    for j in ctx.store.jobs(limit=20):
        times = sorted(v for step, name, v in ctx.store.metrics(j.id) if name == "round_s" and step > 1)
        if len(times) < 2:
            continue
        try:
            cfg = _effective(j.config.get("preset", "darl"), j.config)
        except ValueError:
            continue
        n_pool = len(j.sample_ids) + int(j.config.get("extra_hardest_k", 0))
        return times[len(times) // 2] / round_cost(cfg, n_pool), f"timed on this machine by job #{j.id}"
    return CPU_SECONDS_PER_UNIT, "from this project's 2-core CPU benchmark; the first job here will time it"


# Seconds per image of a job's end (model load, the held-out check, the before and after of its samples and of the
# 8 held-out crops) on this project's 2-core CPU: bench/loop.py's jobs, 2026-12-08 (20 s for 32 samples + 8 crops).
FINISH_SECONDS_PER_IMAGE = 0.5


def finish_minutes(ctx: AppContext, n_samples: int) -> float:
    """Expected minutes of a job's end for ``n_samples`` samples: from the newest finished job here (its wall
    time minus its rounds, per compared image), else ``FINISH_SECONDS_PER_IMAGE``."""
    per_image = FINISH_SECONDS_PER_IMAGE
    for j in ctx.store.jobs(limit=20):
        rounds = [v for _, name, v in ctx.store.metrics(j.id) if name == "round_s"]
        if j.state == "succeeded" and j.started_at and j.finished_at and rounds:
            end = (j.finished_at - j.started_at).total_seconds() - sum(rounds)
            per_image = max(end, 0.0) / (len(j.sample_ids) + HELDOUT_CROPS)
            break
    return per_image * (n_samples + HELDOUT_CROPS) / 60


def expected_minutes(ctx: AppContext, preset: str, rounds: int, n_samples: int, hardest_k: int = 0
                     ) -> tuple[dict[str, float], str]:
    """Expected minutes of a job of each run size (``rl.SIZES``) on ``n_samples`` flagged samples, and the
    source of the machine's speed. Same batch as ``launch_job`` uses; the rounds, then the job's end
    (``finish_minutes``: the held-out check and the before and after)."""
    rate, source = seconds_per_unit(ctx)
    end = finish_minutes(ctx, n_samples)
    out = {}
    for size, fields_ in SIZES.items():
        config = {"batch_size": min(8, max(n_samples + hardest_k, 1)), **fields_}
        cfg = _effective(preset, config)
        out[size] = rounds * round_cost(cfg, n_samples + hardest_k) * rate / 60 + end
    return out, source


def _minutes(m: float) -> str:
    return f"{m:.1f} min" if m < 10 else f"{m:.0f} min" if m < 90 else f"{m / 60:.1f} h"


def _estimate(ctx: AppContext, preset: str, rounds: Any, sample_ids: str, hardest_k: Any
              ) -> tuple[int, int, dict[str, float], str] | str:
    """(rounds, samples, minutes by run size, source), or the line saying why there is no estimate."""
    try:
        rounds = int_arg("rounds", rounds, 1, ctx.max_rounds)
        hardest_k = int_arg("extra hard samples", hardest_k or 0, 0, 256)
        preset = preset if preset in RL_PRESETS else "darl"
    except UserError as e:
        return f"Expected time: {e}"
    n = len([s for s in (sample_ids or "").replace(" ", "").split(",") if s]) or len(ctx.store.flagged())
    if n + hardest_k == 0:
        return "Expected time: flag samples first (none are flagged)."
    mins, source = expected_minutes(ctx, preset, rounds, n, hardest_k)
    return rounds, n + hardest_k, mins, source


def estimate_text(ctx: AppContext, preset: str, rounds: Any, sample_ids: str = "", hardest_k: Any = 0) -> str:
    """The launch form's line of expected times, one per run size, for the chosen samples."""
    est = _estimate(ctx, preset, rounds, sample_ids, hardest_k)
    if isinstance(est, str):
        return est
    rounds, n, mins, source = est
    parts = " · ".join(f"{size} ≈ {_minutes(m)}" for size, m in mins.items())
    return f"Expected time for {rounds} rounds on {n} samples: {parts} ({source})."


def size_choices(ctx: AppContext, preset: str, rounds: Any, sample_ids: str = "", hardest_k: Any = 0
                 ) -> list[tuple[str, str]]:
    """The run-size picker's choices, each with its expected time for the chosen samples and rounds (the plain
    labels when there is no estimate: nothing flagged, or rounds out of range)."""
    est = _estimate(ctx, preset, rounds, sample_ids, hardest_k)
    mins = {} if isinstance(est, str) else est[2]
    return [(f"{label} · ≈ {_minutes(mins[k])}" if k in mins else label, k) for k, label in SIZE_LABELS.items()]


def _full_reference(spec: str) -> bool:
    from darl_core.rewards.registry import get_metric

    try:
        return any(get_metric(name).full_reference for _, name in parse_spec(spec))
    except (MissingWeightsError, ValueError) as e:
        raise UserError(f"reward {spec!r}: {e}") from None


def visible_jobs(ctx: AppContext, user: str = "anonymous") -> list[Any]:
    """The jobs ``user`` may see, newest first: everyone's without login or for an admin, else their own (a
    job shows its samples' pictures, its log and its before and after: the owner rule of the samples)."""
    who = ctx.sees(user)
    return [j for j in ctx.store.jobs() if who is None or j.user == who]


def require_job_view(ctx: AppContext, job_id: Any, user: str = "anonymous") -> None:
    """Raise UserError unless ``user`` may see job ``job_id`` (``visible_jobs``'s rule); None passes."""
    who = ctx.sees(user)
    if job_id is None or who is None:
        return
    try:
        owner = ctx.store.job(int_arg("job", job_id, 1, 2**31 - 1)).user
    except KeyError:
        raise UserError(f"there is no job #{job_id}") from None
    if owner != who:
        raise UserError(f"job #{job_id} belongs to another user: only they or an admin (DARL_ADMINS) may see it "
                        f"(you are logged in as {user})")


def list_jobs(ctx: AppContext, user: str = "anonymous") -> list[list[Any]]:
    return [[j.id, j.state, f"{100 * j.progress:.0f}%",
             j.config.get("preset", "") + (f" ({j.config['size']})" if j.config.get("size") else ""),
             j.config.get("reward", ""),
             len(j.sample_ids), j.user, j.created_at.strftime("%Y-%m-%d %H:%M")] for j in visible_jobs(ctx, user)]


def rounds_left_seconds(round_s: list[float], rounds_left: int, since_last: float) -> float:
    """Expected seconds until a job's last round ends: ``rounds_left`` rounds at this job's own recent speed
    (the median of its last three timed rounds, ``round_s`` in round order, the first one left out once
    there are others: it warms up), less the ``since_last`` seconds the round under way has already run.
    Recent rounds follow the machine's load (a restore or another job beside it) within three rounds."""
    recent = (round_s[1:] if len(round_s) > 1 else round_s)[-3:]
    per_round = sorted(recent)[len(recent) // 2]
    if rounds_left <= 0:
        return 0.0
    return max(per_round * rounds_left - min(max(since_last, 0.0), per_round), 1.0)


def job_status(ctx: AppContext, job_id: int) -> dict[str, Any]:
    """State, progress (0..1), log and error of one job, with its median seconds per round and,
    while it runs, the expected time left in its rounds (``rounds_left_seconds``; None before its first)."""
    try:
        j = ctx.store.job(int_arg("job", job_id, 1, 2**31 - 1))
    except KeyError:
        raise UserError(f"there is no job #{job_id}") from None
    metrics = ctx.store.metrics(j.id)
    in_order = [v for _, n, v in metrics if n == "round_s"]
    times = sorted(in_order)
    per_round = times[len(times) // 2] if times else None
    rounds = int(j.config.get("rounds", 0) or 0)
    left = None
    if per_round is not None and j.state == "running":
        ends = [v for _, n, v in metrics if n == "round_end"]
        left = rounds_left_seconds(in_order, max(rounds - round(j.progress * rounds), 0),
                                   time.time() - ends[-1] if ends else 0.0)
    return {"job": j.id, "state": j.state, "progress": j.progress, "log": j.log, "error": j.error,
            "config": j.config, "seconds_per_round": per_round, "seconds_left": left,
            "waiting_for": waiting_for(ctx, j.id) if j.state == "queued" else None}


def waiting_for(ctx: AppContext, job_id: int) -> str:
    """Why a queued job has not started: the jobs ahead of it (running, stopping after a cancel, or queued
    before it), or no worker having taken anything yet."""
    jobs = ctx.store.jobs(limit=500)
    running = sorted((j for j in jobs if j.state == "running"), key=lambda j: j.id)
    ahead = [j.id for j in jobs if j.state == "queued" and j.id < job_id]
    parts = [f"job #{j.id}, which is {'stopping (cancel requested)' if j.cancel_requested else 'running'} "
             f"({100 * j.progress:.0f}%)" for j in running]
    if ahead:
        parts.append(f"{len(ahead)} queued job{'s' if len(ahead) > 1 else ''} before it (#{', #'.join(map(str, sorted(ahead)))})")
    if parts:
        return "waiting for " + " and ".join(parts)
    return ("waiting for a worker to take it (the run command starts one; without it, start "
            "`python -m darl_core.jobs.worker`)")


def status_text(st: dict[str, Any]) -> str:
    """The status line above the plot: state, progress, time per round and time left."""
    text = f"**job #{st['job']}: {st['state']}, {100 * st['progress']:.0f}%**"
    if st["seconds_per_round"] is not None:
        text += f" · {st['seconds_per_round']:.1f} s a round"
    if st["seconds_left"] is not None and st["seconds_left"] <= 0:
        text += " · rounds done: checking the model on held-out photos"
    elif st["seconds_left"] is not None:
        left = st["seconds_left"]
        text += f" · about {left / 60:.0f} min left" if left >= 90 else f" · about {left:.0f} s left"
    elif st["state"] == "running":
        text += " · time left: after the first round"
    if st.get("waiting_for"):
        text += f" · {st['waiting_for']}"
    if st["error"]:
        text += f"\n\n```\n{st['error'][-800:]}\n```"
    return text


def _frame(rows: list[tuple[int, float, str]]) -> pd.DataFrame:
    # Explicit dtypes: an empty frame would otherwise be all float64, and the plot would take "metric"
    # for a number (a colour gradient from -Infinity to Infinity, and no lines).
    return pd.DataFrame({"round": pd.Series([r[0] for r in rows], dtype="int64"),
                         "value": pd.Series([r[1] for r in rows], dtype="float64"),
                         "metric": pd.Series([r[2] for r in rows], dtype="str")})


def job_curves(ctx: AppContext, job_id: int | None) -> pd.DataFrame:
    """Long-format (round, value, metric) of reward, KL, validation PSNR and the RL diagnostics
    (each term's gradient norm, the pool's mean w, the probe reward) for a LinePlot."""
    if job_id is None:
        return _frame([])
    return _frame([(s, v, n) for s, n, v in ctx.store.metrics(int(job_id)) if n in CURVES])


def plot_frame(ctx: AppContext, job_id: int | None) -> pd.DataFrame:
    """What the training-curves plot shows: the job's curves, or, before its first round (or with no
    job chosen), one labelled placeholder point. Never empty: Gradio's LinePlot fixes its column types
    and colour legend the first time it draws, and a plot that first drew an empty frame stays blank."""
    curves = job_curves(ctx, job_id)
    if len(curves):
        return curves
    label = "no job chosen" if job_id is None else f"job #{int(job_id)}: no round yet"
    return _frame([(0, 0.0, label)])


def curve_panels(ctx: AppContext, job_id: int | None) -> dict[str, pd.DataFrame]:
    """One frame per training metric the job has logged (of ``CURVES``, in that order): each drawn in a panel of
    its own, with its own y axis (a reward near -5 and a KL near 0.01 share no useful scale)."""
    curves = job_curves(ctx, job_id)
    return {m: curves[curves["metric"] == m].reset_index(drop=True) for m in CURVES if (curves["metric"] == m).any()}


def curves_title(ctx: AppContext, job_id: int | None) -> str:
    """The line above the panels: whose curves, or why there are none."""
    if job_id is None:
        return "**Training curves** · no job chosen: launch one or click a row of the table"
    job = ctx.store.job(int(job_id))
    if not curve_panels(ctx, job_id):
        return f"**Training curves** · job #{job.id}: no round yet"
    return (f"**Training curves** · job #{job.id} ({job.config.get('preset', '')}) · one panel per metric, each on "
            f"its own scale")


def curve_colors(frame: pd.DataFrame) -> dict[str, str]:
    """The plot's colour map for ``frame``: a fixed colour per training metric, grey for a placeholder.
    Sent to the plot after its data: a new set of curves changes the map, which redraws the plot with a
    legend of exactly those curves."""
    return {m: PALETTE[CURVES.index(m) % len(PALETTE)] if m in CURVES else PLACEHOLDER_COLOR
            for m in dict.fromkeys(frame["metric"])}


def job_sample(ctx: AppContext, job_id: int | None) -> tuple[str | None, str | None, str]:
    """The job's picture to watch: its first training input and that input restored after the newest
    round (files the worker writes each round), with a caption; Nones before the first round."""
    if job_id is None:
        return None, None, ""
    folder = ctx.store.dir / "jobs" / str(int(job_id)) / "samples"
    rounds = sorted(folder.glob("round_*.png")) if folder.is_dir() else []
    if not rounds:
        return None, None, "the job's first training input, restored after each round, appears here"
    lq = folder / "input.png"
    n = int(rounds[-1].stem.split("_")[1])
    return (str(lq) if lq.is_file() else None, str(rounds[-1]),
            f"the job's first training input (left) and its restoration after round {n} (right)")


PAYOFF_HEADERS = ["set", "image", "reward", "PSNR", "SSIM", "difficulty"]  # each cell: base → new (change)
SUBSET_WORDS = {"samples": "the job's own samples", "heldout": "held-out crops (photos no model trained on)"}
GALLERY_MAX = 24  # image pairs the gallery shows (the table lists all)


def _pair(m: dict[str, Any], key: str, nd: int, alt: tuple[str, str] | None = None) -> str:
    """"base → new (change)" of one number, or "—" where it was not scored (no ground truth); ``alt``: (key,
    tag) of the same quantity measured another way, shown with its tag when ``key`` is absent."""
    tag = ""
    if f"{key}_base" not in m and alt is not None and f"{alt[0]}_base" in m:
        key, tag = alt[0], f" {alt[1]}"
    if f"{key}_base" not in m or f"{key}_new" not in m:
        return "—"
    b, n = m[f"{key}_base"], m[f"{key}_new"]
    return f"{b:.{nd}f} → {n:.{nd}f} ({n - b:+.{nd}f}){tag}"


def _summary_md(subset: str, summary: dict[str, float]) -> str:
    from darl_core.evaluation.payoff import SUMMARY_TERMS

    words = []
    for key, label, nd in SUMMARY_TERMS:
        if f"d_{key}" in summary:
            label = label.replace(" - ", " − ")
            better = "lower" if key.startswith("difficulty") else "higher"
            words.append(f"{label} {summary[f'{key}_base']:.{nd}f} → {summary[f'{key}_new']:.{nd}f} "
                         f"(**{summary[f'd_{key}']:+.{nd}f}**; {better} on {100 * summary[f'better_{key}']:.0f} % "
                         f"of {int(summary[f'n_{key}'])})")
    return f"**{SUBSET_WORDS[subset]}**, {int(summary['n'])}: " + (" · ".join(words) or "no numbers "
                                                                    "(no ground truth, and a reward that needs one)")


def payoff_view(ctx: AppContext, job_id: int | None
                ) -> tuple[str, list[list[Any]], list[tuple[str, str]], list[tuple[str, int]]]:
    """A job's before and after (``storage.Comparison``, written by the worker when the job finished):
    a summary per set (the mean change, and on how many images the new model is better), one table row per
    image, the gallery (base and new restorations side by side, captioned), and the choices of the
    "open in Restore" picker."""
    if job_id is None:
        return (("Choose a job above: when it has finished, this shows each of its samples and 8 held-out crops "
                 "restored by its base model and by its new one, with the numbers."), [], [], [])
    try:
        job = ctx.store.job(int_arg("job", job_id, 1, 2**31 - 1))
    except KeyError:
        raise UserError(f"there is no job #{job_id}") from None
    rows = ctx.store.comparisons(job.id)
    if not rows:
        if job.state in ("queued", "running"):
            return ((f"Job #{job.id}'s before and after appears here when it finishes: each of its samples and 8 "
                     "held-out crops restored by the base model and by the new one."), [], [], [])
        return (f"Job #{job.id} ({job.state}) has no before and after"
                + (" (see its log)." if job.state == "succeeded" else ": it did not finish training."), [], [], [])
    from darl_core.evaluation.payoff import payoff_summary

    lines = [f"### Job #{job.id}: did it pay off?", ("Both models restore each image with the same noise, at the "
                                                      "job's steps, as the app does. Reward: the job's (`"
                                                      + str(job.config.get("reward", "")) + "`).")]
    for subset in SUBSET_WORDS:
        part = [r.metrics for r in rows if r.subset == subset]
        if part:
            lines.append("- " + _summary_md(subset, payoff_summary(part)))
    table = [[r.subset, r.name, _pair(r.metrics, "reward", 1, ("reward_stage1", "vs stage 1")),
              _pair(r.metrics, "psnr", 2), _pair(r.metrics, "ssim", 3),
              _pair(r.metrics, "difficulty", 3, ("difficulty_proxy", "proxy"))] for r in rows]
    gallery: list[tuple[str, str]] = []
    for r in rows[:GALLERY_MAX]:  # short captions: the tiles show about 25 characters
        m = r.metrics
        change = f" {m['psnr_new'] - m['psnr_base']:+.2f} dB" if "psnr_base" in m else ""
        gallery += [(str(ctx.store.path(r.base_path)), f"{r.name} · base"),
                    (str(ctx.store.path(r.new_path)), f"{r.name} · new{change}")]
    if len(rows) > GALLERY_MAX:
        lines.append(f"\nThe gallery shows the first {GALLERY_MAX} of {len(rows)} images; the table lists all.")
    choices = [(f"{r.name} ({r.subset})", r.id) for r in rows]
    return "\n".join(lines), table, gallery, choices


def payoff_open(ctx: AppContext, job_id: int | None, comparison_id: int | None
                ) -> tuple[str, str | None, str, str]:
    """What "Open in Restore" puts on the Restore tab for one image of a job's before and after: its input,
    its ground truth (or None), the job's base model as the SFT side and the job's new model as the RL side."""
    if job_id is None:
        raise UserError("choose a finished job first")
    job_id = int_arg("job", job_id, 1, 2**31 - 1)
    rows = ctx.store.comparisons(job_id)
    if not rows:
        raise UserError(f"job #{job_id} has no before and after to open (it has not finished training)")
    if comparison_id is None:
        raise UserError("choose one of the job's images in the Image picker (or click its picture) first")
    row = next((r for r in rows if r.id == int(comparison_id)), None)
    if row is None:
        raise UserError(f"job #{job_id} has no such image in its before and after")
    new = next((c for c in ctx.store.checkpoints() if c.job_id == job_id), None)
    if new is None:
        raise UserError(f"job #{job_id}'s model is no longer registered (deleted in the Models tab)")
    base = str(ctx.store.job(job_id).config.get("base_model") or ctx.default_models()[0])
    return (str(ctx.store.path(row.lq_path)), str(ctx.store.path(row.gt_path)) if row.gt_path else None, base,
            new.path)


def payoff_pick_from_gallery(ctx: AppContext, job_id: int | None, index: int | None) -> int | None:
    """The comparison a click on the gallery's tile ``index`` means (two tiles per image: base, new)."""
    if job_id is None or index is None:
        return None
    rows = ctx.store.comparisons(int_arg("job", job_id, 1, 2**31 - 1))[:GALLERY_MAX]
    i = int(index) // 2
    return rows[i].id if 0 <= i < len(rows) else None


COMPARE_PLACEHOLDER = "choose jobs to compare"


def compare_frame(ctx: AppContext, job_ids: list[int] | None, metric: str = "reward") -> pd.DataFrame:
    """One curve of ``metric`` per chosen job (labelled "job #N · method"), for comparing runs; a
    placeholder point when none is chosen or none has that metric yet (never empty: see plot_frame)."""
    if metric not in CURVES:
        raise UserError(f"unknown curve {metric!r}; choose one of {', '.join(CURVES)}")
    rows: list[tuple[int, float, str]] = []
    for jid in job_ids or []:
        try:
            j = ctx.store.job(int(jid))
        except KeyError:
            raise UserError(f"there is no job #{jid}") from None
        label = f"job #{j.id} · {j.config.get('preset', '')} · {j.config.get('reward', '')}".rstrip(" ·")
        rows += [(step, v, label) for step, n, v in ctx.store.metrics(j.id) if n == metric]
    return _frame(rows or [(0, 0.0, COMPARE_PLACEHOLDER)])


def compare_colors(frame: pd.DataFrame) -> dict[str, str]:
    """A colour per compared job (in the order chosen), grey for the placeholder."""
    labels = list(dict.fromkeys(frame["metric"]))
    return {m: PLACEHOLDER_COLOR if m == COMPARE_PLACEHOLDER else PALETTE[i % len(PALETTE)]
            for i, m in enumerate(labels)}


def job_choices(ctx: AppContext, user: str = "anonymous") -> list[tuple[str, int]]:
    """(label, id) of the jobs ``user`` may see, newest first, for the job picker (no state: a label would go
    stale)."""
    return [(f"#{j.id} · {j.config.get('preset', '')} · {j.config.get('reward', '')}".rstrip(" ·"), j.id)
            for j in visible_jobs(ctx, user)]


def initial_job(ctx: AppContext, saved: int | None, user: str = "anonymous") -> int | None:
    """The job a page shows when it loads: the one this browser had chosen (kept across reloads) while it
    exists, else the newest job, else none."""
    ids = [j.id for j in visible_jobs(ctx, user)]
    try:
        if saved is not None and int(saved) in ids:
            return int(saved)
    except (TypeError, ValueError):
        pass
    return ids[0] if ids else None


def job_from_row(row: list[Any] | None) -> int | None:
    """The job id of a clicked row of the jobs table (its first cell)."""
    try:
        return int(row[0]) if row else None
    except (TypeError, ValueError):
        return None


def model_label(ctx: AppContext, path: str | None) -> str:
    """The picker's whole label of a model (a narrow dropdown cuts it): its name, then its numbers beside it."""
    label = next((lbl for lbl, p in ctx.model_choices() if p == path), None)
    if label is None:
        return "" if not path else f"{path} (not one of the app's models)"
    name, _, numbers = label.partition(" — ")
    return f"**{name}**" + (f" · {numbers.replace(', ', ' · ')}" if numbers else "")


def cancel_job(ctx: AppContext, job_id: int | None, user: str = "anonymous") -> str:
    """Cancel a queued or running job (its owner's or an admin's, when users log in)."""
    if job_id is None:
        raise UserError("choose a job to cancel")
    state = job_status(ctx, job_id)["state"]
    job_id = int(job_id)
    if state in ("succeeded", "failed", "cancelled"):
        raise UserError(f"job #{job_id} already {state}")
    ctx.require_owner(user, f"job:{job_id}", f"job #{job_id}")
    ctx.store.request_cancel(job_id, user)
    return f"Cancel requested for job #{int(job_id)} ({'cancelled' if state == 'queued' else 'it stops within seconds; a multi-process job at the end of its round'})."


def render(ctx: AppContext) -> dict[str, Any]:
    c: dict[str, Any] = {}
    choices = ctx.model_choices()
    # empty while the job worker runs; a warning with its last error when the app keeps restarting it
    c["worker_warning"] = gr.Markdown(ctx.worker_warning(), elem_id="worker-warning")
    with gr.Row():
        with gr.Column(scale=1):
            c["base"] = gr.Dropdown(choices, value=choices[0][1], label="Base checkpoint", allow_custom_value=True,
                                    elem_id="base-picker")
            c["base_label"] = gr.Markdown(model_label(ctx, choices[0][1]), elem_id="base-label")  # the whole label
            c["reward"] = gr.Textbox("darl_iqa + 20*psnr", label="Reward (metric or composite, e.g. darl_iqa + 20*psnr)",
                                     info="darl_iqa: the project's learned IQA (NIQE and PIQE reward invented texture); "
                                          "+ 20*psnr: a fidelity anchor (docs/results.md 2f)")
            c["preset"] = gr.Dropdown(METHODS, value="darl_anchored", label="Method (darl_anchored, darl or an ablation)",
                                      info="darl_anchored: darl with the fidelity anchor and the probe guard (the job "
                                           "hands back the last round within 0.1 dB of its base on held-out crops, "
                                           "with no added flat texture)")
            c["size"] = gr.Radio(size_choices(ctx, "darl_anchored", 40), value="full", elem_id="run-size",
                                 label="Run size (each with its expected time for the chosen samples and rounds)")
            c["rounds"] = fields.Number(40, precision=0, label="Rounds", elem_id="rounds")
            c["estimate"] = gr.Markdown(estimate_text(ctx, "darl_anchored", 40), elem_id="launch-estimate")
            c["samples"] = gr.Textbox("", label="Sample ids (empty: all flagged)")
            c["hardest_k"] = fields.Number(0, precision=0, label="Plus the k hardest of the built-in synthetic pool")
            c["processes"] = fields.Number(1, precision=0, minimum=1, maximum=64,
                                       label="Training processes (GPUs; the batch is split between them)")
            c["launch"] = gr.Button("Launch", variant="primary", elem_id="launch-btn")
            c["msg"] = gr.Markdown(elem_id="launch-msg")
            c["launched"] = fields.Number(None, precision=0, visible=False)  # the id of the job just launched
        with gr.Column(scale=2):
            c["jobs"] = gr.Dataframe(headers=JOB_HEADERS, interactive=False, label="Jobs (click a row to follow it)",
                                     elem_id="jobs-table")
            with gr.Row():
                # A picker, not a number box: empty until a job exists (no "job #0"), and the page load
                # restores this browser's last choice (saved_job) or the newest job.
                c["job"] = gr.Dropdown([], value=None, label="Job", elem_id="job-id", allow_custom_value=False)
                c["cancel"] = gr.Button("Cancel job")
            # rendered by build_app outside the tabs: mounted (and read from localStorage) before the page load
            c["saved_job"] = gr.BrowserState(None, storage_key="darl-finetune-job", render=False)
            c["status"] = gr.Markdown(elem_id="job-status")
            # One small panel per metric, each with its own y axis; hidden until the job has logged that metric.
            # Never created empty (see plot_frame): each starts with a point of its own metric.
            with gr.Column(elem_id="curves"):
                c["curves_md"] = gr.Markdown(curves_title(ctx, None), elem_id="curves-title")
                with gr.Row(equal_height=True):
                    c["panels"] = {m: gr.LinePlot(_frame([(0, 0.0, m)]), x="round", y="value", label=CURVE_TITLES[m],
                                                  visible=False, height=170, min_width=260, scale=1, y_title=m,
                                                  elem_id=f"curve-{m}", elem_classes=["curve-panel"])
                                   for m in CURVES}
            with gr.Row(equal_height=True):
                c["sample_lq"] = gr.Image(label="training input", type="filepath", interactive=False, height=200,
                                          format="png", elem_id="job-sample-input")
                c["sample_out"] = gr.Image(label="after the newest round", type="filepath", interactive=False,
                                           height=200, format="png", elem_id="job-sample")
            c["sample_md"] = gr.Markdown(elem_id="job-sample-caption")
            c["log"] = gr.Textbox(label="Log", lines=8, max_lines=8, autoscroll=True)
            with gr.Accordion("Before and after: did the job pay off?", open=True, elem_id="payoff-box"):
                c["payoff_md"] = gr.Markdown(elem_id="payoff-summary")
                c["payoff_gallery"] = gr.Gallery(label="base model (left) and new model (right), image by image",
                                                 columns=4, height=320, format="png", elem_id="payoff-gallery")
                c["payoff_table"] = gr.Dataframe(headers=PAYOFF_HEADERS, interactive=False, elem_id="payoff-table",
                                                 wrap=True, column_widths=["10%", "14%", "21%", "19%", "17%", "19%"],
                                                 label="Every image: base → new (change in brackets)")
                with gr.Row():
                    c["payoff_pick"] = gr.Dropdown([], value=None, label="Image", elem_id="payoff-pick")
                    c["payoff_open"] = gr.Button("Open in Restore (base model as SFT, new model as RL)",
                                                 elem_id="payoff-open")
            c["shown_state"] = gr.State(None)  # "job:state" last shown: the before and after follows a change
            with gr.Accordion("Compare jobs: one curve per job", open=False):
                with gr.Row():
                    c["compare"] = gr.Dropdown([], value=[], multiselect=True, label="Jobs", elem_id="compare-jobs")
                    c["compare_metric"] = gr.Dropdown(list(CURVES), value="reward", label="Curve")
                first_c = compare_frame(ctx, None)
                c["compare_plot"] = gr.LinePlot(first_c, x="round", y="value", color="metric", elem_id="compare-plot",
                                                label="Compared jobs", color_map=compare_colors(first_c))
                c["compare_colors"] = gr.State(compare_colors(first_c))
    c["timer"] = gr.Timer(2.0)
    return c


def listen(ctx: AppContext, c: dict[str, Any], load_event: Any, shown_event: Any = None) -> None:
    """The tab's events; ``shown_event`` (the tab coming into view) brings the expected times up to date with
    samples flagged or imported since the page loaded."""
    def pick(job: int | float | None, user: str = "anonymous") -> dict[str, Any]:
        return gr.update(choices=job_choices(ctx, user), value=None if job is None else int(job))

    def pick_for(job: int | float | None, request: gr.Request) -> dict[str, Any]:
        """``pick`` among the jobs the caller may see."""
        return pick(job, caller(request))

    @user_messages(3, at=0, lead="Not launched")
    def on_launch(base, reward, preset, rounds, samples, hardest_k, processes=1, size="full",  # noqa: ANN001
                  request: gr.Request = None) -> Any:
        job = launch_job(ctx, base, reward, preset, rounds, samples, caller(request), hardest_k,
                         processes=processes, size=size or "full")
        return f"Job #{job} queued.", job, list_jobs(ctx, caller(request))

    # The API answers the plain job id (c["launched"]); the page then follows the new job in the picker.
    c["launch"].click(on_launch, [c["base"], c["reward"], c["preset"], c["rounds"], c["samples"], c["hardest_k"],
                                  c["processes"], c["size"]],
                      [c["msg"], c["launched"], c["jobs"]], api_name="launch_job").success(
        pick_for, c["launched"], c["job"], api_visibility="private")

    # The expected time of each run size follows the form (and this machine's newest timed job).
    estimate_in = [c["preset"], c["rounds"], c["samples"], c["hardest_k"]]

    def estimates(*a: Any) -> tuple[str, dict[str, Any]]:
        return estimate_text(ctx, *a), gr.update(choices=size_choices(ctx, *a))

    for comp in estimate_in:
        comp.change(estimates, estimate_in, [c["estimate"], c["size"]], api_visibility="private", queue=False)
    for event in (load_event, shown_event) if shown_event is not None else (load_event,):
        event(estimates, estimate_in, [c["estimate"], c["size"]], api_visibility="private")
    c["base"].change(lambda path: model_label(ctx, path), c["base"], c["base_label"], api_visibility="private",
                     queue=False)

    # The page load restores this browser's job (or shows the newest); every choice is saved in the browser.
    def on_load(saved: int | None, request: gr.Request) -> dict[str, Any]:
        return pick(initial_job(ctx, saved, caller(request)), caller(request))

    load_event(on_load, c["saved_job"], c["job"], api_visibility="private")
    c["job"].change(lambda job: job, c["job"], c["saved_job"], api_visibility="private")
    c["job"].focus(pick_for, c["job"], c["job"], api_visibility="private")  # jobs launched elsewhere

    def on_row(evt: gr.SelectData, request: gr.Request) -> dict[str, Any]:
        return pick(job_from_row(evt.row_value), caller(request))

    c["jobs"].select(on_row, None, c["job"], api_visibility="private")

    panels = list(c["panels"].values())

    def drawn(job: int | None) -> list[Any]:
        """Each metric's panel: its curve, shown, or hidden when the job has not logged that metric."""
        frames = curve_panels(ctx, job) if job is not None else {}
        return [gr.update(value=frames[m], visible=True) if m in frames else gr.update(visible=False)
                for m in c["panels"]]

    def on_tick(job, request: gr.Request) -> Any:  # noqa: ANN001
        jobs = list_jobs(ctx, caller(request))
        if job is None:
            return jobs, "", curves_title(ctx, None), "", None, None, "", None, *drawn(None)
        try:
            require_job_view(ctx, job, caller(request))
            st = job_status(ctx, job)
        except UserError as e:
            return jobs, str(e), curves_title(ctx, None), "", None, None, "", None, *drawn(None)
        return (jobs, status_text(st), curves_title(ctx, job), st["log"], *job_sample(ctx, job),
                f"{st['job']}:{st['state']}", *drawn(job))

    outputs = [c["jobs"], c["status"], c["curves_md"], c["log"], c["sample_lq"], c["sample_out"], c["sample_md"],
               c["shown_state"], *panels]
    for trigger in (c["timer"].tick, c["job"].change):
        trigger(on_tick, c["job"], outputs, api_visibility="private", show_progress="hidden")
    for trigger in (c["timer"].tick, load_event):
        trigger(ctx.worker_warning, None, c["worker_warning"], api_visibility="private", show_progress="hidden",
                queue=False)

    # The before and after: drawn when the job shown changes or reaches another state (it finished), not
    # every tick (its pictures would be sent again every 2 s).
    @user_errors
    def on_payoff(job, request: gr.Request) -> Any:  # noqa: ANN001
        require_job_view(ctx, job, caller(request))
        md, table, gallery, choices = payoff_view(ctx, job)
        return md, gallery, table, gr.update(choices=choices, value=choices[0][1] if choices else None)

    c["shown_state"].change(on_payoff, c["job"], [c["payoff_md"], c["payoff_gallery"], c["payoff_table"],
                                                  c["payoff_pick"]], api_visibility="private")

    def on_tile(job, evt: gr.SelectData, request: gr.Request) -> Any:  # noqa: ANN001
        if ctx.sees(caller(request)) is not None and job not in {j.id for j in visible_jobs(ctx, caller(request))}:
            return gr.update()
        picked = payoff_pick_from_gallery(ctx, job, evt.index)
        return gr.update() if picked is None else picked

    c["payoff_gallery"].select(on_tile, c["job"], c["payoff_pick"], api_visibility="private")

    @user_errors
    def on_compare(jobs, metric, request: gr.Request) -> Any:  # noqa: ANN001
        for job in jobs or []:
            require_job_view(ctx, job, caller(request))
        frame = compare_frame(ctx, jobs, metric)
        return frame, compare_colors(frame)

    for trigger in (c["compare"].change, c["compare_metric"].change):
        trigger(on_compare, [c["compare"], c["compare_metric"]], [c["compare_plot"], c["compare_colors"]],
                api_visibility="private").then(lambda colors: gr.update(color_map=colors), c["compare_colors"],
                                               c["compare_plot"], api_visibility="private")
    def compare_choices(request: gr.Request) -> dict[str, Any]:
        return gr.update(choices=job_choices(ctx, caller(request)))

    c["compare"].focus(compare_choices, None, c["compare"], api_visibility="private")

    @user_messages(1, at=0, lead="Not cancelled")
    def on_cancel(job, request: gr.Request) -> Any:  # noqa: ANN001
        return cancel_job(ctx, job, caller(request))

    c["cancel"].click(on_cancel, c["job"], c["msg"], api_visibility="private")

    @user_errors
    def api_status(job: int, request: gr.Request) -> dict[str, Any]:
        require_job_view(ctx, job, caller(request))
        return job_status(ctx, job)

    gr.api(api_status, api_name="job_status")
