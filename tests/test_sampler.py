import math

import pytest
import torch
from diffusers import DDIMScheduler

from darl_core.models.pipeline import build_unet, make_scheduler
from darl_core.models.sampler import ddim_step


def _schedulers() -> list[DDIMScheduler]:
    base = make_scheduler()
    return [base] + [DDIMScheduler.from_config(base.config, prediction_type=p) for p in ("epsilon", "sample")]


@pytest.mark.parametrize("sched", _schedulers(), ids=lambda s: s.config.prediction_type)
def test_eta0_equals_diffusers_ddim(sched: DDIMScheduler) -> None:
    unet = build_unet("tiny", seed=0).eval()
    sched.set_timesteps(5)
    torch.manual_seed(0)
    x, cond = torch.randn(2, 3, 16, 16), torch.randn(2, 3, 16, 16)
    for t in sched.timesteps:
        with torch.no_grad():
            out = unet(torch.cat([x, cond], 1), t).sample
        ref = sched.step(out, t, x, eta=0.0).prev_sample
        ours = ddim_step(sched, out, int(t), x, eta=0.0)
        torch.testing.assert_close(ours.prev_sample, ref, rtol=1e-5, atol=1e-6)
        x = ref


def test_eta_positive_equals_diffusers_with_same_noise() -> None:
    sched = make_scheduler()
    sched.set_timesteps(4)
    torch.manual_seed(1)
    x, out = torch.randn(2, 3, 8, 8), torch.randn(2, 3, 8, 8)
    for t in sched.timesteps[:-1]:
        z = torch.randn_like(x)
        ref = sched.step(out, t, x, eta=0.8, variance_noise=z).prev_sample
        ours = ddim_step(sched, out, int(t), x, eta=0.8, noise=z)
        torch.testing.assert_close(ours.prev_sample, ref, rtol=1e-5, atol=1e-6)
        assert ours.stochastic and ours.std > 0


def test_log_prob_is_the_gaussian_density() -> None:
    sched = make_scheduler()
    sched.set_timesteps(4)
    torch.manual_seed(2)
    x, out = torch.randn(3, 3, 8, 8), torch.randn(3, 3, 8, 8)
    t = int(sched.timesteps[1])
    s = ddim_step(sched, out, t, x, eta=1.0, generator=torch.Generator().manual_seed(0))
    ref = torch.distributions.Normal(s.mean, s.std).log_prob(s.prev_sample).mean(dim=(1, 2, 3))
    torch.testing.assert_close(s.log_prob, ref)
    # scoring a stored transition gives the same number
    again = ddim_step(sched, out, t, x, eta=1.0, prev_sample=s.prev_sample)
    torch.testing.assert_close(again.log_prob, s.log_prob)
    # sigma follows docs/method.md's formula (step 1)
    ac = sched.alphas_cumprod
    a_t, a_p = float(ac[t]), float(ac[t - 1000 // 4])
    sigma = math.sqrt((1 - a_p) / (1 - a_t)) * math.sqrt(1 - a_t / a_p)
    assert s.std == pytest.approx(sigma)


def test_last_step_is_deterministic() -> None:
    sched = make_scheduler()
    sched.set_timesteps(4)
    x, out = torch.randn(1, 3, 8, 8), torch.randn(1, 3, 8, 8)
    s = ddim_step(sched, out, int(sched.timesteps[-1]), x, eta=1.0)
    assert not s.stochastic and s.std == 0.0
    torch.testing.assert_close(s.prev_sample, s.pred_x0)
