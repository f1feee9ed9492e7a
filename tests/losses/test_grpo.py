"""GRPO: group advantages and the clipped loss against per-token numpy loops, gradients, the term."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mathvlm import registry
from mathvlm.losses import group_advantages, grpo_loss, make_loss, token_logps

PAD = 100.0  # log-prob stored at padded positions: exp(PAD) overflows float32 unless masked out


def np_advantages(rewards, group_size, scale=True, eps=1e-4):
    grouped = np.asarray(rewards, np.float64).reshape(-1, group_size)
    centred = grouped - grouped.mean(-1, keepdims=True)
    if scale:
        centred = centred / (grouped.std(-1, keepdims=True) + eps)
    zero = np.array([len(set(g)) == 1 for g in grouped.tolist()])
    centred[zero] = 0.0
    return centred.reshape(-1), zero


def np_grpo(logps, old, adv, mask, ref=None, beta=0.0, eps_low=0.2, eps_high=0.2,
            aggregation="token_mean"):
    """Per-token loop in float64: loss, clip fraction, mean ratio, mean k3."""
    logps, old, adv, mask = (np.asarray(x, np.float64) for x in (logps, old, adv, mask))
    ref = None if ref is None else np.asarray(ref, np.float64)
    per_token = np.zeros(logps.shape)
    clipped, ratios, k3s = 0, [], []
    for b in range(logps.shape[0]):
        for t in range(logps.shape[1]):
            if not mask[b, t]:
                continue
            ratio = math.exp(logps[b, t] - old[b, t])
            a = adv[b]
            objective = min(ratio * a, min(max(ratio, 1 - eps_low), 1 + eps_high) * a)
            loss = -objective
            if ref is not None:
                d = ref[b, t] - logps[b, t]
                k3 = math.exp(d) - d - 1
                k3s.append(k3)
                if beta > 0:
                    loss += beta * k3
            per_token[b, t] = loss
            ratios.append(ratio)
            clipped += (ratio < 1 - eps_low and a < 0) or (ratio > 1 + eps_high and a > 0)
    count = mask.sum()
    if aggregation == "token_mean":
        total = per_token.sum() / count if count else 0.0
    else:
        rows = [per_token[b].sum() / mask[b].sum() for b in range(len(mask)) if mask[b].sum()]
        total = np.mean(rows) if rows else 0.0
    return total, {"clip_fraction": clipped / count if count else 0.0,
                   "ratio_mean": np.mean(ratios) if ratios else 0.0,
                   "kl": np.mean(k3s) if k3s else 0.0}


def hand_case():
    """4 rows × 5 tokens: ratios on both sides of the clip range, padding, one empty row.

    Clipped term active (ε = 0.2 both sides): (0,0) ratio 1.5 with A > 0; (1,0) 0.5 and (1,2) 0.75
    with A < 0; (2,0) 1.25 with A > 0 — 4 of 11 tokens. With ε_high = 0.28, (2,0) is not clipped: 3.
    """
    ratios = np.array([[1.5, 0.5, 1.0, 1.1, 1.0],
                       [0.5, 1.5, 0.75, 0.9, 1.3],
                       [1.25, 0.85, 1.0, 1.0, 1.0],
                       [1.0, 1.0, 1.0, 1.0, 1.0]])
    mask = np.array([[1, 1, 1, 1, 0], [1, 1, 1, 1, 1], [1, 1, 0, 0, 0], [0, 0, 0, 0, 0]], np.float32)
    adv = np.array([1.0, -0.5, 0.8, 2.0], np.float32)
    rng = np.random.default_rng(0)
    old = rng.uniform(-3.0, -0.5, ratios.shape).astype(np.float32)
    logps = np.where(mask > 0, old + np.log(ratios), PAD).astype(np.float32)
    ref = (logps + rng.normal(0.0, 0.3, ratios.shape)).astype(np.float32)
    ref = np.where(mask > 0, ref, -PAD).astype(np.float32)
    return logps, old, adv, mask, ref


CLIP_ACTIVE = np.zeros((4, 5), bool)
CLIP_ACTIVE[0, 0] = CLIP_ACTIVE[1, 0] = CLIP_ACTIVE[1, 2] = CLIP_ACTIVE[2, 0] = True


def test_token_logps_matches_numpy_log_softmax_with_temperature():
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(2, 3, 7)).astype(np.float32) * 3
    targets = rng.integers(0, 7, (2, 3)).astype(np.int32)
    scaled = logits.astype(np.float64) / 0.7
    logp = scaled - np.log(np.exp(scaled).sum(-1, keepdims=True))
    want = np.take_along_axis(logp, targets[..., None], -1)[..., 0]
    assert token_logps(jnp.asarray(logits, jnp.bfloat16), targets).dtype == jnp.float32
    np.testing.assert_allclose(token_logps(logits, targets, temperature=0.7), want, rtol=1e-5)


@pytest.mark.parametrize("scale", [True, False])
def test_group_advantages_match_numpy(scale):
    rewards = np.array([1.0, 0.0, 0.0, 1.0, 0.5, 2.0, -1.0, 3.0], np.float32)
    adv, zero = group_advantages(rewards, 4, scale=scale)
    want, want_zero = np_advantages(rewards, 4, scale)
    assert adv.dtype == jnp.float32 and adv.shape == (8,)
    np.testing.assert_allclose(adv, want, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(zero, want_zero)
    assert not np.asarray(zero).any()
    if scale:  # unit population std within each group (up to eps)
        np.testing.assert_allclose(np.asarray(adv).reshape(2, 4).std(-1), 1.0, rtol=1e-3)


@pytest.mark.parametrize("scale", [True, False])
@pytest.mark.parametrize("eps", [1e-4, 0.0])
def test_all_equal_group_gives_exact_zeros_and_no_nan(scale, eps):
    # 0.1 × 3 has a float32 mean that differs from 0.1, so r − mean is not exactly 0 here;
    # with eps = 0 the G = 4 group would be 0 / 0.
    adv3, zero3 = group_advantages(np.array([0.1, 0.1, 0.1, 1.0, 0.0, 0.5]), 3, scale=scale, eps=eps)
    np.testing.assert_array_equal(np.asarray(adv3)[:3], 0.0)
    np.testing.assert_array_equal(zero3, [True, False])
    adv4, zero4 = group_advantages(np.array([0.3] * 4 + [1.0, 0.0, 1.0, 0.0]), 4, scale=scale, eps=eps)
    assert np.isfinite(adv4).all() and np.isfinite(adv3).all()
    np.testing.assert_array_equal(np.asarray(adv4)[:4], 0.0)
    np.testing.assert_array_equal(zero4, [True, False])
    assert np.all(np.asarray(adv4)[4:] != 0)


@pytest.mark.parametrize("aggregation", ["token_mean", "sequence_mean"])
@pytest.mark.parametrize("beta,with_ref", [(0.0, False), (0.0, True), (0.1, True)])
def test_grpo_loss_matches_numpy_loop(aggregation, beta, with_ref):
    logps, old, adv, mask, ref = hand_case()
    ref = ref if with_ref else None
    loss, metrics = jax.jit(lambda *a: grpo_loss(*a[:4], ref_logps=a[4], beta=beta,
                                                 aggregation=aggregation))(logps, old, adv, mask, ref)
    want, want_metrics = np_grpo(logps, old, adv, mask, ref, beta, aggregation=aggregation)
    np.testing.assert_allclose(loss, want, rtol=1e-5)
    np.testing.assert_allclose(metrics["loss"], want, rtol=1e-5)
    for key in ("clip_fraction", "ratio_mean", "kl"):
        np.testing.assert_allclose(metrics[key], want_metrics[key], rtol=1e-5, err_msg=key)
    if not with_ref:
        assert float(metrics["kl"]) == 0.0
    else:
        assert float(metrics["kl"]) > 0


def test_aggregations_differ_on_unequal_lengths_and_epsilons_are_asymmetric():
    logps, old, adv, mask, ref = hand_case()
    token, _ = grpo_loss(logps, old, adv, mask, aggregation="token_mean")
    sequence, _ = grpo_loss(logps, old, adv, mask, aggregation="sequence_mean")
    assert abs(float(token) - float(sequence)) > 1e-3
    want, _ = np_grpo(logps, old, adv, mask, eps_low=0.1, eps_high=0.28)
    got, _ = grpo_loss(logps, old, adv, mask, epsilon_low=0.1, epsilon_high=0.28)
    np.testing.assert_allclose(got, want, rtol=1e-5)


def test_clip_fraction_hand_count():
    logps, old, adv, mask, _ = hand_case()
    _, metrics = grpo_loss(logps, old, adv, mask)
    np.testing.assert_allclose(metrics["clip_fraction"], 4 / 11, rtol=1e-6)
    _, metrics = grpo_loss(logps, old, adv, mask, epsilon_high=0.28)
    np.testing.assert_allclose(metrics["clip_fraction"], 3 / 11, rtol=1e-6)


def analytic_gradient(logps, old, adv, mask, ref, beta, aggregation):
    """d loss / d logp_bt = w_bt (−A_b ρ_bt [clipped term inactive] + β (1 − exp(ref − logp)))."""
    lp, ol, rf = (x.astype(np.float64) for x in (logps, old, ref))
    ratio = np.exp(np.where(mask > 0, lp - ol, 0.0))
    a = adv[:, None].astype(np.float64)
    active = ((ratio < 0.8) & (a < 0)) | ((ratio > 1.2) & (a > 0))
    per_token = np.where(active, 0.0, -a * ratio)
    per_token = per_token + beta * (1.0 - np.exp(np.where(mask > 0, rf - lp, 0.0)))
    if aggregation == "token_mean":
        weights = mask / mask.sum()
    else:
        counts = mask.sum(-1, keepdims=True)
        weights = np.where(counts > 0, mask / np.maximum(counts, 1), 0.0) / (counts > 0).sum()
    return weights * per_token


@pytest.mark.parametrize("aggregation", ["token_mean", "sequence_mean"])
@pytest.mark.parametrize("beta", [0.0, 0.1])
def test_gradient_matches_analytic_and_finite_differences(aggregation, beta):
    logps, old, adv, mask, ref = hand_case()
    grad = jax.grad(lambda lp: grpo_loss(lp, old, adv, mask, ref_logps=ref, beta=beta,
                                         aggregation=aggregation)[0])(jnp.asarray(logps))
    want = analytic_gradient(logps, old, adv, mask, ref, beta, aggregation)
    np.testing.assert_allclose(grad, want, rtol=1e-5, atol=1e-7)
    # The analytic formula against central differences of the numpy loop (float64).
    lp64, h = logps.astype(np.float64), 1e-6
    for b, t in zip(*np.nonzero(mask)):
        up, down = lp64.copy(), lp64.copy()
        up[b, t] += h
        down[b, t] -= h
        fd = (np_grpo(up, old, adv, mask, ref, beta, aggregation=aggregation)[0]
              - np_grpo(down, old, adv, mask, ref, beta, aggregation=aggregation)[0]) / (2 * h)
        np.testing.assert_allclose(want[b, t], fd, rtol=1e-5, atol=1e-8)
    if beta == 0.0:  # clipped-term tokens and padding get exactly no gradient
        assert np.all(np.asarray(grad)[CLIP_ACTIVE] == 0.0)
        assert np.all(np.asarray(grad)[~CLIP_ACTIVE & (mask > 0)] != 0.0)
    assert np.all(np.asarray(grad)[mask == 0] == 0.0)


def test_old_and_reference_logps_get_no_gradient():
    logps, old, adv, mask, ref = hand_case()
    grads = jax.grad(lambda *a: grpo_loss(a[0], a[1], adv, mask, ref_logps=a[2], beta=0.1)[0],
                     argnums=(0, 1, 2))(*(jnp.asarray(x) for x in (logps, old, ref)))
    assert np.all(np.asarray(grads[1]) == 0.0) and np.all(np.asarray(grads[2]) == 0.0)
    assert np.any(np.asarray(grads[0]) != 0.0)


def test_zero_advantage_groups_get_exactly_zero_gradient():
    logps, old, _, mask, ref = hand_case()
    adv, zero = group_advantages(np.array([0.7, 0.7, 0.0, 2.0]), 2)
    assert list(np.asarray(zero)) == [True, False]
    grad = jax.grad(lambda lp: grpo_loss(lp, old, adv, mask, ref_logps=ref)[0])(jnp.asarray(logps))
    assert np.all(np.asarray(grad)[:2] == 0.0)
    assert np.any(np.asarray(grad)[2:] != 0.0)


@pytest.mark.parametrize("aggregation", ["token_mean", "sequence_mean"])
def test_empty_mask_gives_zero_loss_and_finite_gradient(aggregation):
    logps, old, adv, _, ref = hand_case()
    mask = np.zeros_like(logps)
    fn = lambda lp: grpo_loss(lp, old, adv, mask, ref_logps=ref, beta=0.1,  # noqa: E731
                              aggregation=aggregation)
    (loss, metrics), grad = jax.value_and_grad(fn, has_aux=True)(jnp.asarray(logps))
    assert float(loss) == 0.0 and all(np.isfinite(v) for v in metrics.values())
    assert np.all(np.asarray(grad) == 0.0)


def term_inputs(rewards, seed=0):
    rng = np.random.default_rng(seed)
    b = len(rewards)
    old = rng.uniform(-3.0, -0.5, (b, 4)).astype(np.float32)
    outputs = {"logps": jnp.asarray(old + rng.normal(0.0, 0.4, (b, 4)), jnp.float32),
               "reference_logps": jnp.asarray(old + rng.normal(0.0, 0.3, (b, 4)), jnp.float32)}
    mask = np.ones((b, 4), np.float32)
    mask[:, 3] = 0
    mask[0, 2] = 0
    batch = {"old_logps": old, "rewards": np.asarray(rewards, np.float32), "loss_mask": mask}
    return outputs, batch


def test_registered_term_all_equal_rewards_gives_zero_loss():
    outputs, batch = term_inputs([0.5, 0.5, 0.5, 0.5])
    loss_fn = jax.jit(make_loss([{"name": "grpo", "weight": 1.0, "group_size": 2}]))
    (loss, metrics), grad = jax.value_and_grad(loss_fn, has_aux=True)(outputs, batch)
    assert float(loss) == 0.0
    assert np.isfinite(grad["logps"]).all() and np.all(np.asarray(grad["logps"]) == 0.0)
    assert float(metrics["grpo/zero_advantage_groups"]) == 1.0
    assert float(metrics["grpo/advantage_abs_mean"]) == 0.0
    np.testing.assert_allclose(metrics["grpo/reward_mean"], 0.5)


def test_registered_term_matches_numpy_and_skips_blanked_rows():
    rewards = np.array([1.0, 0.0, 0.5, 0.5, 2.0, -1.0], np.float32)
    outputs, batch = term_inputs(rewards, seed=1)
    batch["skip_reason"] = np.array([0, 0, 0, 0, 3, 0], np.int32)
    fn = registry.get("loss", "grpo")
    loss, metrics = fn(outputs, batch, group_size=2, beta=0.05, aggregation="sequence_mean",
                       epsilon_high=0.28)
    adv, _ = np_advantages(rewards, 2)
    mask = batch["loss_mask"] * (batch["skip_reason"] == 0)[:, None]
    want, want_metrics = np_grpo(np.asarray(outputs["logps"]), batch["old_logps"], adv, mask,
                                 np.asarray(outputs["reference_logps"]), 0.05, eps_high=0.28,
                                 aggregation="sequence_mean")
    np.testing.assert_allclose(loss, want, rtol=1e-5)
    np.testing.assert_allclose(metrics["kl"], want_metrics["kl"], rtol=1e-5)
    np.testing.assert_allclose(metrics["reward_mean"], rewards.mean(), rtol=1e-6)
    np.testing.assert_allclose(metrics["reward_std"], rewards.reshape(3, 2).std(-1).mean(), rtol=1e-6)
    np.testing.assert_allclose(metrics["zero_advantage_groups"], 1 / 3, rtol=1e-6)
    np.testing.assert_allclose(metrics["advantage_abs_mean"], np.abs(adv).mean(), rtol=1e-5)
    with pytest.raises(KeyError, match="reference_logps"):
        fn({"logps": outputs["logps"]}, batch, group_size=2, beta=0.05)
    with pytest.raises(KeyError, match="rewards"):
        fn(outputs, {k: v for k, v in batch.items() if k != "rewards"}, group_size=2)


def test_bad_aggregation_raises():
    logps, old, adv, mask, _ = hand_case()
    with pytest.raises(ValueError, match="'mean'.*token_mean.*sequence_mean"):
        grpo_loss(logps, old, adv, mask, aggregation="mean")
    outputs, batch = term_inputs([1.0, 0.0])
    with pytest.raises(ValueError, match="token_mean.*sequence_mean"):
        make_loss([{"name": "grpo", "group_size": 2, "aggregation": "seq"}])(outputs, batch)


def test_batch_not_multiple_of_group_size_raises():
    with pytest.raises(ValueError, match=r"6\b.*group_size 4"):
        group_advantages(np.zeros(6, np.float32), 4)
    outputs, batch = term_inputs([1.0, 0.0, 0.5, 0.5, 2.0, -1.0])
    with pytest.raises(ValueError, match=r"6\b.*group_size 4"):
        make_loss([{"name": "grpo", "group_size": 4}])(outputs, batch)
