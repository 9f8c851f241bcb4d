"""Bai et al. 2023, "Transformers as Statisticians": ReLU-attention constructions.

Notation: B batch, n context examples (N in the paper), m queries, d input
dim, D residual width, L layers.  Architecture (Bai Defs. 1-3, claims.md
sec. 4.1): ReLU attention divided by n, ``h_i <- h_i + sum_heads (1/n) sum_j
relu(q_i.k_j) v_j``, summed over *all* tokens (no attention mask: the query is
excluded by a gate inside the ReLU), then an optional ReLU MLP.

Token layout (Bai's ``[x; y'; w; scratch; 1; t]``, claims.md sec. 4.1):

=========  ==========================  ==================
slot       context token i             query token
=========  ==========================  ==================
``x``      x_i                         x_q
``y``      y_i                         0 (prediction written here)
``w``      w_t (replicated iterate)    w_t
``one``    1                           1
``gate``   0                           -1
=========  ==========================  ==================

``gate = t - 1`` is Bai's ``-B(1 - t_j)`` offset divided by B: a head adds
``B * gate_j`` to its score, an exact 0 on context keys and ``-B`` on query
keys, so ``relu`` drops query keys once B exceeds every score (claims.md
sec. 11.15).  The iterate w is replicated in every token; the readout block
writes ``<w, x_i>`` into every token's ``y`` slot and the prediction is
``+y`` of the query (Bai's sign, claims.md sec. 11.1).

Sign split (claims.md sec. 11.17): a linear score z is carried by two ReLU
heads, ``relu(z) v`` and ``relu(-z) (-v)``; their sum is ``z v`` exactly.
"""
from __future__ import annotations

import numpy as np
import torch

from .construction import Construction
from .errors import ConstructionError
from .layout import Readout, ResidualLayout
from .linear_gd import _gd_domain, _positive_int, _real
from .transformer import AttentionSpec, BlockSpec, MLPSpec


def _bai_layout(d: int, extra=()) -> ResidualLayout:
    spec = [("x", d, "x"), ("y", 1, "y"), ("w", d, "zero"), *extra, ("one", 1, "one"), ("gate", 1, "train_gate")]
    return ResidualLayout.of(spec, Readout("y", 1.0))


def gated_relu_head(lay: ResidualLayout, q: dict, k: dict, v: dict, o: dict, e: int, mask_const: float,
                    gate: str = "gate", sign: float = 1.0) -> dict:
    """One ReLU head with score ``sign * (q_i.k_j) + B * gate_j``.

    ``gate`` is a slot of size 1, or ``(slot, i)`` for entry i of a wider slot.

    ``q``/``k`` are slot reads ``[size, e]`` forming the linear score; ``v``/``o`` the
    value read ``[size, e']`` and output write ``[e', size]``.  The gate is one extra
    head dimension: the query reads ``one`` (times B), the key reads ``gate``.
    ``sign = -1`` negates the score and the output (the second head of a sign split).
    """
    qe = {s: np.hstack([sign * np.asarray(b, float), np.zeros((np.shape(b)[0], 1))]) for s, b in q.items()}
    qe["one"] = qe.get("one", np.zeros((1, e + 1))) + np.eye(e + 1)[e:] * mask_const
    ke = {s: np.hstack([np.asarray(b, float), np.zeros((np.shape(b)[0], 1))]) for s, b in k.items()}
    gslot, gi = (gate, 0) if isinstance(gate, str) else gate  # a slot, or (slot, entry) of a wider slot
    gread = np.zeros((lay[gslot].size, e + 1))
    gread[gi, e] = 1.0
    ke[gslot] = ke.get(gslot, np.zeros_like(gread)) + gread
    ev = np.shape(next(iter(v.values())))[1]
    return dict(
        W_Q=lay.read(qe, e + 1),
        W_K=lay.read(ke, e + 1),
        W_V=lay.read(v, ev),
        W_O=lay.write({s: sign * np.asarray(b, float) for s, b in o.items()}, ev),
    )


def sign_split(lay, q, k, v, o, e, mask_const, gate="gate") -> list[dict]:
    """Two gated ReLU heads whose sum is the linear head ``(q_i.k_j) v_j o`` over admitted keys."""
    return [gated_relu_head(lay, q, k, v, o, e, mask_const, gate, s) for s in (1.0, -1.0)]


def gd_heads(lay: ResidualLayout, lr: float, mask_const: float, w: str = "w", gate: str = "gate",
             scale: float = 1.0) -> list[dict]:
    """Two heads: ``w <- w - scale * lr * (1/n) sum_{admitted j} (w.x_j - y_j) x_j`` (Bai Prop. C.2,
    square loss, ``a = (1, -1)``)."""
    d = lay["x"].size
    q = {w: np.eye(d, d + 1), "one": -np.eye(d + 1)[d:]}  # q_i = (w_i, -1)
    k = {"x": np.eye(d, d + 1), "y": np.eye(d + 1)[d:]}  # k_j = (x_j, y_j)
    return sign_split(lay, q, k, {"x": np.eye(d)}, {w: -scale * lr * np.eye(d)}, d + 1, mask_const, gate)


def decay_head(lay: ResidualLayout, rate: float, mask_const: float, w: str = "w", gate: str = "gate") -> dict:
    """Bai Cor. C.1's l2 head: constant score 1 on admitted keys, value ``-rate * w_j``."""
    d = lay["x"].size
    return gated_relu_head(lay, {"one": [[1.0]]}, {"one": [[1.0]]}, {w: np.eye(d)}, {w: -rate * np.eye(d)},
                           1, mask_const, gate)


def readout_heads(lay: ResidualLayout, mask_const: float, w: str = "w", out: str = "y",
                  gate: str = "gate", scale: float = 1.0) -> list[dict]:
    """Two heads writing ``scale * <w, x_i>`` into slot ``out`` of every token i (Bai's readout)."""
    d = lay["x"].size
    return sign_split(lay, {"x": np.eye(d)}, {w: np.eye(d)}, {"one": [[1.0]]}, {out: [[scale]]}, d, mask_const, gate)


def _block(heads, mlp=None) -> BlockSpec:
    return BlockSpec(AttentionSpec.from_heads("relu", heads), mlp)


def score_bound(X: torch.Tensor, y: torch.Tensor, Xq: torch.Tensor, lam: float) -> torch.Tensor:
    """Per prompt ``max(1, 2 |w*| max_i |x_i|)``: a bound on every gated-out score ``|<x_i, w_t>|``
    of stable GD on ``1/(2n)|Xw - y|^2 + (lam/2)|w|^2`` (w* its ridge / min-norm solution).

    With a stable step, ``w_t = (I - (I - lr A)^t) A^+ b`` so ``|w_t| <= 2 |A^+ b|``
    (A = X^T X/n + lam I, b = X^T y/n)."""
    n, d = X.shape[1], X.shape[2]
    A = X.transpose(1, 2) @ X / n + lam * torch.eye(d, dtype=X.dtype, device=X.device)
    b = (X.transpose(1, 2) @ y[..., None] / n)[..., 0]
    w = (torch.linalg.pinv(A) @ b[..., None])[..., 0]
    xmax = torch.cat([X, Xq], 1).norm(dim=-1).max(-1).values
    return torch.clamp(2 * w.norm(dim=-1) * xmax, min=1.0)


def lasso_score_bound(X: torch.Tensor, y: torch.Tensor, Xq: torch.Tensor, lam: float) -> torch.Tensor:
    """ISTA iterates are Fejer-monotone (lr <= 2/L): ``|w_t - w*| <= |w*|``, so ``|w_t| <= 2|w*|``,
    and ``F(w*) <= F(0)`` gives ``|w*|_2 <= |w*|_1 <= |y|^2 / (2 n lam)``.  With lam = 0 this is GD."""
    if lam == 0:
        return score_bound(X, y, Xq, 0.0)
    xmax = torch.cat([X, Xq], 1).norm(dim=-1).max(-1).values
    return torch.clamp((y**2).sum(-1) / (X.shape[1] * lam) * xmax, min=1.0)


def _mask_domain(mask_const: float, bound, lam: float, check_lr=None, what="2 |w*| max|x_i|"):
    def check(X, y, Xq):
        if check_lr is not None:
            check_lr(X, y, Xq)
        for bi, v in enumerate(bound(X, y, Xq, lam).tolist()):
            if mask_const < v:
                raise ConstructionError(
                    f"mask_const={mask_const:.6g} is below the score bound {v:.6g} ({what}) of prompt {bi}: "
                    f"the gate would not exclude the query; rebuild with mask_const >= {v:.6g}"
                )

    return check


# -- factories -------------------------------------------------------------------------------
def relu_gd(d: int, steps: int, lr: float, lam: float = 0.0, mask_const: float = 1e9) -> Construction:
    """Gradient descent with ReLU attention (Bai et al. 2023, Prop. C.2 / Thm 13, square loss).

    **Theorem** (Bai et al. 2023, sec. 4.2, Prop. C.2 with Cor. C.1 for the l2 term;
    claims.md sec. 4.2-4.3).  After step layer t the ``w`` slot of *every* token equals
    ``w_t`` of GD on ``L(w) = 1/(2n)|Xw - y|^2 + (lam/2)|w|^2`` from ``w_0 = 0`` with
    step ``lr``; the readout layer writes ``<w_t, x_q>`` into the query's ``y`` slot,
    so ``trace()[t-1] = Xq @ w_t``.

    **Proof sketch.**  The two GD heads have scores ``+-(w.x_j - y_j) + B gate_j``:
    on context keys (gate 0) ``relu(z) - relu(-z) = z``, so with values ``-+lr x_j`` they add
    ``-lr (1/n) sum_j (w.x_j - y_j) x_j``; on the query key (gate -1) both scores are
    ``<= 0`` once ``B >= |<w, x_q>|``.  The l2 head (score ``1 + B gate_j``, value
    ``-lr lam w_j``) adds ``-lr lam w`` since w is replicated.

    **Resources.**  ``steps + 1`` layers (steps GD layers + 1 readout layer, as Thm 13's
    L + 1); 2 heads per GD layer (3 with ``lam > 0``), 2 in the readout; width ``2d + 3``;
    ReLU attention normalised by n; no MLP.

    **Exactness.**  Exact (float64 round-off), for any ``mask_const`` above the
    score bound.

    **Domain.**  ``lr * lambda_max(X^T X/n + lam I) <= 2`` and
    ``mask_const >= max(1, 2 |w*| max_i |x_i|)`` (w* the ridge/min-norm solution,
    which bounds every stable iterate by ``|w_t| <= 2 |w*|``).
    """
    d, steps = _positive_int(d, "d"), _positive_int(steps, "steps")
    lr, lam = _real(lr, "lr"), _real(lam, "lam", strict=False)
    mask_const = _real(mask_const, "mask_const")
    lay = _bai_layout(d)
    heads = gd_heads(lay, lr, mask_const) + ([decay_head(lay, lr * lam, mask_const)] if lam > 0 else [])
    blocks = [_block(heads) for _ in range(steps)] + [_block(readout_heads(lay, mask_const))]
    return Construction(
        "relu_gd", dict(d=d, steps=steps, lr=lr, lam=lam, mask_const=mask_const), blocks, lay, d,
        n_readout=1, mask_query=False, domain=_mask_domain(mask_const, score_bound, lam, _gd_domain(lr, lam)),
    )


def soft_threshold_mlp(lay: ResidualLayout, threshold: float, w: str = "w") -> MLPSpec:
    """Bai Prop. C.1: ``w <- S_c(w)`` as a residual ReLU MLP with 4d hidden units:
    ``S_c(w) - w = relu(w - c) - relu(-w - c) - relu(w) + relu(-w)``."""
    d = lay["x"].size
    I = np.eye(d)
    W_in = lay.read({w: np.hstack([I, -I, I, -I])}, 4 * d)
    b_in = np.concatenate([-threshold * np.ones(d), -threshold * np.ones(d), np.zeros(2 * d)])
    W_out = lay.write({w: np.vstack([I, -I, -I, I])}, 4 * d)
    return MLPSpec("relu", W_in, b_in, W_out, np.zeros(lay.width))


def lasso_ista(d: int, steps: int, lr: float, lam: float, mask_const: float = 1e9) -> Construction:
    """LASSO by proximal gradient descent (ISTA) in context (Bai et al. 2023, Thm 10, Prop. C.1).

    **Theorem** (Bai et al. 2023, sec. 4.4 and App. C; claims.md sec. 4.2, 4.4).  Step
    layer t maps the replicated iterate by ``w <- S_{lr lam}(w - lr grad L0(w))`` with
    ``L0(w) = 1/(2n)|Xw - y|^2`` and ``S_c(v) = sign(v) max(|v| - c, 0)``: its attention
    is the GD step of :func:`relu_gd` and its MLP is the soft threshold
    ``relu(v - c) - relu(-v - c)`` written residually (4d ReLUs).  The iterates are
    ISTA's; for ``lr <= 1/lambda_max(X^T X/n)`` the LASSO objective
    ``F(w) = 1/(2n)|Xw - y|^2 + lam |w|_1`` satisfies ``F(w_L) - F* <= |w*|^2 / (2 lr L)``.

    **Resources.**  ``steps + 1`` layers, 2 heads per layer, MLP width 4d, width
    ``2d + 3``, ReLU attention and ReLU MLP.

    **Exactness.**  Exact per step (float64 round-off); the objective gap falls as O(1/L).

    **Domain.**  ``lr * lambda_max(X^T X/n) <= 2`` and ``mask_const`` above the score
    bound ``max_i |x_i| |y|^2 / (n lam)`` (ISTA is Fejer-monotone, ``|w*|_1 <= |y|^2/(2 n lam)``).
    """
    d, steps = _positive_int(d, "d"), _positive_int(steps, "steps")
    lr, lam = _real(lr, "lr"), _real(lam, "lam", strict=False)
    mask_const = _real(mask_const, "mask_const")
    lay = _bai_layout(d)
    mlp = soft_threshold_mlp(lay, lr * lam)
    blocks = [_block(gd_heads(lay, lr, mask_const), mlp) for _ in range(steps)]
    blocks.append(_block(readout_heads(lay, mask_const)))
    return Construction(
        "lasso_ista", dict(d=d, steps=steps, lr=lr, lam=lam, mask_const=mask_const), blocks, lay, d,
        n_readout=1, mask_query=False,
        domain=_mask_domain(mask_const, lasso_score_bound, lam, _gd_domain(lr, 0.0), "|y|^2/(n lam) max|x_i|"),
    )


def sigmoid_knots(heads: int, radius: float) -> tuple[np.ndarray, np.ndarray, float]:
    """Knots ``s_0 = -R < ... < s_{heads-1} = R`` and ReLU coefficients ``a_m`` of the
    piecewise-linear interpolant of the logistic sigmoid, flat outside ``[-R, R]``:
    ``sigma_hat(s) = sigma(-R) + sum_m a_m relu(s - s_m)``.  Returns (knots, a, sigma(-R))."""
    knots = np.linspace(-radius, radius, heads)
    vals = 1.0 / (1.0 + np.exp(-knots))
    slopes = np.diff(vals) / np.diff(knots)  # heads - 1 pieces
    a = np.diff(np.concatenate([[0.0], slopes, [0.0]]))  # slope changes at every knot
    return knots, a, float(vals[0])


def logistic_gd(d: int, steps: int, lr: float, heads: int, x_bound: float, mask_const: float = 1e9) -> Construction:
    """GD on the logistic loss with the sigmoid replaced by a sum of ``heads`` ReLUs (Bai et al. 2023, Thm 13).

    **Theorem** (Bai et al. 2023, sec. 4.2 Thm 13 and sec. 4.4 GLMs; claims.md sec. 4.2, 4.4).
    Labels ``y_i in {0, 1}``; loss ``l(s, y) = -y s + log(1 + e^s)``, ``d l/ds = sigma(s) - y``.
    The construction runs GD exactly with ``sigma`` replaced by ``sigma_hat``, the
    piecewise-linear interpolant of sigma at ``heads`` equispaced knots on ``[-R, R]``
    (flat outside), ``R = steps * lr * x_bound^2`` (no iterate can reach a score beyond R,
    since ``|w_t| <= t lr x_bound``).  With ``eps = sup_{[-R, R]} |sigma - sigma_hat| <=
    h^2 / (8 * 6 sqrt 3)``, ``h = 2R/(heads - 1)``, the iterates satisfy
    ``|w_hat_t - w_t| <= eps * t * lr * x_bound`` (Thm 13's linear accumulation, by
    non-expansiveness of convex GD for ``lr <= 8 / x_bound^2``), so the error falls as heads^-2.

    **Resources.**  ``steps + 1`` layers; ``heads + 2`` heads per GD layer (one per ReLU,
    one for ``sigma(-R)``, one for the labels), 2 in the readout; width ``2d + 3``.

    **Exactness.**  Approximate, with the error bound above (exact GD with ``sigma_hat``).
    ``trace()[t-1]`` is the logit ``<w_hat_t, x_q>``.

    **Domain.**  ``|x_i| <= x_bound`` for every token, ``y_i in {0, 1}``,
    ``lr <= 8 / x_bound^2`` (2 / max curvature, curvature <= x_bound^2 / 4),
    ``mask_const >= max(1, 2R)`` (every gated-out score is at most 2R).
    """
    d, steps, heads = _positive_int(d, "d"), _positive_int(steps, "steps"), _positive_int(heads, "heads")
    if heads < 2:
        raise ConstructionError("heads must be >= 2 (the interpolant needs two knots)")
    lr, x_bound, mask_const = _real(lr, "lr"), _real(x_bound, "x_bound"), _real(mask_const, "mask_const")
    if lr > 8.0 / x_bound**2:
        raise ConstructionError(f"lr={lr:.6g} exceeds 8/x_bound^2={8 / x_bound**2:.6g}, the step limit of the error bound")
    radius = steps * lr * x_bound**2
    if mask_const < max(1.0, 2 * radius):
        raise ConstructionError(f"mask_const={mask_const:.6g} must be >= max(1, 2R={2 * radius:.6g}) "
                                "to gate out the query (|<w, x_q>| + |knot| <= 2R)")
    knots, a, base = sigmoid_knots(heads, radius)
    lay = _bai_layout(d)
    hs = []
    for s_m, a_m in zip(knots, a):  # relu(w.x_j - s_m) with value -lr a_m x_j
        hs.append(gated_relu_head(lay, {"w": np.eye(d, d + 1), "one": -s_m * np.eye(d + 1)[d:]},
                                  {"x": np.eye(d, d + 1), "one": np.eye(d + 1)[d:]},
                                  {"x": np.eye(d)}, {"w": -lr * a_m * np.eye(d)}, d + 1, mask_const))
    hs.append(gated_relu_head(lay, {"one": [[1.0]]}, {"one": [[1.0]]}, {"x": np.eye(d)},
                              {"w": -lr * base * np.eye(d)}, 1, mask_const))  # constant sigma(-R)
    hs.append(gated_relu_head(lay, {"one": [[1.0]]}, {"y": [[1.0]]}, {"x": np.eye(d)},
                              {"w": lr * np.eye(d)}, 1, mask_const))  # relu(y_j) = y_j for y in {0,1}
    blocks = [_block(hs) for _ in range(steps)] + [_block(readout_heads(lay, mask_const))]

    def domain(X, y, Xq):
        xmax = float(torch.cat([X, Xq], 1).norm(dim=-1).max())
        if xmax > x_bound * (1 + 1e-6):  # slack: float32 rounding moves a norm by <= 6e-8 relative
            raise ConstructionError(f"an input has norm {xmax:.6g} > x_bound={x_bound:.6g}; rebuild with a larger x_bound")
        if not torch.all((y == 0) | (y == 1)):
            raise ConstructionError("logistic_gd needs labels y_i in {0, 1}")

    return Construction(
        "logistic_gd", dict(d=d, steps=steps, lr=lr, heads=heads, x_bound=x_bound, mask_const=mask_const),
        blocks, lay, d, n_readout=1, mask_query=False, domain=domain,
    )


def ridge_select(d: int, lams, steps: int, lr: float, n_train: int, n_val: int, gamma: float,
                 mask_const: float = 1e9) -> Construction:
    """In-context algorithm selection by post-ICL validation (Bai et al. 2023, sec. 4.5, Prop. 15, Thm 16).

    **Theorem** (Bai et al. 2023, Prop. 15 / Thm H.1-H.3 and Thm 16; claims.md sec. 4.5).
    The first ``n_train`` context examples are train tokens, the next ``n_val``
    validation tokens.  For every ``lam_k`` in ``lams`` the step layers run ``steps``
    GD steps (step ``lr``) on the train-split ridge objective
    ``1/(2 n_train) sum_train (w.x_i - y_i)^2 + (lam_k/2)|w|^2`` in parallel heads.  The
    readout blocks then (1) write ``f_k(x_i) = <w_k, x_i>`` into every token, (2) write
    the exact validation losses ``L_k = (1/n_val) sum_val (f_k(x_i) - y_i)^2`` (2 ReLU
    heads per k: ``relu(r) r + relu(-r) r = r^2``), and with ReLU MLPs
    ``c_k = sum_j relu(L_k - L_j)``, ``u_k = relu(1 - c_k/gamma)``,
    ``P_k = relu(1 - sum_{j<=k} u_j)``, weights ``a_k = P_{k-1} - P_k`` (``P_0 = 1``),
    (3) output ``sum_k a_k <w_k, x_q>``.  The weights are non-negative, sum to 1, and
    ``a_k > 0`` only if ``L_k <= min_j L_j + gamma``; by convexity the selected predictor's
    validation loss is at most ``min_k L_k + gamma``.

    **Resources.**  ``steps + 5`` layers: ``steps`` GD layers with ``3K`` heads, then
    readout blocks with ``2K`` (predictions), ``2K`` (losses) + MLP ``K^2``, MLP ``K``,
    MLP ``K``, ``2K`` (aggregation) heads; width ``(K + 1) d + 5K + 4``.  ReLU attention
    and ReLU MLPs.  Value matrices carry ``n / n_train`` and ``n / n_val`` to turn the
    attention's 1/n into split averages (claims.md sec. 4.5), so ``n_train`` and ``n_val``
    are fixed when the construction is built.

    **Exactness.**  Exact (float64 round-off; the selection maps are piecewise linear
    with Lipschitz constant ``~1/gamma``).

    **Domain.**  ``n = n_train + n_val``; ``lr * lambda_max(X_tr^T X_tr/n_train + lam_k I) <= 2``
    for every k; ``mask_const >= 2 |w*_k| max_i |x_i| + max_i |y_i|``.
    """
    d, steps = _positive_int(d, "d"), _positive_int(steps, "steps")
    n_train, n_val = _positive_int(n_train, "n_train"), _positive_int(n_val, "n_val")
    lr, gamma, mask_const = _real(lr, "lr"), _real(gamma, "gamma"), _real(mask_const, "mask_const")
    lams = [_real(v, "lams[k]", strict=False) for v in np.atleast_1d(np.asarray(lams, dtype=float))]
    if not lams:
        raise ConstructionError("lams must hold at least one regularisation strength")
    K, n = len(lams), n_train + n_val
    extra = [(f"w{k}", d, "zero") for k in range(1, K)]
    extra += [(f"{name}{k}", 1, "zero") for name in ("f", "L", "c", "u", "a") for k in range(K)]
    spec = [("x", d, "x"), ("y", 1, "y"), ("w0", d, "zero"), *extra, ("one", 1, "one"),
            ("tgate", 1, "train_gate"), ("vgate", 1, "val_gate")]
    lay = ResidualLayout.of(spec, Readout("y", 1.0))
    s_tr, s_val = n / n_train, n / n_val
    step_heads = []
    for k, lam in enumerate(lams):
        step_heads += gd_heads(lay, lr, mask_const, w=f"w{k}", gate="tgate", scale=s_tr)
        step_heads.append(decay_head(lay, s_tr * lr * lam, mask_const, w=f"w{k}", gate="tgate"))
    # (1) predictions f_k(x_i) = <w_k, x_i>
    pred = [h for k in range(K) for h in readout_heads(lay, mask_const, w=f"w{k}", out=f"f{k}", gate="tgate", scale=s_tr)]
    # (2) validation losses: score +-(f_k - y) on validation keys, value (f_k - y)
    loss = [h for k in range(K) for h in sign_split(
        lay, {"one": [[1.0]]}, {f"f{k}": [[1.0]], "y": [[-1.0]]}, {f"f{k}": [[1.0]], "y": [[-1.0]]},
        {f"L{k}": [[s_val]]}, 1, mask_const, gate="vgate")]
    # MLP: c_k = sum_j relu(L_k - L_j)
    pairs = [(k, j) for k in range(K) for j in range(K) if j != k] or [(0, 0)]
    W_in = np.zeros((lay.width, len(pairs)))
    W_out = np.zeros((len(pairs), lay.width))
    for col, (k, j) in enumerate(pairs):
        W_in[:, col] = lay.read({f"L{k}": [[1.0]], f"L{j}": [[-1.0]]}, 1)[:, 0] if j != k else 0.0
        W_out[col] += lay.write({f"c{k}": [[1.0]]}, 1)[0]
    mlp_c = MLPSpec("relu", W_in, np.zeros(len(pairs)), W_out, np.zeros(lay.width))
    # MLP: u_k = relu(1 - c_k / gamma)
    mlp_u = MLPSpec("relu", lay.read({f"c{k}": np.eye(K)[k:k + 1] * (-1 / gamma) for k in range(K)}, K), np.ones(K),
                    lay.write({f"u{k}": np.eye(K)[:, k:k + 1] for k in range(K)}, K), np.zeros(lay.width))
    # MLP: P_k = relu(1 - sum_{j<=k} u_j); a_k = P_{k-1} - P_k with P_0 = 1 (the bias of a_0)
    W_in = lay.read({f"u{j}": -np.triu(np.ones((K, K)))[j:j + 1] for j in range(K)}, K)
    W_out = lay.write({f"a{k}": (np.eye(K)[:, k:k + 1] - (np.eye(K, k=1)[:, k:k + 1])) * -1.0 for k in range(K)}, K)
    b_out = lay.write({"a0": [[1.0]]}, 1)[0]
    mlp_a = MLPSpec("relu", W_in, np.ones(K), W_out, b_out)
    # (3) aggregation: score +-<x_i, w_k> on train keys, value a_k: writes sum_k a_k <w_k, x_i> into y
    agg = [h for k in range(K) for h in sign_split(
        lay, {"x": np.eye(d)}, {f"w{k}": np.eye(d)}, {f"a{k}": [[1.0]]}, {"y": [[s_tr]]}, d, mask_const, gate="tgate")]
    blocks = [_block(step_heads) for _ in range(steps)] + [
        _block(pred), _block(loss, mlp_c), BlockSpec(None, mlp_u), BlockSpec(None, mlp_a), _block(agg)]

    def select_score_bound(X, y, Xq, lam):
        return score_bound(X[:, :n_train], y[:, :n_train], torch.cat([X[:, n_train:], Xq], 1), lam) + y.abs().amax(-1)

    def split(n_prompt: int) -> int:
        if n_prompt != n:
            raise ConstructionError(f"ridge_select was built for n = n_train + n_val = {n_train} + {n_val} = {n} "
                                    f"context examples, got {n_prompt}; rebuild with matching n_train/n_val")
        return n_train

    lr_checks = [_gd_domain(lr, lam) for lam in lams]

    def domain(X, y, Xq):
        for chk in lr_checks:
            chk(X[:, :n_train], y[:, :n_train], Xq)
        for lam in lams:
            _mask_domain(mask_const, select_score_bound, lam, what="2 |w*_k| max|x_i| + max|y_i|")(X, y, Xq)

    return Construction(
        "ridge_select", dict(d=d, lams=lams, steps=steps, lr=lr, n_train=n_train, n_val=n_val, gamma=gamma,
                             mask_const=mask_const),
        blocks, lay, d, n_readout=5, mask_query=False, split=split, domain=domain,
    )


def binary_psi_knots(eps: float) -> list[tuple[float, float, float]]:
    """The 6 ReLUs ``c relu(y + b)`` of Bai et al.'s psi (Lemma 18): triangular bumps of height 1
    and half-width eps at 0 and at 1, ``(1/eps)[relu(y - t + eps) - 2 relu(y - t) + relu(y - t - eps)]``."""
    return [(c / eps, -t + s) for t in (0.0, 1.0) for c, s in ((1.0, eps), (-2.0, 0.0), (1.0, -eps))]


def binary_test(d: int, eps: float = 0.1, threshold: float = 0.5) -> Construction:
    """Pre-ICL testing: are all labels binary? (Bai et al. 2023, Lemma 18 and Cor. H.1).

    **Theorem** (Bai et al. 2023, sec. 4.5 / App. H.3, claims.md sec. 4.5).  Layer 1 (6 ReLU heads)
    writes ``Psi = (1/n) sum_i psi(y_i)`` into every token, psi the sum of 6 ReLUs
    (:func:`binary_psi_knots`): 1 at y in {0, 1}, 0 farther than eps from both.  Layer 2
    (2 ReLU heads) writes ``clip((Psi - threshold)/(1 - threshold), 0, 1)`` into the query's
    ``test`` slot: 1 when every label is exactly 0 or 1, 0 when at most a fraction
    ``threshold`` of them is within eps of {0, 1}.  To flag one non-binary label among n,
    build with ``threshold = 1 - 1/(2n)`` (then Psi <= 1 - 1/n stays clear of it).

    **Resources.**  2 layers, 6 heads, width ``d + 4``, ReLU attention normalised by n; no MLP.

    **Exactness.**  Exact (float64 round-off): psi is exactly a sum of ReLUs; checked by
    ``bai23-binary-test`` against the same function in numpy.

    **Domain.**  ``eps in (0, 1/2]``, ``threshold in [0, 1)``; query tokens are not keys
    (the query mask), so no gate is needed.
    """
    d = _positive_int(d, "d")
    eps = _real(eps, "eps")
    if eps > 0.5:
        raise ConstructionError(f"eps must be in (0, 1/2] (the bumps at 0 and 1 must not overlap), got {eps}")
    threshold = _real(threshold, "threshold", strict=False)
    if threshold >= 1:
        raise ConstructionError(f"threshold must be in [0, 1), got {threshold}")
    lay = ResidualLayout.of([("x", d, "x"), ("y", 1, "y"), ("one", 1, "one"), ("psi", 1, "zero"),
                             ("test", 1, "zero")], Readout("test", 1.0))
    # score relu(y_j + b) (key reads y and one, query reads one), value one, output c into psi
    psi = [dict(W_Q=lay.read({"one": [[1.0]]}, 1), W_K=lay.read({"y": [[1.0]], "one": [[b]]}, 1),
                W_V=lay.read({"one": [[1.0]]}, 1), W_O=lay.write({"psi": [[c]]}, 1)) for c, b in binary_psi_knots(eps)]
    s = 1.0 / (1.0 - threshold)
    # score relu(s (Psi_i - t)) and relu(s (Psi_i - 1)) (query reads psi and one, key reads one)
    thr = [dict(W_Q=lay.read({"psi": [[s]], "one": [[-s * t]]}, 1), W_K=lay.read({"one": [[1.0]]}, 1),
                W_V=lay.read({"one": [[1.0]]}, 1), W_O=lay.write({"test": [[sign]]}, 1))
           for t, sign in ((threshold, 1.0), (1.0, -1.0))]
    blocks = [BlockSpec(AttentionSpec.from_heads("relu", psi)), BlockSpec(AttentionSpec.from_heads("relu", thr))]
    return Construction("binary_test", dict(d=d, eps=eps, threshold=threshold), blocks, lay, d, step_blocks=2)
