"""The copying layer: from the interleaved prompt to von Oswald's tokens, then GD (von Oswald et al. 2023, Prop. 3).

Notation: B batch, n context examples, m queries, d input dim, N = 2n context tokens,
D = d + 1 + 2n width, L = steps + 1 layers.

The prompt is embedded in Garg et al.'s interleaved format (``Construction(interleaved=True)``):
example i takes an x-token ``(x_i, 0, e_{2i})`` and a y-token ``(0, y_i, e_{2i+1})``, whose last
slot is the one-hot position of the context token; the queries ``(x_q, 0, 0)`` come last.

==========  ======================  ======================  ============
slot        x-token 2i              y-token 2i+1            query token
==========  ======================  ======================  ============
``x``       x_i                     0                       x_q
``y``       0, then y_i - w_t.x_i   y_i                     -w_t.x_q
``pos``     e_{2i}                  e_{2i+1}                0
==========  ======================  ======================  ============

Block 0 (the prefix) is one attention head whose score is ``p_t^T S p_s`` with the shift
``S = sum_s e_{s-1} e_s^T``: token t attends to token t + 1 and copies its y slot.  The x-token
2i then holds ``(x_i, y_i)``, von Oswald's token.  The GD layers that follow
(:func:`constructions.parts.gd_head`) see every context token as a key, but a y-token's input
slot is 0, so it adds nothing: they are GD on the n examples, divided by n.
"""
from __future__ import annotations

from fractions import Fraction

import numpy as np

from verify import baselines
from verify.claims import LR, Claim, Outcome, Part, Proof
from verify.knobs import stable_lr
from verify.prompts import PromptSpec
from verify.reference import GD
from verify.tolerance import Comparison

from . import parts
from .construction import Construction
from .errors import ConstructionError
from .registry import Bench, register
from .spec import AttentionSpec, BlockSpec

ATTENTION = ("linear", "softmax")


def copy_block(lay, n: int, attention: str = "linear", beta: float = 20.0) -> BlockSpec:
    """The copying layer: every context token t adds the ``y`` slot of token t + 1 to its own.
    Linear attention (divisor n): the shift score times n, exact.  Softmax: scores ``beta`` on
    the shift and 0 elsewhere, with a null logit ``beta / 2`` (with value 0) so that a query,
    which has no position, attends to nothing; approximate, error ``O(n e^{-beta/2})``."""
    N = 2 * n
    shift = np.eye(N, k=-1)  # shift[s, s-1] = 1: k_s = e_{s-1}, so q_t . k_s = [s = t + 1]
    scale = float(n) if attention == "linear" else beta
    head = dict(W_Q=lay.read({"pos": scale * np.eye(N)}, N), W_K=lay.read({"pos": shift}, N),
                W_V=lay.read({"y": np.eye(1)}, 1), W_O=lay.write({"y": np.eye(1)}, 1))
    null = beta / 2 if attention == "softmax" else None
    return BlockSpec(AttentionSpec.from_heads(attention, [head], null_score=null), None)


def copy_gd(d: int, n: int, steps: int, lr: float, attention: str = "linear", beta: float = 20.0) -> Construction:
    """A copying layer turns the interleaved prompt into von Oswald's tokens; each later layer is one GD step.

    **Theorem** (von Oswald et al. 2023, Prop. 3, §3.4).  On the interleaved prompt
    ``x_1, y_1, ..., x_n, y_n, x_q`` with one-hot positions, one attention layer moves every
    ``y_i`` into the x-token before it, and after GD layer t the query readout equals
    ``x_q . w_t`` of GD on ``L(w) = 1/(2n) |Xw - y|^2`` from ``w_0 = 0`` with step ``lr``.  With
    linear attention this is exact; with softmax attention (scores ``beta`` on the shift, a null
    logit ``beta/2``) the copy is approximate with error ``O(n e^{-beta/2})``, and raising beta by
    2 divides the readout's error by e.

    **Proof sketch.**  Copying: the score of token t with key s is ``n [s = t + 1]``, divided by
    n; values are the y slots, which before the layer are 0 on x-tokens and ``y_i`` on y-tokens:
    x-token 2i gains ``y_i``, y-token 2i+1 gains 0 (the next x-token's y), a query gains 0 (no
    position).  GD: Prop. 1's induction, where the keys with input slot 0 (y-tokens) contribute
    ``0 . y = 0``.  Checked in exact rational arithmetic (``icl-verify prove vonoswald23-prop3``).

    **Paper mapping.**  The paper's tokens ``e_{2j} = x_j``, ``e_{2j+1} = (0, y_j)`` with
    concatenated one-hot positions; its remark that a second head can zero the odd tokens is not
    needed here, since y-tokens have input 0 and drop out of every GD sum.

    **Resources.**  ``steps + 1`` layers, 1 head per layer (head width 2n in the copying layer,
    d in the GD layers), width ``d + 1 + 2n``, no MLP; built for one n (the position slot).

    **Exactness.**  Linear: exact (float64 round-off).  Softmax: approximate, ``O(n e^{-beta/2})``.

    **Domain.**  n examples (the construction's n) and ``lr * lambda_max(X^T X/n) <= 2``; softmax:
    ``beta >= 2 ln(3n)`` (refused at build), where :func:`copy_bound` holds.
    """
    d, n, steps = parts.positive_int(d, "d"), parts.positive_int(n, "n"), parts.positive_int(steps, "steps")
    lr, beta = parts.real(lr, "lr"), parts.real(beta, "beta")
    if not isinstance(attention, str) or attention not in ATTENTION:
        raise ConstructionError(f"attention must be one of {ATTENTION}, got {attention!r}")
    if attention == "softmax" and 3 * n * np.exp(-beta / 2) > 1:
        raise ConstructionError(f"beta={beta:g} is too small for the softmax copy of n={n} examples: the copy is "
                                f"within its bound only for 3 n e^(-beta/2) <= 1; use beta >= {2 * np.log(3 * n):.3g}")
    parts.budget("copy_gd", layers=steps + 1, width=d + 1 + 2 * n, d_head=max(d, 2 * n))
    lay = parts.lsa_layout(d, ("pos", 2 * n, "position"))
    blocks = [copy_block(lay, n, attention, beta)]
    blocks += [parts.block("linear", [parts.gd_head(lay, lr * np.eye(d))]) for _ in range(steps)]
    split = parts.fixed_examples(n, "copy_gd", f"rebuild with n={n} replaced by the prompt's number of examples")
    params = dict(d=d, n=n, steps=steps, lr=lr, attention=attention, beta=beta)
    return Construction("copy_gd", params, blocks, lay, d, domain=parts.step_check(lr), split=split, n_prefix=1,
                        interleaved=True)


def _case(p, k):
    lr = stable_lr(p.X, k.lr_factor)
    return copy_gd(p.spec.d, p.spec.n, k.steps, lr), GD(k.steps, lr)


#: the softmax copy's rate band: raising beta by 2 divides the error by e (1 +- COPY_BAND); the
#: neglected terms are smaller by ``3 n e^{-beta/2} <= e^{-4}`` relative at the betas checked
COPY_BAND = 0.1


def copy_bound(X, y, Xq, steps: int, lr: float, beta: float) -> np.ndarray:
    """``[B, m]`` bound on the softmax copy's readout error for ``3 n e^{-beta/2} <= 1``:
    ``e^{-beta/2} max|y| (2 t lr |x_q| max_i |x_i| + n)``.  The copied labels are off by at most
    ``2 e^{-beta/2} max|y|`` (the missing weight ``e^{-beta/2} + 2n e^{-beta}`` on the right key plus
    ``n e^{-beta}`` on the others); t stable GD steps carry a label error v into ``|w_t| <= t lr
    max|x| max|v|``; the query's own y slot gains at most ``n e^{-beta/2} max|y|`` (its keys
    against the null logit)."""
    t = steps * lr * np.linalg.norm(X, axis=-1).max(-1, keepdims=True)
    return np.exp(-beta / 2) * np.abs(y).max(-1, keepdims=True) * (2 * t * np.linalg.norm(Xq, axis=-1) + X.shape[1])


def check_softmax_copy(prompt, knobs) -> Comparison:
    """``vonoswald23-prop3-softmax``, one prompt of the batch at a time: (1) per query, the readout's
    error against GD at ``beta = 2 ln(3n) + 8 + 6 beta_factor`` is within :func:`copy_bound`;
    (2) raising beta by 2 divides the error by e to ``COPY_BAND``, at the first beta (from that one,
    in steps of 4) where the ``e^{-beta/2}`` term, whose coefficient is measured at beta + 16,
    exceeds 20 times the neglected terms ``3 n e^{-beta/2}`` times the bound."""
    X, y, Xq = prompt.arrays
    n, d = X.shape[1], X.shape[2]
    lr = stable_lr(X, knobs.lr_factor)
    want = GD(knobs.steps, lr).fit(X, y).trace(Xq)[-1]  # [B, m]
    beta0 = 2 * np.log(3 * n) + 8.0 + 6.0 * knobs.beta_factor
    tiny = np.finfo(np.float64).tiny
    rates, within = [], []
    for b in range(X.shape[0]):
        Xb, yb, Qb = X[b], y[b], Xq[b]
        err = lambda beta: copy_gd(d, n, knobs.steps, lr, "softmax", beta).predict(Xb, yb, Qb) - want[b]  # noqa: E731
        bound = lambda beta: copy_bound(Xb[None], yb[None], Qb[None], knobs.steps, lr, beta)[0]  # noqa: E731
        within.append((np.abs(err(beta0)) / bound(beta0)).max())
        beta = beta0
        for _ in range(8):
            coef = np.linalg.norm(err(beta + 16)) * np.exp((beta + 16) / 2)  # the e^{-beta/2} term's coefficient
            if coef * np.exp(-beta / 2) >= 20 * 3 * n * np.exp(-beta / 2) * np.linalg.norm(bound(beta)):
                break
            beta += 4
        rates.append(np.linalg.norm(err(beta)) / max(np.linalg.norm(err(beta + 2)), tiny))
    rate, within = np.array(rates), np.array(within)
    model = np.stack([np.abs(rate / np.e - 1), within], -1)[None]  # [1, B, 2]
    tol = np.stack([np.full_like(rate, COPY_BAND), np.ones_like(rate)], -1)[None]
    return Comparison(model, np.zeros_like(model), tol, np.ones_like(model))


def copy_exact() -> Outcome:
    """copy_gd(d=2, n=4, 3 steps) equals GD in exact rational arithmetic on random rational prompts."""
    from verify import exact as ex

    c = copy_gd(2, 4, 3, LR)
    ok = all(ex.trace_equals(c, GD(3, Fraction(LR)), *ex.rational_prompt(PromptSpec(B=2, n=4, m=2, d=2, seed=s)))
             for s in (0, 1, 2))
    return Outcome(ok, "copy_gd(d=2, n=4, 3 steps) on the interleaved prompt = GD exactly on 3 rational prompts" if ok
                   else "copy_gd differs from GD in exact arithmetic")


def _baseline(prep, c):
    return lambda: baselines.gd(prep.X, prep.y, c.steps, lr=c.params["lr"])


register(
    copy_gd, summary="a copying layer moves each y_i into the x-token before it (interleaved prompt, one-hot "
                     "positions); then one GD step per LSA layer",
    source="von Oswald et al. 2023, Prop. 3", exactness="linear: exact; softmax: approximate, O(n e^(-β/2))",
    paper_resources='Prop. 3: 1 copying layer (+1 head to zero the odd tokens), then the Prop. 1 layers',
    bench=Bench(lambda d, n: dict(n=n, steps=10, lr=0.01), baseline=_baseline),
    claims=[
        Claim("vonoswald23-prop3", "von Oswald et al. 2023", "Prop. 3, §3.4 (copying layer, linear)",
              "on the interleaved prompt x_1, y_1, ..., x_n, y_n, x_q with one-hot positions, one linear attention "
              "layer copies each y_i into the x-token before it; the following LSA layers are GD steps",
              "GD iterates x_q.w_t (numpy)", _case, GD, variant="linear", prompt=dict(n=(1, 24)),
              proof=Proof("exact-rational", (Part("exact copy_gd", copy_exact),))),
        Claim("vonoswald23-prop3-softmax", "von Oswald et al. 2023", "Prop. 3, §3.4 (copying layer, softmax)",
              "with softmax attention (shift scores beta, null logit beta/2) the copy is approximate: the readout's "
              "error is at most e^(-beta/2) max|y| (2 t lr |x_q| max|x_i| + n), and raising beta by 2 divides it by e",
              "GD iterates (numpy)", check_softmax_copy, kind="bound", variant="softmax", prompt=dict(n=(1, 24)),
              knobs=dict(beta_factor=(0.0, 1.0)),
              proof=Proof("none", note="approximate (softmax); its error bound and rate are checked numerically")),
    ],
)
