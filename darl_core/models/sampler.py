"""DDIM step with the log-probability of the sampled transition (docs/method.md, step 1).

One reverse step of DDIM (Song et al., 2021) written out so that the RL
trainer can (a) sample a transition x_t -> x_{t-1} and (b) later evaluate the
log-density of that same transition under another set of weights:

    x0_hat = x0 from the model output (epsilon, sample or v parameterisation)
    eps    = (x_t - sqrt(abar_t) x0_hat) / sqrt(1 - abar_t)
    sigma  = eta * sqrt((1 - abar_prev) / (1 - abar_t)) * sqrt(1 - abar_t / abar_prev)
    mu     = sqrt(abar_prev) x0_hat + sqrt(1 - abar_prev - sigma^2) eps
    x_prev = mu + sigma z

With eta = 0 this is exactly ``diffusers.DDIMScheduler.step`` (tested); with
eta > 0 and the same noise ``z`` it matches ``step(..., variance_noise=z)``.

``log_prob`` is the Gaussian log-density of x_prev, averaged over all
non-batch dimensions (DDPO's convention: a per-pixel mean keeps the PPO ratio
on a usable scale). A step with sigma = 0 (the last step, when the schedule
ends at abar = 1) is deterministic: its log_prob is 0 and ``stochastic`` is
False, and the RL loss leaves it out.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from diffusers import DDIMScheduler

__all__ = ["DDIMStepOutput", "ddim_step", "gaussian_log_prob", "prev_timestep", "step_std"]


@dataclass
class DDIMStepOutput:
    prev_sample: torch.Tensor  # x_{t-1}
    log_prob: torch.Tensor  # (B,) mean per-dimension log N(x_{t-1}; mu, sigma^2)
    mean: torch.Tensor  # mu_theta(x_t, t)
    std: float  # sigma_t
    pred_x0: torch.Tensor  # x0_hat, scored by the stepwise reward
    stochastic: bool  # False when sigma_t == 0


def prev_timestep(scheduler: DDIMScheduler, t: int) -> int:
    return int(t) - scheduler.config.num_train_timesteps // scheduler.num_inference_steps


def _alphas(scheduler: DDIMScheduler, t: int) -> tuple[float, float]:
    ac = scheduler.alphas_cumprod
    prev = prev_timestep(scheduler, t)
    abar_t = float(ac[int(t)])
    abar_prev = float(ac[prev]) if prev >= 0 else float(scheduler.final_alpha_cumprod)
    return abar_t, abar_prev


def _x0_eps(scheduler: DDIMScheduler, out: torch.Tensor, x_t: torch.Tensor,
            abar_t: float) -> tuple[torch.Tensor, torch.Tensor]:
    a, s = math.sqrt(abar_t), math.sqrt(1 - abar_t)
    kind = scheduler.config.prediction_type
    if kind == "epsilon":
        return (x_t - s * out) / a, out
    if kind == "sample":
        return out, (x_t - a * out) / s
    if kind == "v_prediction":
        return a * x_t - s * out, a * out + s * x_t
    raise ValueError(f"unsupported prediction_type {kind!r}")


def gaussian_log_prob(x: torch.Tensor, mean: torch.Tensor, std: float) -> torch.Tensor:
    """Mean over non-batch dimensions of log N(x; mean, std^2 I)."""
    lp = -((x - mean) ** 2) / (2 * std**2) - math.log(std) - 0.5 * math.log(2 * math.pi)
    return lp.mean(dim=tuple(range(1, x.ndim)))


def step_std(scheduler: DDIMScheduler, t: int, eta: float) -> float:
    """sigma_t of the step from ``t``: 0 for eta = 0 and for a final step that ends at abar = 1."""
    abar_t, abar_prev = _alphas(scheduler, t)
    var = (1 - abar_prev) / (1 - abar_t) * (1 - abar_t / abar_prev)
    return eta * math.sqrt(max(var, 0.0))


def ddim_step(scheduler: DDIMScheduler, model_output: torch.Tensor, t: int, x_t: torch.Tensor,
              eta: float = 0.0, prev_sample: torch.Tensor | None = None,
              generator: torch.Generator | None = None,
              noise: torch.Tensor | None = None) -> DDIMStepOutput:
    """One DDIM step. Pass ``prev_sample`` to score a stored transition instead of sampling."""
    if scheduler.config.clip_sample or scheduler.config.thresholding:
        raise ValueError("ddim_step supports schedulers without clip_sample/thresholding")
    abar_t, abar_prev = _alphas(scheduler, t)
    x0, eps = _x0_eps(scheduler, model_output, x_t, abar_t)
    std = step_std(scheduler, t, eta)
    mean = math.sqrt(abar_prev) * x0 + math.sqrt(max(1 - abar_prev - std**2, 0.0)) * eps
    if std == 0.0:
        out = mean if prev_sample is None else prev_sample
        return DDIMStepOutput(out, torch.zeros(x_t.shape[0], device=x_t.device), mean, 0.0, x0, False)
    if prev_sample is None:
        if noise is None:
            noise = torch.randn(x_t.shape, generator=generator, device=x_t.device if generator is None
                                else generator.device, dtype=x_t.dtype).to(x_t.device)
        prev_sample = mean + std * noise
    return DDIMStepOutput(prev_sample, gaussian_log_prob(prev_sample.detach(), mean, std), mean, std, x0, True)
