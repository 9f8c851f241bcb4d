"""The delta rule (fast weights) as exact layers: one example per layer (Schlag et al. 2021).

Notation: B batch, n context examples (= steps), m queries, d input dim.  The delta rule with
key ``k = x_t``, value ``v = y_t`` and a scalar output (the fast weight W is the row w) is
``w <- w + beta (y_t - w . x_t) x_t``: online least mean squares, one pass of SGD over the
examples in prompt order on ``(1/2)(w . x - y)^2`` from ``w = 0``.

Token layout (Bai et al.'s, with a one-hot example gate):

============  =======================  ===================
slot          context token i          query token
============  =======================  ===================
``x``         x_i                      x_q
``y``         y_i                      0, then <w_n, x_q>
``w``         w_t (every token)        w_t
``one``       1                        1
``gate``      0                        -1
``pos``       e_i - 1 (0 at i, else -1)  -1
============  =======================  ===================

Layer t (t = 1..n) is two ReLU heads (:func:`constructions.parts.relu_gd_heads`) gated to the
single key t by ``B * pos[t-1]`` and scaled by n (the attention divides by n): the one admitted
key adds ``-beta (w . x_t - y_t) x_t`` to every token's ``w``.  The readout layer writes
``<w, x_q>`` into the query's ``y`` (:func:`constructions.parts.relu_readout_heads`).
"""
from __future__ import annotations

from fractions import Fraction

import torch

from verify import baselines
from verify.claims import Claim, Outcome, Part, Proof
from verify.prompts import PromptSpec
from verify.reference import LMS

from . import parts
from .construction import Construction
from .errors import ConstructionError
from .layout import Readout, ResidualLayout
from .registry import Bench, Paper, Result, register, register_paper


def delta_rule(d: int, n: int, beta: float, mask_const: float = 1e9) -> Construction:
    """One delta-rule (LMS) update per layer, exact, on the n examples in prompt order.

    **Theorem** (Schlag et al. 2021, the delta rule of fast weight programmers; one pass of SGD,
    Akyurek et al. 2022's baseline).  After layer t the ``w`` slot of every token is
    ``w_t = w_{t-1} + beta (y_t - w_{t-1} . x_t) x_t`` (``w_0 = 0``), and the readout layer writes
    ``<w_n, x_q>`` into the query's ``y``, so ``trace()[t-1] = Xq @ w_t``.

    **Proof sketch.**  Layer t's two heads score ``+-(w . x_j - y_j) + B pos_j[t-1]``; the gate
    is 0 only on key t, where ``relu(z) - relu(-z) = z`` gives ``(w . x_t - y_t)``, and ``-B`` on
    every other key, where both scores are ``<= 0`` once ``B`` exceeds ``|w . x_j - y_j|``; the
    value ``-beta n x_j`` over the divisor n makes it the update.  Checked in exact rational
    arithmetic (``icl-verify prove schlag21-delta-rule``).

    **Paper mapping.**  Schlag et al.'s fast weight matrix ``W [d_v, d_k]`` with
    ``W <- W + beta (v - W k) k^T``; here ``d_v = 1``, ``k = x_t``, ``v = y_t``, and the key is
    not normalised (their ``phi`` is the identity).  With ``beta = 2 lr`` it is Akyurek et al.'s
    one-pass SGD (``raw_sgd`` with ``lam = 0``), exact instead of approximate.

    **Resources.**  ``n + 1`` layers (n update layers + 1 readout), 2 heads of width ``d + 2``,
    width ``2d + n + 3``, ReLU attention normalised by n, no MLP.

    **Exactness.**  Exact (float64 round-off), for any ``mask_const`` above the score bound.

    **Domain.**  Exactly n examples; ``beta |x_t|^2 <= 2`` for every t (each update contracts
    along x_t); ``mask_const >= max(1, max_{t, j} |w_t . x_j - y_j|, max_t |w_t . x_q|)``.
    """
    d, n = parts.positive_int(d, "d"), parts.positive_int(n, "n")
    beta, mask_const = parts.real(beta, "beta"), parts.real(mask_const, "mask_const")
    parts.budget("delta_rule", layers=n + 1, width=2 * d + n + 3, heads=2, d_head=d + 2)
    lay = ResidualLayout.of([("x", d, "x"), ("y", 1, "y"), ("w", d, "zero"), ("one", 1, "one"),
                             ("gate", 1, "train_gate"), ("pos", n, "posgate")], Readout("y", 1.0))
    blocks = [parts.block("relu", parts.relu_gd_heads(lay, beta, mask_const, gate=("pos", t), scale=n))
              for t in range(n)]
    blocks.append(parts.block("relu", parts.relu_readout_heads(lay, mask_const)))

    def scores(X, y, Xq):
        ws = baselines.sgd_pass(X, y, beta)  # [B, n + 1, d]
        ctx = (torch.einsum("btd,bjd->btj", ws[:, :-1], X) - y[:, None, :]).abs().amax((1, 2))
        qry = torch.einsum("btd,bqd->btq", ws, Xq).abs().amax((1, 2))
        return torch.clamp(torch.maximum(ctx, qry), min=1.0)

    def stable(X, y, Xq):
        v = beta * (X**2).sum(-1).amax(-1)
        b = int(v.argmax())
        if float(v[b]) > 2:
            raise ConstructionError(f"prompt {b}: beta |x_t|^2 = {float(v[b]):.3g} > 2, where the delta rule "
                                    f"diverges; use beta <= {2 * beta / float(v[b]):.3g} or rescale x")

    domain = parts.all_checks(stable, parts.mask_check(mask_const, scores, "max |w_t . x_j - y_j|, |w_t . x_q|"))
    split = parts.fixed_examples(n, "delta_rule", f"build delta_rule with n={n} (one layer per example)")
    return Construction("delta_rule", dict(d=d, n=n, beta=beta, mask_const=mask_const), blocks, lay, d,
                        n_readout=1, mask_query=False, split=split, domain=domain)


def _case(p, k):
    X = p.X
    beta = k.lr_factor / max(float((X**2).sum(-1).max()), 1e-12)  # beta |x_t|^2 <= lr_factor < 2
    return delta_rule(p.spec.d, p.spec.n, beta), LMS(beta)


def delta_exact() -> Outcome:
    """delta_rule(d=2, n=4) equals LMS in exact rational arithmetic on random rational prompts."""
    from verify import exact as ex

    c = delta_rule(2, 4, 0.25)
    ok = True
    for seed in (0, 1, 2):
        X, y, Xq = ex.rational_prompt(PromptSpec(B=2, n=4, m=2, d=2, seed=seed))
        ok &= ex.trace_equals(c, LMS(Fraction(1, 4)), X, y, Xq)
    return Outcome(ok, "delta_rule(d=2, n=4, beta=1/4) = the LMS iterates exactly, after every layer, on 3 rational "
                       "prompts" if ok else "delta_rule differs from LMS in exact arithmetic")


def _baseline(prep, c):
    return lambda: baselines.sgd_pass(prep.X, prep.y, c.params["beta"])


register(
    delta_rule, summary="one delta-rule (LMS) update per layer: two ReLU heads gated to example t, the fast weight "
                        "replicated in every token",
    source="Schlag et al. 2021", exactness="exact",
    paper_resources="one fast-weight update per token (a recurrent layer)",
    bench=Bench(lambda d, n: dict(n=n, beta=0.5 / d), baseline=_baseline),
    claims=[
        Claim("schlag21-delta-rule", "Schlag et al. 2021", "the delta rule (fast weight update)",
              "after layer t every token's w is the delta-rule / LMS iterate w_t = w_{t-1} + beta (y_t - w_{t-1}.x_t) x_t, "
              "one example per layer in prompt order; the readout is <w_t, x_q>",
              "LMS iterates (numpy)", _case, LMS, prompt=dict(n=(1, 24)),
              proof=Proof("exact-rational", (Part("exact delta_rule", delta_exact),))),
    ],
)

register_paper(Paper(
    "Schlag et al. 2021", "Linear transformers are secretly fast weight programmers (Schlag, Irie, Schmidhuber; "
                          "arXiv 2102.11174)", (
        Result("delta rule", "the fast weight update W <- W + beta (v - W k) k^T, one key-value pair per step",
               ("schlag21-delta-rule",)),
    )))
