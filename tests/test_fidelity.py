"""Fidelity of every loss-based unlearning method to its reference (issue 11).

Each method's loss and gradient on a small fixed batch are checked against the reference formula,
written here independently in a few lines of numpy (float64): open-unlearning's trainer for the
methods it has (configs/trainer/*.yaml and src/trainer/unlearn/*.py, with its utils' helpers:
HF's pooled mean token loss, per-sequence summed NLL, batchmean KL over flattened positions), the
paper (or the authors' code, where a parameter selects it) for the others. Gradients are central
finite differences of the numpy loss; a stop-gradient in the reference (weights, soft targets) is
held at the evaluation point, so the finite difference sees only the differentiated part.

The model: logits[b, t] = W[input_ids[b, t]] + P[t], with fixed random W, P (vocabulary 5, id 0
the padding), and a frozen reference model of the same form. The batches have two rows of
different answer lengths, prompt and padding, so pooled and per-sequence averages differ.
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from forgetlab.unlearning import build_method

V, T = 5, 7
X = -100
FORGET = ([[1, 2, 3, 4, 2, 0, 0], [1, 3, 2, 2, 4, 1, 3]], [[X, X, 3, 4, 2, X, X], [X, X, X, 2, 4, 1, 3]])
IDK = ([[1, 2, 4, 4, 1, 0, 0], [1, 3, 2, 4, 4, 0, 0]], [[X, X, 4, 4, 1, X, X], [X, X, X, 4, 4, X, X]])
RETAIN = ([[1, 4, 3, 3, 0, 0, 0], [1, 2, 2, 3, 1, 4, 0]], [[X, X, 3, 3, X, X, X], [X, X, X, 3, 1, 4, X]])

_rng = np.random.default_rng(0)
THETA = np.concatenate([_rng.normal(size=V * V), 0.5 * _rng.normal(size=T * V)])
THETA_REF = np.concatenate([_rng.normal(size=V * V), 0.5 * _rng.normal(size=T * V)])


# ---------------------------------------------------------------- numpy reference -------------

def np_batch(rows):
    ids, labels = (np.array(a) for a in rows)
    return {"ids": ids, "labels": labels}


def np_logits(theta, b):
    W, P = theta[:V * V].reshape(V, V), theta[V * V:].reshape(T, V)
    return W[b["ids"]] + P[: b["ids"].shape[1]]


def lsm(z):
    m = z.max(-1, keepdims=True)
    return z - m - np.log(np.exp(z - m).sum(-1, keepdims=True))


def logsig(x):
    return -np.logaddexp(0.0, -x)


def next_token(theta, b, labels=None):
    """(log-softmax at the next-token positions, log p of each target, valid mask)."""
    lp = lsm(np_logits(theta, b)[:, :-1])
    tg = (b["labels"] if labels is None else labels)[:, 1:]
    valid = tg != X
    tok = np.take_along_axis(lp, np.where(valid, tg, 0)[..., None], -1)[..., 0]
    return lp, np.where(valid, tok, 0.0), valid


def hf_nll(theta, b):  # HF's model(**inputs).loss: mean over all supervised tokens of the batch
    _, tok, valid = next_token(theta, b)
    return -tok.sum() / valid.sum()


def seq_nll(theta, b):  # open-unlearning's compute_batch_nll: per-sequence summed NLL
    return -next_token(theta, b)[1].sum(-1)


F, I, R = np_batch(FORGET), np_batch(IDK), np_batch(RETAIN)


def ref_grad_ascent(th):
    return -hf_nll(th, F)


def ref_grad_diff(th, gamma, alpha, kl=False):
    if kl:  # kl_div(log p_model, log p_ref, batchmean) over the flattened (batch * length) positions
        lp, lq = lsm(np_logits(th, R)), lsm(np_logits(THETA_REF, R))
        retain = (np.exp(lq) * (lq - lp)).sum() / (lp.shape[0] * lp.shape[1])
    else:
        retain = hf_nll(th, R)
    return gamma * -hf_nll(th, F) + alpha * retain


def ref_npo(th, beta, gamma, alpha):
    lose_ratio = -(seq_nll(th, F) - seq_nll(THETA_REF, F))
    return gamma * (-2 / beta * logsig(-beta * lose_ratio).mean()) + alpha * hf_nll(th, R)


def ref_simnpo(th, beta, delta, gamma, alpha):
    n = (F["labels"] != X).sum(-1)
    forget = -logsig(beta * (seq_nll(th, F) / n - delta)).mean() * 2 / beta
    return gamma * forget + alpha * hf_nll(th, R)


def ref_dpo(th, beta, gamma, alpha, scale=None):
    win = -(seq_nll(th, I) - seq_nll(THETA_REF, I))
    lose = -(seq_nll(th, F) - seq_nll(THETA_REF, F))
    scale = 2 / beta if scale is None else scale
    return gamma * (-scale * logsig(beta * (win - lose)).mean()) + alpha * hf_nll(th, R)


def ref_weighted_ascent(th, frozen, weight, gamma, alpha, per_sequence=False):
    """WGA / SatImp: -(w * CE) over the supervised tokens, pooled (or per sequence)."""
    _, tok, valid = next_token(th, F)
    w = weight(np.exp(next_token(frozen, F)[1]))
    if per_sequence:
        forget = ((w * tok * valid).sum(-1) / valid.sum(-1)).mean()
    else:
        forget = -(w * -tok)[valid].mean()
    return gamma * forget + alpha * hf_nll(th, R)


def ref_undial(th, beta, gamma, answer_only=False):
    student = lsm(np_logits(th, F)[:, :-1])
    teacher = np_logits(THETA_REF, F)[:, :-1].copy()
    tg = F["labels"][:, 1:]
    for b, t in zip(*np.nonzero(tg != X)):
        teacher[b, t, tg[b, t]] -= beta
    q = np.exp(lsm(teacher))
    ce = -(q * student).sum(-1)
    return gamma * (ce[tg != X].mean() if answer_only else ce.mean())


def ref_ce_u(th, frozen, n_skip):
    labels = F["labels"].copy()
    for row in labels:
        row[np.nonzero(row != X)[0][:n_skip]] = X
    lp, _, valid = next_token(th, F, labels)
    target_logits = np_logits(frozen, F)[:, :-1].copy()
    tg = labels[:, 1:]
    for b, t in zip(*np.nonzero(valid)):
        target_logits[b, t, tg[b, t]] = -np.inf
    q = np.exp(lsm(target_logits))
    return -(np.nan_to_num(q * lp)).sum(-1)[valid].mean()


def flat_probs(th, b, padded_batch=False):
    _, tok, valid = next_token(th, b)
    p = np.exp(tok) * valid
    return p.sum() / p.size if padded_batch else p.sum(-1) / valid.sum(-1)


# ---------------------------------------------------------------- torch side ------------------

class TokenPositionModel(torch.nn.Module):
    """The same model as np_logits, with trainable W and P."""

    def __init__(self, theta):
        super().__init__()
        self.W = torch.nn.Parameter(torch.tensor(theta[:V * V].reshape(V, V)))
        self.P = torch.nn.Parameter(torch.tensor(theta[V * V:].reshape(T, V)))

    def forward(self, input_ids, attention_mask=None, **_):
        return SimpleNamespace(logits=self.W[input_ids] + self.P[: input_ids.size(1)])


def torch_batch(rows):
    ids, labels = (torch.tensor(a) for a in rows)
    return {"input_ids": ids, "labels": labels, "attention_mask": (ids != 0).long()}


def run(spec, with_retain=True):
    """(loss, gradient as a flat float64 vector) of a method on the fixed batches."""
    method = build_method(spec)
    if method.needs_reference:
        method.reference = TokenPositionModel(THETA_REF).requires_grad_(False)
    model = TokenPositionModel(THETA)
    batch = {"forget": torch_batch(FORGET), "idk": torch_batch(IDK),
             "retain": torch_batch(RETAIN) if with_retain else None}
    loss, _ = method.loss(model, batch)
    loss.backward()
    return loss.item(), torch.cat([model.W.grad.flatten(), model.P.grad.flatten()]).numpy()


def fd_grad(f, theta=THETA, eps=1e-6):
    g = np.zeros_like(theta)
    for i in range(theta.size):
        d = np.zeros_like(theta)
        d[i] = eps
        g[i] = (f(theta + d) - f(theta - d)) / (2 * eps)
    return g


def check(spec, ref, with_retain=True):
    loss, grad = run(spec, with_retain)
    assert loss == pytest.approx(ref(THETA), rel=1e-5, abs=1e-6)
    assert np.allclose(grad, fd_grad(ref), atol=2e-5, rtol=1e-4)
    return loss, grad


# ---------------------------------------------------------------- the checks ------------------

def test_grad_ascent_is_open_unlearning_gradascent():
    check({"name": "grad_ascent"}, ref_grad_ascent, with_retain=False)


@pytest.mark.parametrize("kl", [False, True])
def test_grad_diff_is_open_unlearning_graddiff(kl):
    spec = {"name": "grad_diff", "gamma": 0.7, "alpha": 1.3, "retain_loss": "kl" if kl else "nll"}
    check(spec, lambda th: ref_grad_diff(th, 0.7, 1.3, kl))


def test_grad_diff_kl_over_answer_tokens_differs_from_the_reference():
    loss, _ = run({"name": "grad_diff", "retain_loss": "kl", "kl_tokens": "answer"})
    lp, _, valid = next_token(THETA, R)
    lq = lsm(np_logits(THETA_REF, R)[:, :-1])
    kl = (np.exp(lq) * (lq - lp)).sum(-1)
    assert loss == pytest.approx(-hf_nll(THETA, F) + kl[valid].mean(), rel=1e-5)
    assert abs(loss - ref_grad_diff(THETA, 1.0, 1.0, kl=True)) > 1e-3


def test_npo_is_open_unlearning_npo():
    check({"name": "npo", "beta": 0.5, "gamma": 0.8, "alpha": 0.6}, lambda th: ref_npo(th, 0.5, 0.8, 0.6))


def test_simnpo_is_open_unlearning_simnpo():
    check({"name": "simnpo", "beta": 2.0, "delta": 0.3, "gamma": 0.5, "alpha": 0.7},
          lambda th: ref_simnpo(th, 2.0, 0.3, 0.5, 0.7))
    check({"name": "simnpo"}, lambda th: ref_simnpo(th, 4.5, 0.0, 0.125, 1.0))


@pytest.mark.parametrize("plain", [False, True])
def test_idk_dpo_is_open_unlearning_dpo(plain):
    check({"name": "idk_dpo", "beta": 0.4, "gamma": 0.9, "alpha": 0.5, "plain": plain},
          lambda th: ref_dpo(th, 0.4, 0.9, 0.5, scale=1.0 if plain else None))


@pytest.mark.parametrize("per_sequence", [False, True])
def test_wga_is_open_unlearning_wga(per_sequence):
    spec = {"name": "wga", "beta": 1.5, "gamma": 0.8, "alpha": 0.4, "reduction": "sequence" if per_sequence else "pooled"}
    check(spec, lambda th: ref_weighted_ascent(th, THETA, lambda p: p**1.5, 0.8, 0.4, per_sequence))


@pytest.mark.parametrize("per_sequence", [False, True])
def test_satimp_is_open_unlearning_satimp(per_sequence):
    spec = {"name": "satimp", "beta1": 2.0, "beta2": 1.5, "gamma": 0.3, "alpha": 0.9,
            "reduction": "sequence" if per_sequence else "pooled"}
    check(spec, lambda th: ref_weighted_ascent(th, THETA, lambda p: p**2.0 * (1 - p) ** 1.5, 0.3, 0.9, per_sequence))
    check({"name": "satimp"}, lambda th: ref_weighted_ascent(th, THETA, lambda p: p**5 * (1 - p), 0.1, 1.0))


@pytest.mark.parametrize("answer_only", [False, True])
def test_undial_is_open_unlearning_undial(answer_only):
    spec = {"name": "undial", "beta": 3.0, "gamma": 0.7, "tokens": "answer" if answer_only else "all"}
    check(spec, lambda th: ref_undial(th, 3.0, 0.7, answer_only), with_retain=False)


def test_undial_with_retain_adds_its_pooled_nll():
    loss, _ = run({"name": "undial", "alpha": 0.5})
    assert loss == pytest.approx(ref_undial(THETA, 10.0, 1.0) + 0.5 * hf_nll(THETA, R), rel=1e-5)


@pytest.mark.parametrize("n_skip", [1, 0, 2])
def test_ce_u_is_open_unlearning_ceu(n_skip):
    check({"name": "ce_u", "skip_first": n_skip}, lambda th: ref_ce_u(th, THETA, n_skip), with_retain=False)


def test_ce_u_with_retain_adds_its_pooled_nll():
    loss, _ = run({"name": "ce_u", "alpha": 0.5})
    assert loss == pytest.approx(ref_ce_u(THETA, THETA, 1) + 0.5 * hf_nll(THETA, R), rel=1e-5)


def test_idk_nll_is_tofu_idk():
    # the paper: NLL_idk + alpha NLL_retain
    check({"name": "idk_nll", "alpha": 0.5}, lambda th: hf_nll(th, I) + 0.5 * hf_nll(th, R))
    # TOFU's code: one forward pass on the refusal and retain rows concatenated, HF's mean loss
    joint = {k: np.concatenate([I[k], R[k]]) for k in I}
    check({"name": "idk_nll", "reduction": "pooled"}, lambda th: hf_nll(th, joint))


# FLAT, the paper (Table 2: f-GAN activation g and conjugate f*), per-sample mean token probability
PAPER_FLAT = {
    "kl": lambda e, f: -(e - np.exp(f - 1)),
    "total_variation": lambda e, f: -(np.tanh(e) / 2 - np.tanh(f) / 2),
    "pearson": lambda e, f: -(e - (f**2 / 4 + f)),
    "js": lambda e, f: -((np.log(2) - np.log1p(np.exp(-e))) - (f + np.log1p(np.exp(-f)) - np.log(2))),
}


@pytest.mark.parametrize("divergence", sorted(PAPER_FLAT))
def test_flat_is_the_paper(divergence):
    def ref(th):
        return PAPER_FLAT[divergence](flat_probs(th, I), flat_probs(th, F)).mean()

    _, grad = check({"name": "flat", "divergence": divergence}, ref, with_retain=False)
    assert np.any(grad != 0)


def test_flat_padded_batch_is_the_authors_code():
    # the authors' KL: activation -mean(x), conjugate -mean(exp(x - 1)), loss = act(P_e) - conj(P_f),
    # with each P the batch's summed answer-token probabilities over batch * (length - 1)
    def ref(th):
        return -flat_probs(th, I, True) + np.exp(flat_probs(th, F, True) - 1)

    check({"name": "flat", "divergence": "kl", "reduction": "padded_batch"}, ref, with_retain=False)


def test_task_vector_trains_on_the_pooled_forget_nll_and_negates():
    check({"name": "task_vector"}, lambda th: hf_nll(th, F), with_retain=False)
    method = build_method({"name": "task_vector", "alpha": 0.5})
    method.reference = TokenPositionModel(THETA_REF)
    model = TokenPositionModel(THETA)
    method.finalize(model)
    out = torch.cat([model.W.detach().flatten(), model.P.detach().flatten()]).numpy()
    assert np.allclose(out, THETA_REF - 0.5 * (THETA - THETA_REF), atol=1e-6)


# open-unlearning's configs/trainer/<X>.yaml method_args (gamma = forget weight, alpha = retain weight)
REFERENCE_DEFAULTS = {
    "grad_diff": {"gamma": 1.0, "alpha": 1.0, "retain_loss": "nll"},
    "npo": {"beta": 0.1, "gamma": 1.0, "alpha": 1.0},
    "simnpo": {"beta": 4.5, "delta": 0.0, "gamma": 0.125, "alpha": 1.0},
    "idk_dpo": {"beta": 0.1, "gamma": 1.0, "alpha": 1.0},
    "wga": {"beta": 1.0, "gamma": 1.0, "alpha": 1.0},
    "satimp": {"beta1": 5.0, "beta2": 1.0, "gamma": 0.1, "alpha": 1.0},
    "undial": {"beta": 10.0, "gamma": 1.0, "alpha": 0.0},
    "ce_u": {"skip_first": 1, "alpha": 0.0},
    "idk_nll": {"alpha": 1.0},
    "task_vector": {"alpha": 1.0},
}


@pytest.mark.parametrize("name", sorted(REFERENCE_DEFAULTS))
def test_defaults_are_the_reference_configs(name):
    method = build_method({"name": name})
    assert {k: getattr(method, k) for k in REFERENCE_DEFAULTS[name]} == REFERENCE_DEFAULTS[name]


BAD = [("npo", "beta", 0.0), ("npo", "gamma", -1.0), ("npo", "alpha", float("nan")), ("grad_diff", "gamma", -1.0),
       ("grad_diff", "alpha", -1.0), ("grad_diff", "kl_tokens", "prompt"), ("grad_diff", "retain_loss", "mse"),
       ("simnpo", "beta", -1.0), ("idk_dpo", "beta", 0.0), ("wga", "beta", "1"), ("satimp", "beta1", True),
       ("undial", "beta", float("inf")), ("ce_u", "skip_first", True), ("flat", "reduction", "pooled"),
       ("task_vector", "alpha", -0.5), ("idk_nll", "alpha", -1.0)]


@pytest.mark.parametrize(("name", "param", "value"), BAD)
def test_out_of_range_parameters_are_named(name, param, value):
    """A value of the wrong type is caught by the registry (forgetlab.registry.build, the error's
    `where` names the parameter); a number out of range by the method, naming it in the message."""
    with pytest.raises(ValueError) as err:
        build_method({"name": name, param: value})
    assert getattr(err.value, "where", None) == f".{param}" or str(err.value).startswith(f"{name}.{param} ")
