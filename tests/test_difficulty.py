import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from darl_core.rewards.difficulty import difficulty, difficulty_no_reference, relative_weights
from darl_core.rewards.registry import get_metric

finite = st.floats(min_value=0.0, max_value=2.0, allow_nan=False, width=32)


@settings(max_examples=200, deadline=None)
@given(st.lists(finite, min_size=1, max_size=40), st.floats(0, 0.5), st.floats(0.5, 1))
def test_weights_follow_the_quantile_ramp(ds: list[float], q_lo: float, q_hi: float) -> None:
    """Against an independent numpy computation: 0 at or below the q_lo quantile, 1 at or above
    q_hi's, linear between (0.5 everywhere when the two quantiles coincide)."""
    import numpy as np

    w = relative_weights(torch.tensor(ds), q_lo=q_lo, q_hi=q_hi).numpy()
    a = np.asarray(ds, dtype=np.float32)
    lo, hi = np.quantile(a, q_lo), np.quantile(a, q_hi)
    if hi - lo <= 1e-6:
        return  # degenerate span: covered by test_ties_and_pool_of_one
    want = np.clip((a - lo) / (hi - lo), 0, 1)
    np.testing.assert_allclose(w, want, atol=1e-4)


@settings(max_examples=200, deadline=None)
@given(st.lists(finite, min_size=2, max_size=40), finite, finite)
def test_weights_monotone_in_difficulty(pool: list[float], a: float, b: float) -> None:
    lo, hi = sorted((a, b))
    w = relative_weights(torch.tensor([lo, hi]), pool=torch.tensor(pool))
    assert float(w[0]) <= float(w[1])


@settings(max_examples=100, deadline=None)
@given(finite, st.integers(1, 30))
def test_ties_and_pool_of_one(d: float, n: int) -> None:
    w = relative_weights(torch.full((n,), d))
    assert torch.equal(w, torch.full((n,), 0.5))  # no relative difficulty: an even mix


def test_quantile_mapping_and_no_gt() -> None:
    d = torch.tensor([0.0, 1.0, 2.0, 3.0, 4.0])
    w = relative_weights(d, q_lo=0.25, q_hi=0.75)  # d_lo = 1, d_hi = 3
    torch.testing.assert_close(w, torch.tensor([0.0, 0.0, 0.5, 1.0, 1.0]))
    w = relative_weights(d, has_gt=torch.tensor([True, False, True, True, False]))
    assert float(w[1]) == 1.0 and float(w[4]) == 1.0 and float(w[0]) == 0.0


def test_difficulty_is_one_minus_ssim_and_grows_with_damage() -> None:
    torch.manual_seed(0)
    gt = torch.rand(1, 3, 64, 64).clamp(0.2, 0.8)
    noisy = [(gt + s * torch.randn_like(gt)).clamp(0, 1) for s in (0.0, 0.05, 0.2)]
    d = torch.cat([difficulty(x, gt) for x in noisy])
    torch.testing.assert_close(d, 1 - torch.cat([get_metric("ssim")(x, gt) for x in noisy]))
    assert float(d[0]) < 1e-4 and float(d[0]) < float(d[1]) < float(d[2])


def test_no_reference_proxy_ranks_damage() -> None:
    """A clean photo is easier (lower proxy difficulty) than the same photo blurred and noised."""
    from darl_core.data.clean import builtin_image
    from darl_core.data.images import pil_to_tensor

    clean = pil_to_tensor(builtin_image("coffee.png"))[None, :, :256, :256]
    blurred = torch.nn.functional.avg_pool2d(clean, 5, 1, 2)
    damaged = (blurred + 0.08 * torch.randn(blurred.shape, generator=torch.Generator().manual_seed(0))).clamp(0, 1)
    d = difficulty_no_reference(torch.cat([clean, damaged]))
    assert float(d[0]) < float(d[1]), d
    # scores computed elsewhere (the app's table) give the same proxy without a second NIQE pass
    raw = get_metric("niqe")(torch.cat([clean, damaged]))
    torch.testing.assert_close(difficulty_no_reference(clean[:0], raw=raw), d)
