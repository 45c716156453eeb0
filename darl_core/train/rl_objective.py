"""The RL objective's parts: advantages (group-normalised or from a reward memory), the PPO-clipped
policy loss, the KL to the frozen reference, the last step's anchor, reward backpropagation through the
sampler, and the per-term backward pass of the diagnostics."""

from __future__ import annotations

from collections import deque

import torch

from ..models.lora import adapters_disabled
from ..models.restorer import Noise, Restorer, Trajectory
from ..models.sampler import ddim_step, step_std

__all__ = ["RewardMemory", "backward_terms", "group_advantages", "last_step_anchor", "policy_losses", "ppo_loss",
           "reference_means", "sample_with_grad"]


# ----------------------------------------------------------------------------- advantages

class RewardMemory:
    """Recent rewards per key; advantages normalised per key (DDPO's per-prompt tracker)."""

    def __init__(self, size: int, min_count: int) -> None:
        self.size, self.min_count = size, min_count
        self.buffers: dict[str, deque[float]] = {}

    def advantages(self, keys: list[str], rewards: torch.Tensor, clip: float) -> torch.Tensor:
        """Add ``rewards`` under ``keys``, then return clip((r - mean) / (std + 1e-6))."""
        r = rewards.detach().float().cpu()
        b_mean, b_std = float(r.mean()), float(r.std(unbiased=False))
        out = torch.empty_like(r)
        for i, (k, v) in enumerate(zip(keys, r.tolist())):
            buf = self.buffers.setdefault(k, deque(maxlen=self.size))
            buf.append(v)
            if len(buf) >= self.min_count:
                t = torch.tensor(buf)
                mean, std = float(t.mean()), float(t.std(unbiased=False))
            else:
                mean, std = b_mean, b_std
            out[i] = (v - mean) / (std + 1e-6)
        return out.clamp(-clip, clip)

    def state_dict(self) -> dict[str, list[float]]:
        return {k: list(v) for k, v in self.buffers.items()}

    def load_state_dict(self, state: dict[str, list[float]]) -> None:
        self.buffers = {k: deque(v, maxlen=self.size) for k, v in state.items()}


def group_advantages(rewards: torch.Tensor, group_size: int, clip: float) -> torch.Tensor:
    """clip((r - mean_group) / (std_group + 1e-6)) for rewards laid out as consecutive groups of
    ``group_size`` rollouts of one input (GRPO / Flow-GRPO): the advantage says which *rollout* of an
    input was better, not which input was drawn."""
    r = rewards.detach().float().reshape(-1, group_size)
    a = (r - r.mean(dim=1, keepdim=True)) / (r.std(dim=1, unbiased=False, keepdim=True) + 1e-6)
    return a.clamp(-clip, clip).flatten()


# ----------------------------------------------------------------------------- loss

def ppo_loss(ratio: torch.Tensor, adv: torch.Tensor, clip_range: float) -> torch.Tensor:
    """docs/method.md, step 4, per sample: max(-A rho, -A clip(rho, 1 - eps, 1 + eps))."""
    return torch.maximum(-adv * ratio, -adv * ratio.clamp(1 - clip_range, 1 + clip_range))


def policy_losses(policy: Restorer, traj: Trajectory, k: int, adv: torch.Tensor, eta: float,
                  clip_range: float, ref_mean: torch.Tensor | None = None, out: torch.Tensor | None = None
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-sample PPO loss, KL, ratio and clipped flag of transition ``k`` (with grad).

    ``ref_mean``: the frozen reference policy's mean of this transition (``reference_means``; None:
    no KL). ``out``: the policy's output at x_t already computed with its graph (the rollout's, for
    the on-policy first epoch); None: computed here."""
    t, x_t, x_prev = traj.timesteps[k], traj.x_t[k], traj.x_prev[k]
    out = (policy.predict(x_t, t, traj.cond) if out is None else out).float()
    step = ddim_step(policy.scheduler, out, t, x_t, eta=eta, prev_sample=x_prev)
    ratio = torch.exp(step.log_prob - traj.log_prob[k])
    loss = ppo_loss(ratio, adv.to(ratio), clip_range)
    kl = torch.zeros_like(loss)
    if ref_mean is not None:
        kl = ((step.mean - ref_mean) ** 2).mean(dim=tuple(range(1, x_t.ndim))) / (2 * step.std**2)
    clipped = ((ratio - 1).abs() > clip_range).float()
    return loss, kl, ratio.detach(), clipped


def _reference_output(policy: Restorer, x_t: torch.Tensor, t: int, cond: torch.Tensor,
                      ref_unet: torch.nn.Module | None, use_adapters_off: bool) -> torch.Tensor:
    """The frozen reference policy's denoiser output: the copied SFT UNet, or the policy's own with its LoRA
    adapters off."""
    if use_adapters_off:
        with adapters_disabled(policy.unet):
            return policy.predict(x_t, t, cond).float()
    return policy.predict(x_t, t, cond, unet=ref_unet).float()


@torch.no_grad()
def reference_means(policy: Restorer, traj: Trajectory, eta: float, ref_unet: torch.nn.Module | None,
                    use_adapters_off: bool) -> list[torch.Tensor] | None:
    """The frozen reference (SFT) policy's Gaussian mean of every recorded transition, once per
    round (they do not change during the update); None when there is no KL term."""
    if ref_unet is None and not use_adapters_off:
        return None
    means = []
    for t, x_t, x_prev in zip(traj.timesteps, traj.x_t, traj.x_prev):
        ref_out = _reference_output(policy, x_t, t, traj.cond, ref_unet, use_adapters_off)
        means.append(ddim_step(policy.scheduler, ref_out, t, x_t, eta=eta, prev_sample=x_prev).mean)
    return means


def last_step_anchor(policy: Restorer, traj: Trajectory, ref_unet: torch.nn.Module | None, use_adapters_off: bool,
                     sigma: float) -> torch.Tensor | None:
    """Per-sample ||mu - mu_ref||^2 / (2 sigma^2) of the rollout's deterministic last step (with grad), or None
    when the last step is stochastic (then the KL covers it) or there is no reference.

    RL trains the denoiser through the stochastic transitions only; with few steps that leaves out the
    last one, which makes the final texture, although it shares every weight: the RL updates move it as a
    side effect, unchecked. This keeps it near the reference policy at the states the policy visits, like
    the KL term with a floor ``sigma`` in place of its zero variance."""
    sched = policy.scheduler
    t_last = int(sched.timesteps[-1])
    if not traj.timesteps or traj.timesteps[-1] == t_last or (ref_unet is None and not use_adapters_off):
        return None
    x = traj.x_prev[-1]  # the state the last step starts from (every earlier step is stochastic)
    mean = ddim_step(sched, policy.predict(x, t_last, traj.cond).float(), t_last, x, eta=0.0).mean
    with torch.no_grad():
        ref_out = _reference_output(policy, x, t_last, traj.cond, ref_unet, use_adapters_off)
        ref_mean = ddim_step(sched, ref_out, t_last, x, eta=0.0).mean
    return ((mean - ref_mean) ** 2).mean(dim=tuple(range(1, x.ndim))) / (2 * sigma**2)


def sample_with_grad(policy: Restorer, lq: torch.Tensor, steps: int, eta: float, noise: Noise,
                     cond: torch.Tensor | None, grad_steps: int) -> torch.Tensor:
    """Restorations of ``lq`` whose last ``grad_steps`` sampler steps keep their autograd graph (reward
    backpropagation, ``rl_estimator="backprop"``; the earlier steps run without, DRaFT-K's truncation)."""
    with torch.no_grad():
        cond, x, (h, w) = policy._start(lq, noise, cond)
    policy.scheduler.set_timesteps(steps)
    for j, t in enumerate(policy.scheduler.timesteps):
        with torch.set_grad_enabled(j >= steps - grad_steps):
            out = policy.predict(x, int(t), cond).float()
            z = noise.randn(tuple(x.shape)).to(out) if step_std(policy.scheduler, int(t), eta) > 0 else None
            x = ddim_step(policy.scheduler, out, int(t), x.float(), eta=eta, noise=z).prev_sample
    return policy.to_image(x, cond)[..., :h, :w].float()


def backward_terms(terms: dict[str, torch.Tensor], params: list[torch.nn.Parameter],
              per_term: dict[str, list[torch.Tensor]] | None) -> None:
    """Accumulate the gradient of the sum of ``terms`` into ``params``; with ``per_term``, also
    add each term's own gradient to ``per_term[name]`` (one autograd pass per term)."""
    live = {n: t for n, t in terms.items() if t.requires_grad}
    if not live:
        return
    if per_term is None:
        sum(live.values()).backward()
        return
    names = list(live)
    for j, n in enumerate(names):
        grads = torch.autograd.grad(live[n], params, retain_graph=j < len(names) - 1, allow_unused=True)
        acc = per_term.setdefault(n, [torch.zeros_like(p) for p in params])
        for p, a, gr in zip(params, acc, grads):
            if gr is None:
                continue
            a.add_(gr)
            p.grad = gr.clone() if p.grad is None else p.grad + gr
