"""Math-PUMA KL: torch transcription of the release (official), numpy reference (standard),
alignment by each side's own mask, mismatched pairs, KL properties, gradients."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from mathvlm import registry
from mathvlm.losses import kl_divergence, puma_kl_loss, zscore

VOCAB, LENGTH = 17, 12


def make_member(rng, prompt_lengths, answer_lengths):
    """Unshifted ids/labels (HF convention, −100 = unsupervised) and our shifted targets/loss_mask."""
    b = len(prompt_lengths)
    ids = rng.integers(0, VOCAB, (b, LENGTH))
    labels = np.full((b, LENGTH), -100)
    for i, (p, a) in enumerate(zip(prompt_lengths, answer_lengths)):
        assert p >= 1 and p + a <= LENGTH - 1  # labels[0] and labels[-1] stay −100
        labels[i, p:p + a] = ids[i, p:p + a]
    targets = np.concatenate([ids[:, 1:], np.zeros((b, 1), int)], 1).astype(np.int32)
    loss_mask = np.concatenate([labels[:, 1:] != -100, np.zeros((b, 1), bool)], 1).astype(np.float32)
    logits = rng.normal(size=(b, LENGTH, VOCAB)).astype(np.float32) * 2
    return dict(ids=ids, labels=labels, targets=targets, loss_mask=loss_mask, logits=logits)


def pair(seed=0, strong_answers=(3, 5, 4), weak_answers=None):
    rng = np.random.default_rng(seed)
    strong = make_member(rng, [2, 4, 1], strong_answers)
    weak = make_member(rng, [5, 1, 3], weak_answers or strong_answers)
    return strong, weak


def torch_official(strong, weak, alpha, lam, temperature):
    """Transcription of Math-PUMA ``train/vta_trainer.py``.
    Returns (loss, d loss / d act logits)."""
    torch = pytest.importorskip("torch")
    F = torch.nn.functional

    def extract_valid_logits(logits, labels):
        rows = [logits[i][labels[i] != -100] for i in range(logits.shape[0])]
        longest = max(r.shape[0] for r in rows)
        return torch.stack([F.pad(r, (0, 0, 0, longest - r.shape[0])) for r in rows])

    def normalize_logits(logits):
        mean = logits.mean(dim=-1, keepdim=True)
        std = logits.std(dim=-1, keepdim=True)
        return (logits - mean) / (std + 1e-6)

    ref_logits = torch.tensor(strong["logits"])
    act_logits = torch.tensor(weak["logits"], requires_grad=True)
    ref_labels, act_labels = torch.tensor(strong["labels"]), torch.tensor(weak["labels"])
    with torch.no_grad():
        z_ref = normalize_logits(extract_valid_logits(ref_logits, ref_labels))
    z_act = normalize_logits(extract_valid_logits(act_logits, act_labels))
    p_act = F.softmax(z_act / temperature, dim=-1)
    p_ref = F.softmax(z_ref / temperature, dim=-1)
    fkl = F.kl_div(torch.log(p_ref), p_act, reduction="batchmean") * temperature ** 2
    rkl = F.kl_div(torch.log(p_act), p_ref, reduction="batchmean") * temperature ** 2
    kl = alpha * fkl + (1 - alpha) * rkl
    shift_logits = act_logits[:, :-1].reshape(-1, VOCAB)
    shift_labels = act_labels[:, 1:].reshape(-1)
    hard = F.cross_entropy(shift_logits, shift_labels, ignore_index=-100)
    loss = lam * kl * temperature ** 2 + (1 - lam) * hard
    loss.backward()
    return loss.item(), act_logits.grad.numpy()


OPTIONS = ("mode", "alpha", "lam", "temperature", "normalize", "positions", "max_answer_tokens")


def _loss(weak_logits, strong_logits, strong_mask, weak_targets, weak_mask, **options):
    return puma_kl_loss(strong_logits, weak_logits, strong_mask, weak_targets, weak_mask, **options)


# One jitted function for all tests: compiled once per (shapes, options), arrays passed as arguments.
_loss_and_grads = jax.jit(jax.value_and_grad(_loss, argnums=(0, 1), has_aux=True),
                          static_argnames=OPTIONS)


def run(strong, weak, **options):
    (loss, metrics), grads = _loss_and_grads(weak["logits"], strong["logits"], strong["loss_mask"],
                                             weak["targets"], weak["loss_mask"], **options)
    return loss, metrics, grads


def test_official_matches_torch_transcription_value_and_gradient():
    strong, weak = pair(0)
    alpha, lam, temperature = 0.3, 0.2, 2.0
    want, want_grad = torch_official(strong, weak, alpha, lam, temperature)
    loss, metrics, (grad_weak, grad_strong) = run(strong, weak, mode="official", alpha=alpha, lam=lam,
                                                  temperature=temperature)
    np.testing.assert_allclose(loss, want, rtol=1e-5)
    np.testing.assert_allclose(grad_weak, want_grad, rtol=1e-4, atol=1e-6)
    assert np.all(grad_strong == 0)  # the text-rich member is a stop-gradient target
    assert metrics["mismatched_pairs"] == 0 and metrics["aligned_tokens"] == 12


def test_torch_std_is_unbiased_and_zscore_matches_it():
    torch = pytest.importorskip("torch")
    x = np.random.default_rng(1).normal(size=(3, VOCAB)).astype(np.float32)
    t = torch.tensor(x)
    assert torch.allclose(t.std(-1), torch.tensor(x.std(-1, ddof=1)))
    want = ((t - t.mean(-1, keepdim=True)) / (t.std(-1, keepdim=True) + 1e-6)).numpy()
    np.testing.assert_allclose(zscore(jnp.asarray(x)), want, rtol=1e-5, atol=1e-6)


def np_log_softmax(x, temperature=1.0):
    x = x.astype(np.float64) / temperature
    shifted = x - x.max(-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))


def np_standard(strong, weak, alpha, lam, temperature):
    """Token-mean KL, T² once, no z-score, positions = where loss_mask is 1 (predicting answers)."""
    def answer_rows(member):
        return [logits[mask > 0] for logits, mask in zip(member["logits"], member["loss_mask"])]

    kls = []
    for r, a in zip(answer_rows(strong), answer_rows(weak)):
        n = min(len(r), len(a))  # truncation policy for mismatched answer lengths
        lr, la = np_log_softmax(r[:n], temperature), np_log_softmax(a[:n], temperature)
        kl_ar, kl_ra = (np.exp(la) * (la - lr)).sum(-1), (np.exp(lr) * (lr - la)).sum(-1)
        kls += list(alpha * kl_ar + (1 - alpha) * kl_ra)
    logp = np_log_softmax(weak["logits"])
    nll = -np.take_along_axis(logp, weak["targets"][..., None], -1)[..., 0]
    ce = (nll * weak["loss_mask"]).sum() / weak["loss_mask"].sum()
    return lam * np.mean(kls) * temperature ** 2 + (1 - lam) * ce


@pytest.mark.parametrize("weak_answers", [None, (3, 2, 6)])
def test_standard_matches_numpy_and_truncates_mismatched_pairs(weak_answers):
    strong, weak = pair(2, weak_answers=weak_answers)
    loss, metrics, _ = run(strong, weak, mode="standard", alpha=0.7, lam=0.4, temperature=1.5)
    np.testing.assert_allclose(loss, np_standard(strong, weak, 0.7, 0.4, 1.5), rtol=1e-5)
    assert metrics["mismatched_pairs"] == (0 if weak_answers is None else 2)
    assert metrics["aligned_tokens"] == (12 if weak_answers is None else 3 + 2 + 4)


def copy_strong_answers(strong, weak, mode):
    """The weak member with the strong member's answer logits written at its own answer positions
    (other prompt lengths), as gathered in ``mode`` ("inputs" positions for official)."""
    if mode == "official":
        s_sel, w_sel = strong["labels"] != -100, weak["labels"] != -100
    else:
        s_sel, w_sel = strong["loss_mask"] > 0, weak["loss_mask"] > 0
    weak_logits = weak["logits"].copy()
    weak_logits[w_sel] = strong["logits"][s_sel]
    return dict(weak, logits=weak_logits)


@pytest.mark.parametrize("mode", ["official", "standard"])
def test_alignment_uses_each_sides_own_positions(mode):
    # Gathered by each side's own mask, identical answer logits at different offsets line up: KL = 0.
    strong, weak = pair(3)
    _, metrics, _ = run(strong, copy_strong_answers(strong, weak, mode), mode=mode)
    assert abs(float(metrics["kl"])) < 1e-6
    _, unrelated, _ = run(strong, weak, mode=mode)
    assert float(unrelated["kl"]) > 0.1


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), same=st.booleans(),
       mode=st.sampled_from(["official", "standard"]))
def test_puma_kl_nonnegative_and_zero_iff_distributions_match(seed, same, mode):
    strong, weak = pair(seed)
    if same:
        weak = copy_strong_answers(strong, weak, mode)
    _, metrics, _ = run(strong, weak, mode=mode)
    kls = np.array([metrics["kl_act_ref"], metrics["kl_ref_act"]])
    assert np.all(kls >= -1e-6)
    assert np.all(kls < 1e-6) if same else np.all(kls > 1e-3)


@pytest.mark.parametrize("mode", ["official", "standard"])
def test_members_cut_to_different_lengths_give_the_same_loss(mode):
    # Length buckets cut each member of a pair on its own: extra padding must not change anything.
    strong, weak = pair(5)
    loss, metrics, _ = run(strong, weak, mode=mode)
    longer = {key: np.concatenate([value, np.zeros((value.shape[0], 5) + value.shape[2:], value.dtype)],
                                  axis=1) for key, value in weak.items()}
    padded_loss, padded, _ = run(strong, longer, mode=mode)
    np.testing.assert_allclose(float(padded_loss), float(loss), rtol=1e-6)
    np.testing.assert_allclose(float(padded["kl"]), float(metrics["kl"]), rtol=1e-6)


def test_teacher_diagnostics_one_hot_target_makes_kl_the_ce_term():
    # A confident teacher that is right carries nothing beyond the labels: KL(p_r‖p_a) = CE(weak).
    strong, weak = pair(6)
    s_sel, w_sel = strong["loss_mask"] > 0, weak["loss_mask"] > 0
    confident = np.full_like(strong["logits"], -30.0)
    rows, cols = np.nonzero(s_sel)
    confident[rows, cols, weak["targets"][w_sel]] = 30.0    # the k-th answer token of the pair
    strong = dict(strong, logits=confident)
    _, metrics, _ = run(strong, weak, mode="standard", lam=0.5)
    assert float(metrics["teacher_entropy"]) < 1e-6
    assert float(metrics["teacher_label_prob"]) == pytest.approx(1.0, abs=1e-6)
    np.testing.assert_allclose(float(metrics["kl_ref_act"]), float(metrics["ce"]), rtol=1e-5)
    # A flat teacher knows nothing: entropy log V, label probability 1/V.
    flat = dict(strong, logits=np.zeros_like(strong["logits"]))
    _, metrics, _ = run(flat, weak, mode="standard")
    assert float(metrics["teacher_entropy"]) == pytest.approx(np.log(VOCAB), rel=1e-5)
    assert float(metrics["teacher_label_prob"]) == pytest.approx(1 / VOCAB, rel=1e-5)


def test_max_answer_tokens_truncates_and_reports():
    strong, weak = pair(4)
    _, metrics, _ = run(strong, weak, mode="standard", max_answer_tokens=4)
    assert metrics["truncated_pairs"] == 1 and metrics["aligned_tokens"] == 3 + 4 + 4


@pytest.mark.parametrize("mode", ["official", "standard"])
def test_fully_masked_pair_and_constant_logits_have_finite_gradients(mode):
    strong, weak = pair(5)
    for member in (strong, weak):
        member["loss_mask"][1] = 0.0
        member["logits"][0] = 0.0  # constant rows: std = 0 in the z-score
    loss, metrics, (grad_weak, _) = run(strong, weak, mode=mode, normalize=True)
    assert np.isfinite(loss) and np.isfinite(grad_weak).all()
    assert np.all(grad_weak[1] == 0) and metrics["mismatched_pairs"] == 0
    zero = dict(weak, loss_mask=np.zeros_like(weak["loss_mask"]))
    loss, _, (grad_weak, _) = run(dict(strong, loss_mask=zero["loss_mask"]), zero, mode=mode)
    assert loss == 0.0 and np.isfinite(grad_weak).all()


def test_bad_options_raise():
    strong, weak = pair(6)
    with pytest.raises(ValueError, match="mode"):
        run(strong, weak, mode="released")
    with pytest.raises(ValueError, match="positions"):
        run(strong, weak, positions="answers")


jit_kl = jax.jit(lambda p, q: kl_divergence(jax.nn.log_softmax(p), jax.nn.log_softmax(q)))


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), scale=st.floats(0.0, 5.0), same=st.booleans())
def test_kl_nonnegative_zero_iff_equal_and_pinsker(seed, scale, same):
    rng = np.random.default_rng(seed)
    p = rng.normal(size=(4, VOCAB)).astype(np.float32) * 3
    q = p + (0.0 if same else scale) * rng.normal(size=p.shape).astype(np.float32)
    kl = np.asarray(jit_kl(p, q))
    tv = 0.5 * np.abs(np.exp(np_log_softmax(p)) - np.exp(np_log_softmax(q))).sum(-1)
    assert np.all(kl >= -1e-6)
    assert np.all(kl >= 2 * tv ** 2 - 1e-5)  # Pinsker: KL ≥ 2 TV², so KL = 0 only if p = q
    if same or scale == 0.0:
        np.testing.assert_allclose(kl, 0.0, atol=1e-6)


def test_registered_term_reads_pair_keys():
    strong, weak = pair(7)
    outputs = {"strong_logits": jnp.asarray(strong["logits"]),
               "weak_logits": jnp.asarray(weak["logits"])}
    batch = {"strong_loss_mask": strong["loss_mask"], "weak_targets": weak["targets"],
             "weak_loss_mask": weak["loss_mask"]}
    term = registry.get("loss", "puma_kl")
    value, _ = jax.jit(lambda o, b: term(o, b, mode="standard", lam=0.3))(outputs, batch)
    want, _, _ = run(strong, weak, mode="standard", lam=0.3)
    np.testing.assert_allclose(value, want, rtol=1e-6)
