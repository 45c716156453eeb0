import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from darl_core.models.loading import load_restorer
from darl_core.data.pool import build_pool
from darl_core.train.rl import RewardMemory, policy_losses, ppo_loss, reference_means, tiny_test, train_rl


def _cfg(tmp_path: Path, model: Path, **kw: object):
    return replace(tiny_test(), output=str(tmp_path / "run"), base_model=str(model), **kw)


def _weights(model_dir: Path) -> dict[str, torch.Tensor]:
    return load_restorer(model_dir).unet.state_dict()


def test_ppo_clipping_and_sign() -> None:
    ratio = torch.tensor([0.5, 0.99, 1.0, 1.01, 2.0])
    pos, neg = torch.ones(5), -torch.ones(5)
    # positive advantage: reward raising rho, but no gain past 1 + eps
    torch.testing.assert_close(ppo_loss(ratio, pos, 0.1), -torch.tensor([0.5, 0.99, 1.0, 1.01, 1.1]))
    # negative advantage: pushing rho down, no gain below 1 - eps
    torch.testing.assert_close(ppo_loss(ratio, neg, 0.1), torch.tensor([0.9, 0.99, 1.0, 1.01, 2.0]))
    r = torch.tensor([1.0], requires_grad=True)
    ppo_loss(r, torch.tensor([2.0]), 0.1).sum().backward()
    assert float(r.grad) == -2.0  # descending the loss raises the probability of a good action


def test_old_log_probs_reproduced_and_kl_zero_at_reference(tiny_model_dir: Path) -> None:
    pipe = load_restorer(tiny_model_dir)
    traj = pipe.rollout(torch.rand(2, 3, 16, 16), 4, eta=1.0, generator=torch.Generator().manual_seed(0))
    assert len(traj.timesteps) == 3 and traj.final.shape == (2, 3, 16, 16)
    ref_means = reference_means(pipe, traj, 1.0, load_restorer(tiny_model_dir).unet, False)
    for k in range(3):
        loss, kl, ratio, clipped = policy_losses(pipe, traj, k, torch.ones(2), 1.0, 1e-4, ref_means[k])
        torch.testing.assert_close(ratio, torch.ones(2), rtol=0, atol=1e-5)
        assert float(kl.detach().abs().max()) < 1e-8 and float(clipped.sum()) == 0
        assert loss.requires_grad


def test_reward_memory() -> None:
    mem = RewardMemory(size=3, min_count=2)
    # first sight of each key: batch statistics
    a = mem.advantages(["a", "b"], torch.tensor([1.0, 3.0]), clip=5)
    torch.testing.assert_close(a, torch.tensor([-1.0, 1.0]), atol=1e-5, rtol=0)
    # second sight: per-key statistics (a's history [1, 2] -> mean 1.5, std 0.5)
    a = mem.advantages(["a", "b"], torch.tensor([2.0, 3.0]), clip=5)
    assert float(a[0]) == pytest.approx(1.0, abs=1e-4) and float(a[1]) == pytest.approx(0.0, abs=1e-4)
    mem.advantages(["a"], torch.tensor([100.0]), clip=5)
    assert list(mem.buffers["a"]) == [1.0, 2.0, 100.0]
    mem.advantages(["a"], torch.tensor([7.0]), clip=0.5)
    assert list(mem.buffers["a"]) == [2.0, 100.0, 7.0]  # bounded buffer
    assert float(mem.advantages(["a"], torch.tensor([1e6]), clip=1.0)) == 1.0  # z = 1.41 clipped to 1
    other = RewardMemory(3, 2)
    other.load_state_dict(mem.state_dict())
    assert other.buffers.keys() == mem.buffers.keys()


@pytest.mark.slow
def test_w1_is_pure_rl_and_w0_is_pure_sft(tmp_path: Path, tiny_model_dir: Path) -> None:
    def run(name: str, **kw: object) -> dict[str, torch.Tensor]:
        cfg = _cfg(tmp_path / name, tiny_model_dir, rounds=1, adaptive_weight=False, beta_kl=0.0, **kw)
        return _weights(train_rl(cfg))

    base = _weights(tiny_model_dir)
    rl_only = run("a", uniform_weight=1.0, lambda_sft=0.0)
    rl_with_sft_weight = run("b", uniform_weight=1.0, lambda_sft=1.0)
    assert all(torch.equal(rl_only[k], rl_with_sft_weight[k]) for k in base)  # (1 - w) = 0 silences SFT
    assert any(not torch.equal(rl_only[k], base[k]) for k in base)
    sft_psnr = run("c", uniform_weight=0.0, reward="psnr")
    sft_ssim = run("d", uniform_weight=0.0, reward="ssim")
    assert all(torch.equal(sft_psnr[k], sft_ssim[k]) for k in base)  # w = 0 silences the reward
    assert any(not torch.equal(sft_psnr[k], base[k]) for k in base)


@pytest.mark.slow
def test_resume_after_interruption_matches_uninterrupted(tmp_path: Path, tiny_model_dir: Path) -> None:
    full = _weights(train_rl(_cfg(tmp_path / "full", tiny_model_dir, rounds=3)))
    rounds: list[int] = []
    cb = {"on_round": lambda r: rounds.append(r["round"]), "should_stop": lambda: len(rounds) >= 2}
    train_rl(_cfg(tmp_path / "cut", tiny_model_dir, rounds=3, ckpt_every=100), callbacks=cb)
    assert rounds == [1, 2]
    log = tmp_path / "cut" / "run" / "metrics.jsonl"
    with open(log, "a") as f:  # a round 3 that ran, then crashed before its checkpoint
        f.write('{"round": 3, "reward": 999.0}\n')
    resumed = _weights(train_rl(_cfg(tmp_path / "cut", tiny_model_dir, rounds=3), resume=True))
    assert all(torch.equal(full[k], resumed[k]) for k in full)
    recs = [json.loads(line) for line in open(log)]
    assert [r["round"] for r in recs] == [1, 2, 3] and recs[-1]["reward"] != 999.0  # redone, logged once
    for r in recs:  # where a round's time went: pool difficulty, rollouts (with rewards), updates
        parts = r["difficulty_s"] + r["rollout_s"] + r["update_s"]
        assert min(r["difficulty_s"], r["rollout_s"], r["update_s"]) > 0 and parts <= r["round_s"] + 0.01


@pytest.mark.slow
def test_lora_darl_round_and_pool_from_samples_file(tmp_path: Path, tiny_model_dir: Path) -> None:
    from darl_core.data.images import save_tensor

    items = []
    for i in range(3):
        save_tensor(torch.rand(3, 40, 40), tmp_path / f"lq{i}.png")
        item = {"id": f"flag-{i}", "lq": str(tmp_path / f"lq{i}.png")}
        if i < 2:
            save_tensor(torch.rand(3, 40, 40), tmp_path / f"gt{i}.png")
            item["gt"] = str(tmp_path / f"gt{i}.png")
        items.append(item)
    (tmp_path / "samples.json").write_text(json.dumps(items))
    cfg = _cfg(tmp_path, tiny_model_dir, samples_file=str(tmp_path / "samples.json"), reward="ssim",
               lora_rank=4, rounds=2)
    pool = build_pool(cfg)
    assert [s.id for s in pool] == ["flag-0", "flag-1", "flag-2"] and pool[2].gt is None
    model = train_rl(cfg)
    merged = _weights(model)
    base = _weights(tiny_model_dir)
    assert merged.keys() == base.keys()
    assert any(not torch.equal(merged[k], base[k]) for k in base)
    log = [json.loads(line) for line in open(tmp_path / "run" / "difficulty.jsonl")]
    assert log[0]["ids"] == ["flag-0", "flag-1", "flag-2"] and log[0]["difficulty"][2] is None
    # flagged samples plus the 2 hardest of a synthetic pool of 4, chosen the same way on a rerun
    for run in ("x1", "x2"):
        train_rl(replace(cfg, output=str(tmp_path / run), extra_hardest_k=2, lora_rank=0, rounds=1))
    ids = [json.loads(open(tmp_path / r / "difficulty.jsonl").readline())["ids"] for r in ("x1", "x2")]
    assert ids[0] == ids[1] and ids[0][:3] == ["flag-0", "flag-1", "flag-2"] and len(ids[0]) == 5
    assert all(i.startswith("syn-") for i in ids[0][3:])


def test_group_advantages_compare_rollouts_of_one_input() -> None:
    from darl_core.train.rl import group_advantages

    r = torch.tensor([1.0, 2.0, 3.0, 10.0, 10.0, 10.0])  # two inputs, 3 rollouts each
    a = group_advantages(r, 3, clip=5.0)
    assert torch.allclose(a[:3], torch.tensor([-1.2247, 0.0, 1.2247]), atol=1e-4)
    assert torch.equal(a[3:], torch.zeros(3))  # identical rollouts: no signal, whatever the input's level
    assert float(group_advantages(torch.tensor([0.0] * 9 + [1e6]), 10, clip=2.0).max()) == 2.0  # z = 3, clipped


def test_weighted_sampling_draws_hard_samples_more_and_easy_ones_too() -> None:
    from darl_core.train.rl import _choose

    cfg = replace(tiny_test(), batch_size=2, sampling="weighted", sampling_floor=0.25)
    d = torch.linspace(0, 1, 8)
    w = torch.tensor([0.0, 0.0, 0.0, 0.2, 0.6, 1.0, 1.0, 1.0])
    g = torch.Generator().manual_seed(0)
    counts = torch.zeros(8)
    for _ in range(2000):
        for i in _choose(d, torch.ones(8, dtype=torch.bool), w, cfg, g).tolist():
            counts[i] += 1
    assert counts[7] > 3 * counts[0] > 0  # ~ (1 + 0.25) / 0.25 = 5x, without replacement a bit less
    hardest = replace(cfg, sampling="hardest", hard_fraction=0.5)
    picks = {i for _ in range(200) for i in _choose(d, torch.ones(8, dtype=torch.bool), w, hardest, g).tolist()}
    assert picks == {4, 5, 6, 7}


@pytest.mark.slow
def test_group_round_logs_the_diagnostics(tmp_path: Path, tiny_model_dir: Path) -> None:
    cfg = _cfg(tmp_path, tiny_model_dir, rounds=2, group_size=3, probe_every=1, lambda_sft=1.0, beta_kl=0.1,
               stochastic_last=True)
    train_rl(cfg)
    recs = [json.loads(x) for x in open(tmp_path / "run" / "metrics.jsonl")]
    assert recs[0]["round"] == 0 and {"probe_reward", "probe_psnr", "probe_flat_hf"} <= set(recs[0])  # the start
    recs = recs[1:]
    for r in recs:
        for k in ("grad_norm_rl", "grad_norm_kl", "grad_norm_sft", "group_reward_std", "approx_kl", "probe_reward",
                  "probe_psnr", "probe_flat_hf", "pool_w_mean", "pool_w0_share", "pool_w1_share", "reward_s",
                  "reference_s", "probe_s"):
            assert k in r and r[k] == r[k], k  # present and not NaN
        assert len(r["clip_frac_epochs"]) == cfg.epochs and r["grad_norm_rl"] > 0
        assert len(r["reward_steps"]) == cfg.num_steps  # the last step is stochastic: every step is trained
    assert "rl_grad_cos_prev" in recs[1] and -1 <= recs[1]["rl_grad_cos_prev"] <= 1
    diff = [json.loads(x) for x in open(tmp_path / "run" / "difficulty.jsonl")]
    assert len(diff[0]["batch"]) == len(diff[0]["w"]) == cfg.batch_size


def test_stochastic_last_step_has_a_log_probability(tiny_model_dir: Path) -> None:
    pipe = load_restorer(tiny_model_dir)
    lq = torch.rand(2, 3, 16, 16)
    plain = pipe.rollout(lq, 3, 1.0, torch.Generator().manual_seed(0))
    assert len(plain.timesteps) == 2  # trailing spacing ends at abar = 1: deterministic last step
    pipe.scheduler.final_alpha_cumprod = pipe.scheduler.alphas_cumprod[0]
    stoch = pipe.rollout(lq, 3, 1.0, torch.Generator().manual_seed(0))
    assert len(stoch.timesteps) == 3 and torch.isfinite(stoch.log_prob[-1]).all()


def test_fast_family_trains_and_snapshots_give_one_pareto_point_each(tmp_path: Path) -> None:
    """The ``fast`` denoiser (pixel-unshuffled by 2) is an ordinary policy: old log-probs are reproduced
    and a LoRA round changes its merged weights. ``snapshot_every`` keeps a model per N rounds, and
    bench/pareto.py scores each on the independent set (fidelity against the reward, the base as round 0)."""
    import csv
    import sys

    from darl_core.models.pipeline import RestorationPipeline, build_stage1, build_unet, make_scheduler

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
    import pareto

    base = tmp_path / "fast"
    RestorationPipeline(build_unet("tiny_fast", 0), make_scheduler(), 0.5,
                        stage1=build_stage1("tiny", 0)).save_pretrained(base)
    pipe = load_restorer(base)
    traj = pipe.rollout(torch.rand(2, 3, 16, 16), 3, eta=1.0, generator=torch.Generator().manual_seed(0))
    ref_means = reference_means(pipe, traj, 1.0, load_restorer(base).unet, False)
    loss, kl, ratio, _ = policy_losses(pipe, traj, 0, torch.ones(2), 1.0, 1e-4, ref_means[0])
    torch.testing.assert_close(ratio, torch.ones(2), rtol=0, atol=1e-5)
    run = tmp_path / "run"
    model = train_rl(_cfg(tmp_path, base, lora_rank=4, rounds=2, snapshot_every=1))
    merged, before = _weights(model), _weights(base)
    assert load_restorer(model).unshuffle == 2
    assert any(not torch.equal(merged[k], before[k]) for k in before)
    assert sorted(p.name for p in (run / "snapshots").iterdir()) == ["round-0001", "round-0002"]
    assert [r for r, _ in pareto.run_points(run)] == [1, 2]
    out = tmp_path / "pareto"
    pareto.main(["--base", str(base), "--runs", f"darl={run}", "--reward", "darl_iqa", "--other", "piqe",
                 "--also", "brisque", "--seeds", "0", "--per-image", "1", "--size", "48", "--max-crops", "4", "--out", str(out)])
    rows = list(csv.DictReader(open(out / "pareto.csv")))
    assert [(r["round"], r["subset"]) for r in rows] == [("0", "all"), ("0", "hardest"), ("1", "all"),
                                                         ("1", "hardest"), ("2", "all"), ("2", "hardest")]
    # round 0 is the base model: PIQE in its own units (0-100), PSNR of a (poor) restorer
    assert 0 < float(rows[0]["other"]) < 100 and float(rows[0]["psnr"]) > 5
    # --also: BRISQUE (official LIVE model, shipped) scored per point, in the csv and both tables
    assert all(-50 < float(r["brisque"]) < 200 for r in rows) and rows[0]["brisque"] != rows[4]["brisque"]
    assert "brisque ↓" in (out / "pareto.md").read_text()
    assert float(rows[1]["ssim"]) <= float(rows[0]["ssim"])  # the hardest quartile: the base model's worst SSIM
    assert (out / "pareto.png").stat().st_size > 10_000 and "| darl | 2 | all |" in (out / "pareto.md").read_text()


def test_pareto_by_method_averages_training_seeds_and_applies_the_two_std_bar() -> None:
    """Runs of one method (training seeds) are averaged per round; the gain over the base model counts
    only when it exceeds twice the seed-to-seed std, and a round missing from one seed is left out."""
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
    import pareto

    def row(run: str, rnd: int, subset: str, reward: float, psnr: float = 28.0) -> dict:
        return {"run": run, "method": run.split("-s")[0], "round": rnd, "subset": subset, "psnr": psnr,
                "ssim": 0.8, "reward": reward, "other": 6.0, "flat_hf": 2.0}

    rows = [row("darl", 0, "all", 10.0), row("darl", 0, "hardest", 9.0)]
    for run, gain in (("darl", 1.0), ("darl-s1", 1.2), ("darl-s2", 0.8), ("noisy", 1.0), ("noisy-s1", -0.6)):
        rows += [row(run, 4, "all", 10.0 + gain, 28.1), row(run, 4, "hardest", 9.0 + gain)]
    rows.append(row("darl", 8, "all", 12.0))  # only seed 0 reached round 8
    agg = {(a["method"], a["round"], a["subset"]): a for a in pareto.by_method(rows)}
    assert set(agg) == {("darl", 4, "all"), ("darl", 4, "hardest"), ("noisy", 4, "all"), ("noisy", 4, "hardest")}
    d = agg[("darl", 4, "all")]
    assert d["n_runs"] == 3 and abs(d["d_reward"] - 1.0) < 1e-9 and abs(d["reward_std"] - 0.2) < 1e-9
    assert abs(d["d_psnr"] - 0.1) < 1e-9 and d["reward_gain_over_2std"]
    n = agg[("noisy", 4, "all")]  # mean gain 0.2, std 1.13: not a gain
    assert abs(n["d_reward"] - 0.2) < 1e-9 and not n["reward_gain_over_2std"]


def test_rl_diagnostics_reports_which_term_leads(tmp_path: Path) -> None:
    """bench/rl_diagnostics.py: medians over rounds of the per-term gradient norms, their ratio, and the
    pool's w at the first and last round, per run and per method (seeds pooled)."""
    import json
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
    import rl_diagnostics

    for name, rl in (("darl", [0.01, 0.02, 0.03]), ("darl-s1", [0.05, 0.05, 0.05])):
        (tmp_path / name).mkdir()
        recs = [{"round": i + 1, "grad_norm_rl": g, "grad_norm_sft": 0.01, "grad_norm_kl": 0.001,
                 "rl_grad_cos_prev": None if i == 0 else 0.5, "pool_w_mean": 0.5 - 0.1 * i} for i, g in enumerate(rl)]
        (tmp_path / name / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in recs) + "\n")
    s = rl_diagnostics.summarise([json.loads(x) for x in (tmp_path / "darl" / "metrics.jsonl").read_text().splitlines()])
    assert s["grad_norm_rl"] == 0.02 and abs(s["rl_over_sft"] - 2.0) < 1e-9 and s["rl_grad_cos_prev"] == 0.5
    assert s["pool_w_mean_first"] == 0.5 and abs(s["pool_w_mean_last"] - 0.3) < 1e-9 and s["group_reward_std"] is None
    out = tmp_path / "diag.md"
    rl_diagnostics.main([str(tmp_path / "darl"), str(tmp_path / "darl-s1"), "--out", str(out)])
    method_row = out.read_text().split("Per method")[1].splitlines()[-1]
    # pooled median of [0.01, 0.02, 0.03, 0.05, 0.05, 0.05] is 0.04: RL 4x SFT; pool w 0.5 -> 0.3 in both seeds
    assert method_row.startswith("| darl | 6 | 0.0400 | 0.0100 |") and "| 4.00 |" in method_row and "0.500 → 0.300" in method_row and "| method | rounds |" in out.read_text()


def test_w_anchored_at_the_start_falls_as_the_pool_gets_easier(tmp_path: Path, tiny_model_dir: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """With the current pool's quantiles (docs/method.md, step 7) the pool's mean w is scale-free: a pool that gets
    uniformly easier keeps its w. Anchored at the first round's quantiles, w falls with the difficulty,
    so samples move from RL to SFT; the anchor survives an exact resume."""
    import darl_core.train.rl as rl

    calls = {"n": 0}

    def shrinking(policy, pool, cfg, device, procs=None, conds=None) -> torch.Tensor:  # every sample 30 % easier per round
        calls["n"] += 1
        return torch.linspace(0.1, 0.4, len(pool)) * 0.7 ** (calls["n"] - 1)

    monkeypatch.setattr(rl, "pool_difficulty", shrinking)
    means = {}
    for anchor in ("pool", "start"):
        calls["n"] = 0
        out = tmp_path / anchor
        train_rl(replace(_cfg(tmp_path, tiny_model_dir, rounds=2, diag_every=0), output=str(out),
                         w_anchor=anchor))
        means[anchor] = [json.loads(x)["pool_w_mean"] for x in open(out / "metrics.jsonl")]
    assert means["pool"] == pytest.approx([0.5, 0.5])
    assert means["start"][0] == pytest.approx(0.5) and means["start"][1] < 0.4
    state = torch.load(rl.latest_checkpoint(tmp_path / "start") / "train_state.pt", weights_only=False)
    torch.testing.assert_close(state["difficulty_start"], torch.linspace(0.1, 0.4, 4))
    with pytest.warns(UserWarning, match="w_anchor 'start' -> 'pool'"):  # a resume that changes it says so
        calls["n"] = 0
        train_rl(replace(_cfg(tmp_path, tiny_model_dir, rounds=3, diag_every=0), output=str(tmp_path / "start")),
                 resume=True)
    with pytest.raises(ValueError, match="w_anchor"):
        train_rl(replace(_cfg(tmp_path, tiny_model_dir), w_anchor="first"))  # type: ignore[arg-type]
    from darl_core.cli.train_rl import main as cli

    for flag in ("--w-anchor", "--sampling", "--advantage"):  # the command line refuses a bad word before loading
        with pytest.raises(SystemExit) as bad:
            cli(["--preset", "tiny_test", flag, "first"])
        assert bad.value.code == 2


def _two_stage(tmp_path: Path) -> Path:
    from darl_core.models.pipeline import RestorationPipeline, build_stage1, build_unet, make_scheduler

    base = tmp_path / "two_stage"
    RestorationPipeline(build_unet("tiny", 0), make_scheduler(), 0.5, stage1=build_stage1("tiny", 0)).save_pretrained(base)
    return base


@pytest.mark.slow
def test_round_shortcuts_train_bit_identically(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The round's shortcuts change no number: the pool conditioned once (stage 1 is never trained) and the
    first PPO epoch backpropagating through the rollout's own forward pass give the weights and logs of a
    run that conditions every input again and repeats the forward pass (KL and SFT terms on)."""
    from darl_core.models.pipeline import RestorationPipeline

    base = _two_stage(tmp_path)
    cfg = _cfg(tmp_path, base, rounds=2, beta_kl=0.1, lambda_sft=1.0, epochs=2, group_size=3)
    fast = train_rl(replace(cfg, output=str(tmp_path / "fast")))
    monkeypatch.setattr(RestorationPipeline, "fixed_condition", False)
    slow = train_rl(replace(cfg, output=str(tmp_path / "slow"), keep_rollout_graph=False))
    a, b = _weights(fast), _weights(slow)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], _weights(base)[k]) for k in a)  # it did train

    def logged(run: str) -> list[dict]:
        return [{k: v for k, v in json.loads(x).items() if not k.endswith("_s")} for x in open(tmp_path / run / "metrics.jsonl")]
    assert logged("fast") == logged("slow")


def test_sft_term_once_per_input(tmp_path: Path, tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``sft_per_input``: the SFT term sees each of the m inputs once, not each of its G rollouts."""
    from darl_core.models.pipeline import RestorationPipeline

    rows: list[int] = []
    real = RestorationPipeline.sft_loss

    def spy(self: RestorationPipeline, lq: torch.Tensor, *a: object, **k: object) -> torch.Tensor:
        rows.append(lq.shape[0])
        return real(self, lq, *a, **k)
    monkeypatch.setattr(RestorationPipeline, "sft_loss", spy)
    cfg = _cfg(tmp_path, tiny_model_dir, rounds=1, group_size=3, lambda_sft=1.0, reward="piqe", epochs=1,
               adaptive_weight=False, uniform_weight=0.5)
    train_rl(cfg)
    train_rl(replace(cfg, output=str(tmp_path / "rows"), sft_per_input=False))
    assert rows == [cfg.batch_size, cfg.batch_size * cfg.group_size]


def test_probe_sees_invented_texture(tmp_path: Path) -> None:
    """What the probe of the earlier darl runs missed: a policy that paints faint texture over its output
    raises a no-reference reward that likes texture (PIQE) while PSNR falls. The probe restores held-out
    crops as the app does and reports all three, so the log shows the reward rising for the wrong reason.
    (The policy here returns its conditioning, set to the degraded crop, then the same plus noise.)"""
    from darl_core.rewards.registry import create_reward
    from darl_core.train.rl_probe import probe_set, run_probe

    policy = load_restorer(_two_stage(tmp_path))
    cfg = replace(tiny_test(), patch=64, probe_crops=4, reward="piqe")
    probe = probe_set(cfg, 1, [])
    assert probe[0].shape == (4, 3, 64, 64) and probe[1] is not None
    conds = probe[0] * 2 - 1
    reward = create_reward("piqe")
    g = torch.Generator().manual_seed(0)
    policy.to_image = lambda x0, cond: (cond + 1) / 2
    before = run_probe(policy, probe, conds, reward, cfg, torch.device("cpu"))
    policy.to_image = lambda x0, cond: ((cond + 1) / 2 + 0.01 * torch.randn(cond.shape, generator=g)).clamp(0, 1)
    after = run_probe(policy, probe, conds, reward, cfg, torch.device("cpu"))
    assert after["probe_reward"] > before["probe_reward"] + 5  # the reward says "much better"
    assert after["probe_psnr"] < before["probe_psnr"] - 0.1  # fidelity says worse
    assert after["probe_flat_hf"] > 1.3 * before["probe_flat_hf"]  # flat areas got more texture


def test_stage1_reference_anchors_without_ground_truth(tmp_path: Path, tiny_model_dir: Path) -> None:
    """``reward_reference="stage1"``: a full-reference reward compares each rollout with stage 1's
    restoration of its input, so samples without a ground truth are trained too; a model without a
    stage 1 is refused with the reason."""
    from darl_core.train.rl import stage1_images

    base = _two_stage(tmp_path)
    policy = load_restorer(base)
    lq = torch.rand(2, 3, 32, 32)
    cond = policy.conditioning(lq)
    torch.testing.assert_close(stage1_images(policy, cond), policy.restore_tensor(lq, 0, tile_size=None))
    items = [{"id": f"s{i}", "lq": str(tmp_path / f"lq{i}.png")} for i in range(2)]  # no ground truths
    from darl_core.data.images import tensor_to_pil

    for i, it in enumerate(items):  # noqa: B007
        tensor_to_pil(torch.rand(3, 32, 32)).save(it["lq"])
    (tmp_path / "samples.json").write_text(json.dumps(items))
    cfg = _cfg(tmp_path, base, rounds=1, reward="psnr", reward_reference="stage1", samples_file=str(tmp_path / "samples.json"),
               probe_every=1, adaptive_weight=False, uniform_weight=1.0)
    model = train_rl(cfg)
    recs = [json.loads(x) for x in open(tmp_path / "run" / "metrics.jsonl")]
    assert recs[-1]["group_reward_std"] > 0 and recs[-1]["reward"] > 10  # dB against stage 1, per rollout
    assert any(not torch.equal(_weights(model)[k], _weights(base)[k]) for k in _weights(base))
    with pytest.raises(ValueError, match="has no stage 1"):
        train_rl(replace(cfg, base_model=str(tiny_model_dir), output=str(tmp_path / "x")))


def test_keep_freed_memory_applies_once_and_can_be_turned_off(monkeypatch: pytest.MonkeyPatch) -> None:
    """On Linux with glibc the allocator setting applies (and is idempotent); DARL_KEEP_FREED_MEMORY=0 skips it."""
    import importlib
    import sys

    import darl_core.train.allocator as allocator

    try:
        monkeypatch.setenv("DARL_KEEP_FREED_MEMORY", "0")
        assert importlib.reload(allocator).keep_freed_memory() is False
        monkeypatch.delenv("DARL_KEEP_FREED_MEMORY")
        fresh = importlib.reload(allocator)
        glibc = sys.platform.startswith("linux") and "glibc" in " ".join(__import__("platform").libc_ver())
        assert fresh.keep_freed_memory() is glibc and fresh.keep_freed_memory() is glibc
    finally:
        importlib.reload(allocator)


def test_auto_reference_uses_the_truth_where_there_is_one(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``reward_reference="auto"``: rollouts of a sample with a ground truth are scored against it, those of a
    sample without one against stage 1's restoration; both samples are trained."""
    from darl_core.data.images import tensor_to_pil
    from darl_core.rewards.registry import Reward
    from darl_core.train.rl import stage1_images

    base = _two_stage(tmp_path)
    gt = torch.rand(3, 32, 32)
    items = []
    for i in range(2):
        lq = tmp_path / f"lq{i}.png"
        tensor_to_pil(torch.rand(3, 32, 32)).save(lq)
        items.append({"id": f"s{i}", "lq": str(lq)})
    tensor_to_pil(gt).save(tmp_path / "gt0.png")
    items[0]["gt"] = str(tmp_path / "gt0.png")
    (tmp_path / "samples.json").write_text(json.dumps(items))
    refs: list[torch.Tensor] = []
    real = Reward.__call__

    def spy(self: Reward, x: torch.Tensor, ref: torch.Tensor | None = None) -> torch.Tensor:
        refs.append(ref.clone())
        return real(self, x, ref)
    monkeypatch.setattr(Reward, "__call__", spy)
    cfg = _cfg(tmp_path, base, rounds=1, reward="psnr", reward_reference="auto", samples_file=str(tmp_path / "samples.json"),
               adaptive_weight=False, uniform_weight=1.0, batch_size=2, group_size=2, sampling="hardest", hard_fraction=1.0)
    train_rl(cfg)
    from darl_core.data.pool import build_pool

    pool = {s.id: s for s in build_pool(cfg)}
    policy = load_restorer(base)
    s1 = stage1_images(policy, policy.conditioning(pool["s1"].lq[None]))[0]
    ref = refs[0]
    matched = {"gt": 0, "stage1": 0}
    for row in ref:
        if torch.allclose(row, pool["s0"].gt, atol=1e-6):
            matched["gt"] += 1
        elif torch.allclose(row, s1, atol=1e-5):
            matched["stage1"] += 1
    assert matched["gt"] + matched["stage1"] == len(ref) and min(matched.values()) > 0


def test_probe_guard_exports_the_last_round_the_probe_passed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``guard_psnr``: a probed round that loses PSNR (or gains flat-area texture, or reward) fails; the run stops
    after ``guard_patience`` failures and exports the last passing round's weights, saying so in guard.json."""
    import darl_core.train.rl as rl

    probes = iter([{"probe_psnr": 30.0, "probe_flat_hf": 2.0, "probe_reward": 30.0},  # round 0
                   {"probe_psnr": 30.0, "probe_flat_hf": 1.9, "probe_reward": 31.0},  # round 1: passes
                   {"probe_psnr": 29.5, "probe_flat_hf": 1.9, "probe_reward": 33.0},  # round 2: PSNR -0.5 dB
                   {"probe_psnr": 30.0, "probe_flat_hf": 2.5, "probe_reward": 33.0}])  # round 3: more texture
    monkeypatch.setattr(rl, "run_probe", lambda *a, **k: dict(next(probes)))
    base = _two_stage(tmp_path)
    cfg = _cfg(tmp_path, base, rounds=6, probe_every=1, guard_psnr=0.2, guard_patience=2, snapshot_every=1)
    model = train_rl(cfg)
    guard = json.loads((tmp_path / "run" / "guard.json").read_text())
    assert guard["exported_round"] == 1 and guard["last_round"] == 3 and "worse" in guard["why"]
    recs = [json.loads(x) for x in open(tmp_path / "run" / "metrics.jsonl")]
    assert [r.get("guard_ok") for r in recs] == [None, 1.0, 0.0, 0.0]  # stopped after two failures
    exported, round1 = _weights(model), _weights(tmp_path / "run" / "snapshots" / "round-0001")
    assert all(torch.equal(exported[k], round1[k]) for k in exported)


def test_probe_guard_hands_back_the_base_model_when_no_round_passes(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    import darl_core.train.rl as rl

    probes = iter([{"probe_psnr": 30.0, "probe_flat_hf": 2.0}] + [{"probe_psnr": 29.0, "probe_flat_hf": 2.0}] * 3)
    monkeypatch.setattr(rl, "run_probe", lambda *a, **k: dict(next(probes)))
    base = _two_stage(tmp_path)
    model = train_rl(_cfg(tmp_path, base, rounds=4, probe_every=1, guard_psnr=0.2, guard_patience=2))
    assert "base model, unchanged" in json.loads((tmp_path / "run" / "guard.json").read_text())["why"]
    exported, before = _weights(model), _weights(base)
    assert all(torch.equal(exported[k], before[k]) for k in before)


def test_reward_backpropagation_trains_through_the_sampler(tmp_path: Path, tiny_model_dir: Path) -> None:
    """``rl_estimator="backprop"``: the RL term is minus the reward, differentiated through the sampler's last
    steps; the gradient of PSNR moves the weights, the reward is logged; a reward without a gradient is refused
    before training."""
    from darl_core.rewards.registry import create_reward
    from darl_core.train.rl import sample_with_grad

    policy = load_restorer(tiny_model_dir)
    lq, gt = torch.rand(2, 3, 16, 16), torch.rand(2, 3, 16, 16)
    img = sample_with_grad(policy, lq, 3, 0.0, __import__("darl_core.models.restorer", fromlist=["Noise"]).Noise(
        torch.Generator().manual_seed(0)), None, 1)
    torch.testing.assert_close(img.detach(), policy.restore_tensor(lq, 3, generator=torch.Generator().manual_seed(0),
                                                                   tile_size=None))  # the restore itself
    create_reward("psnr").with_grad(img, gt).sum().backward()
    grads = [p.grad for p in policy.unet.parameters() if p.grad is not None]
    assert grads and any(float(g.abs().sum()) > 0 for g in grads)
    cfg = _cfg(tmp_path, tiny_model_dir, rounds=2, rl_estimator="backprop", backprop_steps=2, eta=0.0,
               adaptive_weight=False, uniform_weight=1.0, beta_kl=0.0)
    model = train_rl(cfg)
    recs = [json.loads(x) for x in open(tmp_path / "run" / "metrics.jsonl")]
    assert all(r["reward"] == r["reward"] and "loss_rl" in r for r in recs)
    assert any(not torch.equal(_weights(model)[k], _weights(tiny_model_dir)[k]) for k in _weights(tiny_model_dir))
    with pytest.raises(ValueError, match="differentiable reward; \\['niqe'\\]"):
        train_rl(replace(cfg, reward="niqe", output=str(tmp_path / "niqe")))


def test_config_checks_run_when_the_config_is_built() -> None:
    """Bad values and combinations are refused by RLConfig itself, naming them, before any model loads (a job's
    stored config goes through the same check)."""
    from darl_core.train.rl import RLConfig

    for kw, msg in (({"group_size": 1}, "advantage 'group' needs group_size >= 2, got group_size 1"),
                    ({"sampling": "random"}, "sampling must be one of weighted, hardest, got 'random'"),
                    ({"lr": -1e-5}, "lr must not be negative"), ({"guard_psnr": 0.1}, "needs the probe"),
                    ({"rl_estimator": "reinforce"}, "rl_estimator must be one of ppo, backprop")):
        with pytest.raises(ValueError, match=msg):
            RLConfig(**kw)
    with pytest.raises(ValueError, match="batch_size must be at least 1"):
        RLConfig.from_dict({"batch_size": 0})
    assert RLConfig(group_size=1, rl_estimator="backprop", reward="psnr").group_size == 1  # no advantage to normalise
    with pytest.raises(ValueError, match=r"differentiable reward; \['niqe'\] are not"):  # the reward spec, too
        RLConfig(rl_estimator="backprop", reward="psnr + niqe")
    with pytest.raises(ValueError, match="cannot parse reward spec"):
        RLConfig(reward="niqe piqe")


def test_last_step_anchor_is_zero_at_the_reference_and_trains(tmp_path: Path, tiny_model_dir: Path) -> None:
    """``beta_last``: the deterministic last step's mean against the reference's, with a variance floor; zero while
    the policy is the reference, logged per round with its own gradient norm."""
    from darl_core.train.rl import last_step_anchor

    pipe = load_restorer(tiny_model_dir)
    traj = pipe.rollout(torch.rand(2, 3, 16, 16), 3, eta=1.0, generator=torch.Generator().manual_seed(0))
    anchor = last_step_anchor(pipe, traj, load_restorer(tiny_model_dir).unet, False, 0.05)
    assert anchor is not None and anchor.requires_grad and float(anchor.detach().abs().max()) < 1e-8
    train_rl(_cfg(tmp_path, tiny_model_dir, rounds=2, beta_last=0.5, diag_every=1))
    recs = [json.loads(x) for x in open(tmp_path / "run" / "metrics.jsonl")]
    assert all("kl_last" in r and "grad_norm_last" in r for r in recs) and recs[-1]["kl_last"] > 0


def test_judge_check_scores_the_truth_and_restorations_moved_towards_it(tmp_path: Path) -> None:
    """bench/judge_check.py: a judge's scores of the truth, the SFT output, another model's and the SFT output
    moved part of the way to the truth; moving towards the truth raises PSNR and lowers flat-area texture."""
    import sys

    from darl_core.models.pipeline import RestorationPipeline, build_stage1, build_unet, make_scheduler

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
    import judge_check

    base = tmp_path / "fast"
    RestorationPipeline(build_unet("tiny_fast", 0), make_scheduler(), 0.5,
                        stage1=build_stage1("tiny", 0)).save_pretrained(base)
    out = tmp_path / "judges.md"
    judge_check.main(["--base", str(base), "--models", f"other={base}", "--judges", "piqe", "brisque",
                      "--towards", "0.5", "--seeds", "0", "--size", "48", "--max-crops", "3", "--out", str(out)])
    rows = {line.split(" | ")[0].strip("| "): line.split(" | ") for line in out.read_text().splitlines()
            if line.startswith("| ") and not line.startswith("| image")}
    assert set(rows) == {"the degraded input", "the ground truth", "SFT", "other", "SFT, 0.5 of the way to the truth"}
    assert float(rows["SFT, 0.5 of the way to the truth"][1]) > float(rows["SFT"][1]) + 3  # PSNR: 6 dB closer
    assert float(rows["SFT, 0.5 of the way to the truth"][2]) < float(rows["SFT"][2]) / 2  # flat_hf: 4x less
    assert rows["the ground truth"][2] == "1.00" and rows["the ground truth"][1] == "—"
    assert rows["other"][3].endswith("(0 %)")  # the same model is never scored better than itself


def test_a_cancel_stops_training_inside_a_long_round(tmp_path: Path, tiny_model_dir: Path) -> None:
    """``should_stop`` is checked between a round's phases and PPO steps: a round of many epochs (here
    about 10 s uncut) stops within a second of the cancel, unlogged, and says so in stopped.json."""
    import time

    uncut = time.time()
    train_rl(_cfg(tmp_path / "timed", tiny_model_dir, rounds=1, epochs=40))
    per_epoch = (time.time() - uncut) / 40
    epochs = max(40, int(10 / max(per_epoch, 1e-3)))  # a round of about 10 s
    asked: list[float] = []

    def should_stop() -> bool:
        if not asked:
            asked.append(time.time() + 0.5)  # the user cancels half a second into the run
        return time.time() >= asked[0]

    train_rl(_cfg(tmp_path, tiny_model_dir, rounds=3, epochs=epochs), callbacks={"should_stop": should_stop})
    took = time.time() - asked[0]
    assert took < 2.0, f"stopped {took:.1f} s after the cancel (a round is about {epochs * per_epoch:.0f} s)"
    run = tmp_path / "run"
    assert json.loads((run / "stopped.json").read_text()) == {"stopped_in_round": 1, "last_complete_round": 0}
    assert not [ln for ln in (run / "metrics.jsonl").read_text().splitlines() if '"round": 1' in ln]
