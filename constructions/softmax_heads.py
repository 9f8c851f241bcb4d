"""Two softmax heads in place of one linear head: GD with softmax attention (von Oswald et al. 2023, App. A.9).

Notation: B batch, n context examples, m queries, d input dim, D = d + 1 width, L layers
(= steps); ``s_ji = x_j^T P x_i`` the linear head's score (``P = lr I``), ``beta`` the softmax
heads' score scale, ``a_ji = beta s_ji``.

The linear GD head of :func:`constructions.parts.gd_head` adds ``-(1/n) sum_i s_ji y_i`` to every
token's y slot.  A softmax head with scores ``beta s_ji`` has the pattern
``p_ji = (1/n)(1 + a_ji - abar_j) + O(a^2)``; two heads with scores ``+beta s`` and ``-beta s``
and outputs ``-/+ 1/(2 beta)`` cancel the constant and every even order:

    (p+ - p-) / (2 beta) = (1/n) [ (s_ji - sbar_j) + beta^2 (s^3/6 - s M2_j/2 - M3_j/6) ] + O(beta^4)

with ``M_k = mean_i s_ji^k``.  The mean ``sbar_j = x_j^T P xbar`` vanishes exactly when the
context inputs are centred (``xbar = 0``); the keys never change (GD writes only y), so then every
layer is the linear GD layer up to the ``beta^2`` term.  Softmax attention cannot see the mean of
its scores (it is shift invariant), so without centring the two heads compute GD with the
centred score ``s - sbar``: a different algorithm, refused by the domain.

Token layout: von Oswald's ``(x, y)`` (:func:`constructions.parts.lsa_layout`), readout ``-y``.
"""
from __future__ import annotations

import numpy as np
import torch

from verify import baselines
from verify.claims import Claim, Proof
from verify.knobs import stable_lr
from verify.reference import GD
from verify.tolerance import Comparison

from . import parts
from .construction import Construction
from .errors import ConstructionError
from .registry import Bench, register

#: the context mean the domain accepts, in units of the run dtype's eps times ``max_i |x_i|``: a
#: centred float64 prompt keeps a mean of a few eps, and rounding it to float32 adds up to eps/2
CENTRED_EPS = 64


def centred_check(X, y, Xq, dtype=torch.float64):
    """The context inputs of every prompt have mean 0: ``|mean_i x_i| <= CENTRED_EPS eps max_i |x_i|``
    (eps of the run dtype)."""
    mean = X.mean(1).norm(dim=-1)
    size = X.norm(dim=-1).amax(-1)
    bad = (mean > CENTRED_EPS * torch.finfo(dtype).eps * size).nonzero()
    if bad.numel():
        b = int(bad[0, 0])
        raise ConstructionError(
            f"prompt {b}: the context inputs have mean of norm {float(mean[b]):.3g} (max |x_i| = {float(size[b]):.3g}); "
            "two softmax heads equal a linear head only on centred inputs (softmax cannot see the scores' mean): "
            "pass X - X.mean(axis=-2, keepdims=True), and centre y the same way to keep an intercept-free model")


#: the largest score scale ``beta S`` the domain accepts: beyond it the softmax saturates and the
#: pair stops approximating a linear head (the error bound of :func:`error_budget` is for
#: ``beta S <= 0.1``; at ``beta S = 1`` the error measured by benchmarks/softmax_lsa.py is 0.5% of the readout)
MAX_SCALE = 1.0


def scale_check(lr: float, beta: float):
    """``beta S <= MAX_SCALE`` for every prompt, ``S = lr max |x_j . x_i|`` over context and query
    tokens j and context tokens i (the largest score of a head)."""
    def check(X, y, Xq):
        S = lr * (torch.cat([X, Xq], 1) @ X.transpose(1, 2)).abs().flatten(1).amax(-1)
        bad = (beta * S > MAX_SCALE * (1 + parts.NORM_SLACK)).nonzero()  # slack: the rounding of a float32 prompt
        if bad.numel():
            b = int(bad[0, 0])
            raise ConstructionError(
                f"prompt {b}: the softmax heads' score scale beta S = {beta * float(S[b]):.3g} exceeds {MAX_SCALE:g}, "
                "where the softmax saturates and the pair no longer approximates a linear GD head; rebuild with "
                f"beta <= {MAX_SCALE / float(S[b]):.3g} (or scale X down)")

    return check


def softmax_gd(d: int, steps: int, lr: float, beta: float) -> Construction:
    """GD with softmax attention: each layer's pair of softmax heads approximates one linear GD head.

    **Theorem** (von Oswald et al. 2023, App. A.9, made quantitative here).  On prompts whose
    context inputs are centred, the query readout after layer t equals ``x_q . w_t`` of GD on
    ``L(w) = 1/(2n) |Xw - y|^2`` (step ``lr``, ``w_0 = 0``) up to an error
    ``O(beta^2 S^3 |y|)`` with ``S = max |s_ji|``: after the first layer it is
    ``(beta^2/n) sum_i (s^3/6 - s M2/2 - M3/6) y_i`` to ``O(beta^4)`` (module docstring), and
    halving beta divides the error of every layer by 4.

    **Resources.**  ``steps`` layers, 2 softmax heads of width d (plus value width 1) per layer,
    width ``d + 1``, no MLP.

    **Exactness.**  Approximate: error ``O(beta^2)``; in floating point the two heads' difference
    also loses ``~ eps / beta`` to cancellation, so the error is smallest near
    ``beta S ~ eps^(1/3)`` (docs/vonoswald.md measures it in float64 and float32).

    **Domain.**  Centred context inputs (``|mean_i x_i| <= 64 eps max_i |x_i|``, eps of the run dtype),
    ``lr * lambda_max(X^T X/n) <= 2`` and ``beta S <= 1`` (:data:`MAX_SCALE`).
    """
    d, steps = parts.positive_int(d, "d"), parts.positive_int(steps, "steps")
    lr, beta = parts.real(lr, "lr"), parts.real(beta, "beta")
    parts.budget("softmax_gd", layers=steps, width=d + 1, heads=2, d_head=d)
    lay = parts.lsa_layout(d)
    blocks = [parts.block("softmax", parts.softmax_pair_heads(lay, lr * np.eye(d), beta)) for _ in range(steps)]
    domain = parts.all_checks(centred_check, parts.step_check(lr), scale_check(lr, beta))
    return Construction("softmax_gd", dict(d=d, steps=steps, lr=lr, beta=beta), blocks, lay, d, domain=domain)


def leading_error(X, y, Xq, lr: float, beta: float) -> np.ndarray:
    """The first layer's predicted error ``[B, m]`` (readout minus GD's), to ``O(beta^4)``:
    ``(beta^2/n) sum_i (s^3/6 - s M2/2 - M3/6) y_i`` with ``s_i = lr x_q.x_i`` (centred X)."""
    s = lr * np.einsum("bmd,bnd->bmn", Xq, X)
    M2, M3 = (s**2).mean(-1, keepdims=True), (s**3).mean(-1, keepdims=True)
    return beta**2 * np.einsum("bmn,bn->bm", s**3 / 6 - s * M2 / 2 - M3 / 6, y) / X.shape[1]


#: the rate test's band: halving beta divides the first layer's error by 4 (1 +- RATE_BAND),
#: tested where the predicted beta^2 term exceeds DOMINANCE times its remainder and round-off
RATE_BAND = 0.1
DOMINANCE = 20.0


def error_budget(X, y, Xq, lr: float, beta: float, steps: int):
    """Bounds for one prompt (``X [n, d]``, ``y [n]``, ``Xq [m, d]``, centred X), with
    ``e = beta S`` (S the largest score over context and query tokens) and ``Y = max|y|``:

    * ``remainder``: the first layer's error minus :func:`leading_error` is at most
      ``e^4 S Y`` (the fifth-order odd part of the softmax pair has coefficients summing below
      0.4 per head, so ``|p+ - p-|`` beyond third order is below ``e^5/n`` for ``e <= 0.1``);
    * ``roundoff``: ``C eps (n + d) Y / beta`` (each head's output ``sum_i p_i y_i`` carries
      ``(n + d) eps Y``, and the pair's difference is divided by ``2 beta``);
    * ``bound[t]``: every layer's error at most ``t (1 + S)^(2t) ((5/6) e^2 S Y + roundoff)``: a
      layer adds at most ``(5/6) beta^2 S^3`` times the largest residual (the beta^2 term's three
      coefficients sum to 5/6), and one layer's map of the residuals has max-norm at most 1 + S."""
    from verify.tolerance import C, eps

    S = lr * np.abs(np.concatenate([X, Xq]) @ X.T).max()
    Y = np.abs(y).max()
    e = beta * S
    roundoff = C * eps(np.float64) * (X.shape[0] + X.shape[1]) * Y / beta
    t = np.arange(1, steps + 1)
    bound = t * (1 + S) ** (2 * t) * (5 / 6 * e**2 * S * Y + roundoff)
    return e**4 * S * Y, roundoff, bound


def check_softmax_lsa(prompt, knobs) -> Comparison:
    """``vonoswald23-softmax-lsa`` on a centred copy of each prompt, at ``beta S = 0.1
    score_factor`` (S the prompt's largest score), one prompt at a time, against GD in float64:

    1. the first layer's error is :func:`leading_error` within ``remainder + roundoff``
       (:func:`error_budget`): the beta^2 term is the error, at every prompt;
    2. where that term exceeds :data:`DOMINANCE` times ``remainder + roundoff``, halving beta
       divides the first layer's error by 4 to :data:`RATE_BAND`;
    3. every layer's error is within the budget's ``bound[t]``."""
    X = prompt.X - prompt.X.mean(1, keepdims=True)
    y, Xq = prompt.y, prompt.Xq
    lr = stable_lr(X, knobs.lr_factor)
    tiny = np.finfo(np.float64).tiny
    ref = GD(knobs.steps, lr).fit(X, y).trace(Xq)  # [S, B, m]
    rows = []
    for b in range(X.shape[0]):
        Xb, yb, Qb = X[b], y[b], Xq[b]
        S = max(lr * np.abs(np.concatenate([Xb, Qb]) @ Xb.T).max(), tiny)
        beta = 0.1 * knobs.score_factor / S
        e1 = softmax_gd(Xb.shape[1], knobs.steps, lr, beta).trace(Xb, yb, Qb) - ref[:, b]  # [S, m]
        pred = leading_error(Xb[None], yb[None], Qb[None], lr, beta)[0]
        rem, rnd, bound = error_budget(Xb, yb, Qb, lr, beta, knobs.steps)
        lead = np.abs(e1[0] - pred).max() / (rem + rnd)
        rate = 0.0
        if np.abs(pred).max() >= DOMINANCE * (rem + rnd):
            e2 = softmax_gd(Xb.shape[1], 1, lr, beta / 2).trace(Xb, yb, Qb)[0] - ref[0, b]
            rate = abs(np.linalg.norm(e1[0]) / max(np.linalg.norm(e2), tiny) / 4 - 1) / RATE_BAND
        rows.append([[lead, rate, float(np.abs(e1[t]).max() / bound[t])] for t in range(knobs.steps)])
    model = np.array(rows).transpose(1, 0, 2)  # [S, B, 3]
    return Comparison(model, np.zeros_like(model), np.ones_like(model), np.ones_like(model))


def _baseline(prep, c):
    return lambda: baselines.gd(prep.X, prep.y, c.steps, lr=c.params["lr"])


def _bench_params(d, n):
    return dict(steps=10, lr=0.01, beta=1.0)


register(
    softmax_gd, summary="two softmax heads with scores ±β s and outputs ∓1/(2β) in place of one linear GD head",
    source="von Oswald et al. 2023, App. A.9", exactness="approximate: error O(β²) on centred inputs; halving β quarters it",
    paper_resources='App. A.9: 2 softmax heads per layer in place of 1 linear head',
    bench=Bench(_bench_params, baseline=_baseline, centred=True),
    claims=[
        Claim("vonoswald23-softmax-lsa", "von Oswald et al. 2023", "App. A.9 (two softmax heads ~ one linear head)",
              "on centred inputs each layer's two softmax heads (scores +-beta s, outputs -+1/(2 beta)) equal one LSA "
              "GD layer up to O(beta^2): the first layer's error is (beta^2/n) sum_i (s^3/6 - s M2/2 - M3/6) y_i to "
              "O(beta^4), halving beta divides it by 4, and every layer's error is within t (1+S)^(2t) (5/6) (beta S)^2 "
              "S max|y|",
              "GD iterates (numpy) and the predicted beta^2 term", check_softmax_lsa, kind="bound",
              prompt=dict(n=(4, 40), d=(1, 8)), knobs=dict(score_factor=(0.1, 1.0)),
              proof=Proof("none", note="approximate (softmax); its error term and rate are checked numerically")),
    ],
)
