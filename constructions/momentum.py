"""GD with heavy-ball momentum: one linear self-attention layer per step (the tutorial's construction).

Notation: B batch, n context examples, m queries, d input dim, D residual width, L layers
(= steps).  Loss ``L(w) = 1/(2n) sum_i (w.x_i - y_i)^2``; heavy ball (Polyak 1964)::

    w_{t+1} = w_t - lr grad L(w_t) + beta (w_t - w_{t-1}),      w_{-1} = w_0 = 0.

Token layout (von Oswald's ``(x, y)`` plus the previous iterate's residual and a constant):

=========  ========================  =================
slot       context token i           query token
=========  ========================  =================
``x``      x_i                       x_q
``y``      y_i - w_t.x_i             -w_t.x_q
``p``      y_i - w_{t-1}.x_i         -w_{t-1}.x_q
``one``    1                         1
=========  ========================  =================

Both residual slots start at the prompt's labels (``p`` is filled like ``y``: the start
``w_{-1} = w_0 = 0``).  The readout is ``-y`` of the query.  docs/extending.md builds this
module step by step from the public API.
"""
from __future__ import annotations

import numpy as np

from verify import baselines
from verify.claims import LR, Claim, Proof, induction
from verify.knobs import stable_lr
from verify.reference import HeavyBall

from . import parts
from .construction import Construction
from .errors import ConstructionError
from .layout import ResidualLayout
from .registry import Bench, Paper, Result, register, register_paper


def momentum_head(lay: ResidualLayout, beta: float) -> dict:
    """``y_j <- y_j + beta (y_j - p_j)`` and ``p_j <- y_j`` (the pre-layer value) for every token j:
    a token-local linear map (:func:`parts.product_head` with the constant value ``one``)."""
    return parts.product_head(lay, {"y": [[1.0]], "p": [[-1.0]]}, {"one": [[1.0]]}, {"y": [[beta]], "p": [[1.0]]})


def heavy_ball(d: int, steps: int, lr: float, beta: float) -> Construction:
    """Gradient descent with heavy-ball momentum in context: one linear self-attention layer per step.

    **Theorem** (heavy-ball method of Polyak 1964, "Some methods of speeding up the convergence of
    iteration methods", USSR Comput. Math. Math. Phys. 4(5); as an attention layer: the
    construction of von Oswald et al. 2023, Prop. 1, with one more head).  For every prompt and
    t = 1..steps the query readout after layer t equals ``x_q . w_t`` with
    ``w_{t+1} = w_t - lr grad L(w_t) + beta (w_t - w_{t-1})``, ``w_{-1} = w_0 = 0``,
    ``L(w) = 1/(2n) |Xw - y|^2``.

    **Proof sketch.**  Induction on the layout invariant (module docstring).  The GD head
    (:func:`parts.gd_head` with ``P = lr I``) adds ``lr grad L(w_t).x_j`` to every token's ``y``
    slot; the momentum head adds ``beta (y_j - p_j) = -beta (w_t - w_{t-1}).x_j`` to it and
    moves the old ``y_j`` into ``p_j``.  Together: ``y_j - w_{t+1}.x_j`` in ``y`` and
    ``y_j - w_t.x_j`` in ``p``.  Proved for symbolic d and n (``icl-verify prove
    polyak64-heavy-ball``).

    **Resources.**  ``steps`` layers, 2 heads (head width d and 1), width ``d + 3``, linear
    attention, no MLP.

    **Exactness.**  Exact: float64 round-off only (tolerance model in :mod:`verify.tolerance`).

    **Domain.**  ``0 <= beta < 1`` and ``lr * lambda_max(X^T X/n) <= 2 (1 + beta)`` per prompt: on
    an eigenvalue a of ``X^T X/n`` the iteration is ``e_{t+1} = (1 + beta - lr a) e_t - beta e_{t-1}``,
    whose characteristic roots lie in the closed unit disc exactly then (checked at prediction
    time; ``check=False`` skips it).
    """
    d, steps = parts.positive_int(d, "d"), parts.positive_int(steps, "steps")
    lr, beta = parts.real(lr, "lr"), parts.real(beta, "beta", strict=False)
    if beta >= 1:
        raise ConstructionError(f"beta must be in [0, 1) (the heavy ball diverges from beta = 1 on), got {beta!r}")
    parts.budget("heavy_ball", layers=steps, width=d + 3, heads=2, d_head=d)
    lay = parts.lsa_layout(d, ("p", 1, "y"), ("one", 1, "one"))
    heads = [parts.gd_head(lay, lr * np.eye(d)), momentum_head(lay, beta)]
    blocks = [parts.block("linear", heads) for _ in range(steps)]
    return Construction("heavy_ball", dict(d=d, steps=steps, lr=lr, beta=beta), blocks, lay, d,
                        domain=parts.step_check(lr, limit=2 * (1 + beta)))


def _case(p, k):
    lr = stable_lr(p.X, k.lr_factor * (1 + k.momentum))  # a fraction of the limit 2 (1 + beta) / lambda_max
    return heavy_ball(p.spec.d, k.steps, lr, k.momentum), HeavyBall(k.steps, lr, k.momentum)


BETA = 5 / 8  # an exactly representable momentum for the proof


def heavy_ball_induction(lr: float = LR, beta: float = BETA):
    """The heavy-ball layer for symbolic d and n: the state (W, V) = (w_t, w_{t-1}) held as the
    residuals ``Y - W X`` (slot ``y``) and ``Y - V X`` (slot ``p``); one layer maps it to
    ``(W - lr (W X - Y) X^T/n + beta (W - V), W)``."""
    import sympy as sp

    from verify import symbolic as S

    lr_, beta_ = S.exact(lr), S.exact(beta)
    W, V = sp.MatrixSymbol("W", 1, S.d), sp.MatrixSymbol("V", 1, S.d)

    def state(v):
        return [S.context(x=S.X, y=S.Y - v["W"] * S.X, p=S.Y - v["V"] * S.X),
                S.query(x=S.XQ, y=-v["W"] * S.XQ, p=-v["V"] * S.XQ)]

    def step(v, layer):
        grad = (v["W"] * S.X - S.Y) * S.X.T / S.n
        return dict(W=v["W"] - lr_ * grad + beta_ * (v["W"] - v["V"]), V=v["W"])

    zero = sp.ZeroMatrix(1, S.d)
    return S.Induction(lambda dd: heavy_ball(dd, 2, lr=lr, beta=beta), dict(W=W, V=V), state, step,
                       dict(W=zero, V=zero), lambda v: v["W"] * S.XQ)


def _baseline(prep, c):
    return lambda: baselines.heavy_ball(prep.X, prep.y, c.steps, c.params["lr"], c.params["beta"])


register(
    heavy_ball, summary="one GD step with heavy-ball momentum; the previous iterate in a slot of its own",
    source="Polyak 1964 (as an LSA layer: von Oswald et al. 2023, Prop. 1 + a momentum head)", exactness="exact",
    bench=Bench(lambda d, n: dict(steps=10, lr=0.01, beta=0.5), baseline=_baseline),
    claims=[
        Claim("polyak64-heavy-ball", "Polyak 1964", "heavy-ball method; as linear self-attention: docs/extending.md",
              "one linear self-attention layer with a GD head and a momentum head = one heavy-ball step "
              "w <- w - lr grad L(w) + beta (w - w_prev); the previous residual sits in slot p",
              "heavy-ball iterates (numpy)", _case, HeavyBall, knobs=dict(momentum=(0.0, 0.9)),
              proof=Proof("general", (induction("induction heavy_ball", heavy_ball_induction),))),
    ],
)

register_paper(Paper(
    "Polyak 1964", "Some methods of speeding up the convergence of iteration methods (USSR Comput. Math. Math. "
                   "Phys. 4(5)); as attention: this toolkit's extension of von Oswald et al.'s Prop. 1", (
        Result("heavy-ball method", "GD with momentum, one LSA layer with two heads per step",
               ("polyak64-heavy-ball",)),
    )))
