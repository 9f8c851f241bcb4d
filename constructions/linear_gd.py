"""Linear-self-attention constructions: GD, ridge GD, GD++, preconditioned GD, and their claims.

Notation: B batch, n context examples, m queries, d input dim, D residual width, L layers
(= steps).  Toolkit loss ``L(w) = 1/(2n) sum_i (w.x_i - y_i)^2 + (lam/2)|w|^2``, ``w_0 = 0``.

Token layout (von Oswald et al. 2023, the tokens of Prop. 1, columns renamed; :func:`parts.lsa_layout`):

=========  ==================  =============
slot       context token i     query token
=========  ==================  =============
``x``      x_i                 x_q
``y``      y_i                 0
``y0``     y_i  (lam > 0)      0
``one``    1    (lam > 0)      1
=========  ==================  =============

Invariant after layer t (the induction hypothesis of every proof here): the ``y`` slot of
context token i holds the residual ``y_i - w_t.x_i`` and the ``y`` slot of every query holds
``-w_t.x_q``.  The readout is therefore ``-y`` (von Oswald's sign, docs/pitfalls.md #1).
Attention is linear and divided by n (the number of context examples); queries are masked
out of the keys/values, which stacking needs (docs/pitfalls.md #2).
"""
from __future__ import annotations

import numpy as np
import torch

from verify import baselines
from verify.bounds import ridge_quantities, ridge_rate
from verify.claims import GAMMA, LAM, LR, Claim, Outcome, Part, Proof, induction
from verify.knobs import random_precond, ridge_lam, stable_lr
from verify.reference import GD, GDPlusPlus
from verify.tolerance import Comparison, tolerance

from . import parts
from .construction import Construction
from .errors import ConstructionError
from .layout import ResidualLayout
from .registry import Bench, Paper, Result, register, register_paper


def _layout(d: int, ridge: bool) -> ResidualLayout:
    return parts.lsa_layout(d, *((("y0", 1, "y"), ("one", 1, "one")) if ridge else ()))


def gd_plus_plus_head(lay: ResidualLayout, lr: float, gamma: float) -> dict:
    """One head (von Oswald App. A.10): score ``x_j.x_i``, value ``(x_i, y_i)``,
    output ``(-gamma x, -lr y)``: ``x_j <- (I - gamma S) x_j`` and the GD step."""
    d = lay["x"].size
    E = d + 1  # head columns 0..d-1 carry x, column d carries y
    y_col = np.eye(E)[d:]  # [1, E]
    value = lay.read({"x": np.eye(d, E), "y": y_col}, E)
    out = lay.write({"x": -gamma * np.eye(E, d), "y": -lr * y_col.T}, E)
    return dict(W_Q=lay.read({"x": np.eye(d)}, d), W_K=lay.read({"x": np.eye(d)}, d), W_V=value, W_O=out)


def ridge_decay_head(lay: ResidualLayout, rate: float) -> dict:
    """One head that adds ``rate * (y0_j - y_j)`` to ``y_j``: the ``-lr*lam*w`` term.

    Score ``q_j.k_i = rate (y0_j - y_j) * one_i``, value ``one_i = 1``: the mean over the n
    context keys is exactly ``rate (y0_j - y_j)`` (after Bai et al. Cor. C.1's l2 head).
    Context: ``r <- r + rate (y - r)``; query (y0 = 0): ``s <- (1 - rate) s``; both equal
    ``w <- (1 - rate) w``.
    """
    return parts.product_head(lay, {"y0": [[rate]], "y": [[-rate]]}, {"one": [[1.0]]}, {"y": [[1.0]]})


# -- factories -------------------------------------------------------------------------------------
def gd(d: int, steps: int, lr: float, lam: float = 0.0) -> Construction:
    """Gradient descent in context: one linear self-attention layer per GD step.

    **Theorem** (von Oswald et al. 2023, Prop. 1; ridge term after Bai et al. 2023,
    Cor. C.1).  For every prompt and every t = 1..steps, the query readout after layer t
    equals ``x_q . w_t`` where ``w_0 = 0`` and ``w_{t+1} = w_t - lr * grad L(w_t)``,
    ``L(w) = 1/(2n) sum_i (w.x_i - y_i)^2 + (lam/2)|w|^2``.  For ``lam = 0`` this is
    least-squares GD; for ``lam > 0`` GD on the ridge objective, which converges to
    ``(X^T X/n + lam I)^{-1} X^T y/n``.

    **Proof sketch.**  Induction on the invariant of the module docstring: the GD head adds
    ``-(lr/n) sum_i r_i x_i.x_j = lr grad_LS(w_t).x_j`` to every token's ``y`` slot; the ridge
    head adds ``lr*lam*(y0_j - y_j)`` = ``lr*lam*w_t.x_j``.  Both read the pre-layer state, as
    the step does.

    **Resources.**  ``steps`` layers; 1 head (2 with ``lam > 0``); width ``d + 1``
    (``d + 3`` with ``lam > 0``); linear attention, no MLP.

    **Exactness.**  Exact: float64 round-off only (tolerance model in
    :mod:`verify.tolerance`).  Paper mapping: von Oswald's ``P = (eta/N) I`` with eta =
    ``lr``; their readout ``-y_query`` is this layout's readout.

    **Domain.**  ``lr * lambda_max(X^T X/n + lam I) <= 2`` per prompt, checked at prediction
    time (``check=False`` skips it).
    """
    d, steps = parts.positive_int(d, "d"), parts.positive_int(steps, "steps")
    lr, lam = parts.real(lr, "lr"), parts.real(lam, "lam", strict=False)
    parts.budget("gd", layers=steps, width=d + 3, heads=2, d_head=d)
    lay = _layout(d, ridge=lam > 0)
    heads = [parts.gd_head(lay, lr * np.eye(d))]
    if lam > 0:
        heads.append(ridge_decay_head(lay, lr * lam))
    blocks = [parts.block("linear", heads) for _ in range(steps)]
    return Construction("gd", dict(d=d, steps=steps, lr=lr, lam=lam), blocks, lay, d, domain=parts.step_check(lr, lam))


def gd_plus_plus(d: int, steps: int, lr: float, gamma: float) -> Construction:
    """GD++: each layer transforms the inputs and takes a GD step on them.

    **Theorem** (von Oswald et al. 2023, App. A.10).  With ``S_t = X_t^T X_t / n`` over the
    current context inputs, layer t maps every token (queries included, docs/pitfalls.md #14)
    by ``x <- (I - gamma S_t) x`` and ``y <- y - lr (1/n) sum_i y_i x_i.x`` using the
    pre-layer values.  The query readout after layer t is therefore ``sum_{k<t} lr g_k .
    x_q^(k)`` with ``g_k = X_k^T r_k / n``, which equals ``x_q . w_t`` for the effective
    weights of :class:`verify.reference.GDPlusPlus`.

    **Resources.**  ``steps`` layers, 1 head, width ``d + 1``, head width ``d + 1``, linear
    attention, no MLP.

    **Exactness.**  Exact (float64 round-off).  Paper mapping: the toolkit normalises the
    covariance by n, so von Oswald's gamma equals ``gamma / n``; their
    ``P = diag(-gamma I, eta/N)`` is this head's ``W_O``.

    **Domain.**  ``lr * lambda_max(S_0) <= 2`` and ``gamma * lambda_max(S_0) <= 2`` (then
    ``S_t``'s eigenvalues never grow: ``l -> l (1 - gamma l)^2 <= l``).
    """
    d, steps = parts.positive_int(d, "d"), parts.positive_int(steps, "steps")
    lr, gamma = parts.real(lr, "lr"), parts.real(gamma, "gamma", strict=False)
    parts.budget("gd_plus_plus", layers=steps, width=d + 1)
    lay = _layout(d, ridge=False)
    blocks = [parts.block("linear", [gd_plus_plus_head(lay, lr, gamma)]) for _ in range(steps)]
    domain = parts.all_checks(parts.step_check(lr), parts.step_check(gamma, name="gamma"))
    return Construction("gd_plus_plus", dict(d=d, steps=steps, lr=lr, gamma=gamma), blocks, lay, d, domain=domain)


def preconditioned_gd(d: int, steps: int, precond) -> Construction:
    """Preconditioned GD: ``w <- w - P grad L(w)`` per layer, any d x d matrix P.

    **Theorem** (Ahn et al. 2023, the linear-transformer layer with P and Q).  The query readout after layer t equals
    ``x_q . w_t`` with ``w_0 = 0``, ``w_{t+1} = w_t - P_t grad L(w_t)``,
    ``L(w) = 1/(2n)|Xw - y|^2``.  ``precond`` is one ``[d, d]`` matrix (used in every
    layer) or ``[steps, d, d]`` (one per layer).  P need not be symmetric.

    **Paper mapping.**  Ahn's layer ``Z + (1/n) P Z M Z^T Q Z`` with ``P = [[0,0],[0,1]]``,
    ``Q = -[[A,0],[0,0]]`` applies the preconditioner ``A^T`` (docs/pitfalls.md #5): pass
    ``precond = A.T`` to reproduce a given A.  Here ``W_Q``'s x block is P itself (tokens are
    row vectors, so ``q_j = P^T x_j`` and the score is ``x_j^T P x_i``).

    **Resources.**  ``steps`` layers, 1 head, width ``d + 1``, linear attention.

    **Exactness.**  Exact (float64 round-off).

    **Domain.**  Spectral radius of ``I - P_t X^T X/n`` at most 1 for every layer.
    """
    d, steps = parts.positive_int(d, "d"), parts.positive_int(steps, "steps")
    parts.budget("preconditioned_gd", layers=steps, width=d + 1, d_head=d)
    Ps = parts.real_array(precond, "precond")
    if Ps.shape == (d, d):
        Ps = np.broadcast_to(Ps, (steps, d, d)).copy()
    if Ps.shape != (steps, d, d):
        raise ConstructionError(f"precond must have shape ({d}, {d}) or ({steps}, {d}, {d}), got {Ps.shape}")
    lay = _layout(d, ridge=False)
    blocks = [parts.block("linear", [parts.gd_head(lay, P)]) for P in Ps]
    return Construction("preconditioned_gd", dict(d=d, steps=steps, precond=Ps.tolist()), blocks, lay, d,
                        domain=parts.precond_check(Ps))


# -- claims: cases (prompt, knobs) -> (construction, reference) ---------------------------------------
def _gd_case(p, k):
    lr = stable_lr(p.X, k.lr_factor)
    return gd(p.spec.d, k.steps, lr), GD(k.steps, lr=lr)


def _gd_ridge_case(p, k):
    lam = ridge_lam(p.X, k.log10_lam)
    lr = stable_lr(p.X, k.lr_factor, lam)
    return gd(p.spec.d, k.steps, lr, lam=lam), GD(k.steps, lr=lr, lam=lam)


def _gdpp_case(p, k):
    lr = stable_lr(p.X, k.lr_factor)
    gamma = stable_lr(p.X, k.gamma_factor)
    return gd_plus_plus(p.spec.d, k.steps, lr, gamma), GDPlusPlus(k.steps, lr, gamma)


def _pgd_case(p, k):
    P = random_precond(p.X, k.lr_factor, k.seed, k.skew)
    return preconditioned_gd(p.spec.d, k.steps, P), GD(k.steps, precond=P)


def unmasked(c: Construction) -> Construction:
    """The same construction without the query mask (the negative control of docs/pitfalls.md #2)."""
    return Construction(c.name, c.params, c.blocks, c.layout, c.d, mask_query=False, domain=c.domain)


def _gd_unmasked_case(p, k):
    c, ref = _gd_case(p, k)
    return unmasked(c), ref


def _gd_ridge_rate(p, k, c):
    """Bai Thm 4's rate for GD on ridge: contraction ``rho = max_i |1 - lr a_i|`` per layer."""
    lam, lr = c.params["lam"], c.params["lr"]
    ev = ridge_quantities(p, lam)[2]
    rho = np.abs(1 - lr * ev).max(-1)  # [B]
    factor = rho[None] ** np.arange(1, k.steps + 1)[:, None]  # [S, B]
    return ridge_rate(p, c, GD(k.steps, lr=lr, lam=lam), lam, factor)


# -- proofs (sympy, imported when a proof runs) -----------------------------------------------------------
def gd_induction(lam: float = 0.0, mask: bool = True, lr: float = LR):
    """von Oswald Prop. 1 (ridge GD with ``lam > 0``), for symbolic d and n: the state
    ``y_i - W x_i`` on context tokens, ``-W x_q`` on the query; W an arbitrary iterate."""
    import sympy as sp

    from verify import symbolic as S

    lr_, lm = S.exact(lr), S.exact(lam)
    W = sp.MatrixSymbol("W", 1, S.d)

    def build(dd):
        c = gd(dd, 2, lr=lr, lam=lam)
        return c if mask else unmasked(c)

    def state(v):
        w = v["W"]
        extra = dict(y0=S.Y) if lam else {}
        return [S.context(x=S.X, y=S.Y - w * S.X, **extra), S.query(x=S.XQ, y=-w * S.XQ, **(dict(y0=S.Z11) if lam else {}))]

    def step(v, layer):
        return dict(W=v["W"] - lr_ * ((v["W"] * S.X - S.Y) * S.X.T / S.n + lm * v["W"]))

    return S.Induction(build, dict(W=W), state, step, dict(W=sp.ZeroMatrix(1, S.d)), lambda v: v["W"] * S.XQ)


def gdpp_induction(lr: float = LR, gamma: float = GAMMA):
    """GD++: state (T, R, W) = (input map, residuals, effective weights)."""
    import sympy as sp

    from verify import symbolic as S

    lr_, gamma_ = S.exact(lr), S.exact(gamma)
    T, R, W = sp.MatrixSymbol("T", S.d, S.d), sp.MatrixSymbol("R", 1, S.n), sp.MatrixSymbol("W", 1, S.d)
    I = sp.Identity(S.d)

    def state(v):
        return [S.context(x=v["T"] * S.X, y=v["R"]), S.query(x=v["T"] * S.XQ, y=-v["W"] * S.XQ)]

    def step(v, layer):
        Xt = v["T"] * S.X
        Sm = Xt * Xt.T / S.n
        g = Xt * v["R"].T / S.n  # [d, 1]
        return dict(T=(I - gamma_ * Sm) * v["T"], R=v["R"] - lr_ * g.T * Xt, W=v["W"] + lr_ * g.T * v["T"])

    return S.Induction(lambda dd: gd_plus_plus(dd, 2, lr=lr, gamma=gamma), dict(T=T, R=R, W=W), state, step,
                       dict(T=I, R=S.Y, W=sp.ZeroMatrix(1, S.d)), lambda v: v["W"] * S.XQ)


def _preconds(dd: int) -> np.ndarray:
    """Two non-symmetric preconditioners with dyadic entries."""
    return np.random.default_rng(dd).integers(-8, 9, size=(2, dd, dd)) / 32.0


def pgd_induction(transpose: bool = False):
    """Ahn et al.: ``w <- w - P_t grad``, P_t symbolic and non-symmetric.  ``transpose=True``
    builds the construction with ``P_t^T`` (the transpose trap; the proof must fail)."""
    import sympy as sp

    from verify import symbolic as S

    PS = [sp.MatrixSymbol("P_0", S.d, S.d), sp.MatrixSymbol("P_1", S.d, S.d)]
    W = sp.MatrixSymbol("W", 1, S.d)

    def step(v, layer):
        return dict(W=v["W"] - (v["W"] * S.X - S.Y) * S.X.T * PS[layer].T / S.n)

    def build(dd):
        Ps = _preconds(dd)
        return preconditioned_gd(dd, 2, Ps.transpose(0, 2, 1) if transpose else Ps)

    return S.Induction(build, dict(W=W), lambda v: [S.context(x=S.X, y=S.Y - v["W"] * S.X), S.query(x=S.XQ, y=-v["W"] * S.XQ)],
                       step, dict(W=sp.ZeroMatrix(1, S.d)), lambda v: v["W"] * S.XQ,
                       named=lambda dd: dict(zip(PS, _preconds(dd))))


def unmasked_control() -> Outcome:
    """Negative control (docs/pitfalls.md #2): without the query mask, layer 1 from the embedding is
    still the GD step, but two layers are not two GD steps: the symbolic difference is nonzero at
    a concrete rational point (a counterexample)."""
    import sympy as sp

    from verify import symbolic as S

    spec = gd_induction(mask=False)
    c = spec.build(3)
    sizes = S.slot_sizes(c)
    groups = S.key_groups(c, spec.state(spec.start))
    w1 = spec.step(spec.start, 0)
    after1, _ = S.advance(c, sizes, S.lift_layer(spec.build, 0), groups)
    one = S.is_zero(S.complete(c.layout, after1[1], sizes)["y"] + w1["W"] * S.XQ)
    after2, _ = S.advance(c, sizes, S.lift_layer(spec.build, 1), after1)
    diff = S.complete(c.layout, after2[1], sizes)["y"] + spec.step(w1, 1)["W"] * S.XQ
    rng = np.random.default_rng(0)
    sizes_at = {S.d: 2, S.n: 3}
    point = {s.subs(sizes_at): sp.ImmutableMatrix(rng.integers(-4, 5, size=s.subs(sizes_at).shape).tolist())
             for s in (S.X, S.Y, S.XQ)}
    value = sp.Matrix(diff.subs(sizes_at).xreplace(point).doit().as_explicit())
    miss = value[0, 0].is_Rational and value[0, 0] != 0
    return Outcome(one and miss, f"layer 1 = GD step (proved); after 2 layers the query differs from GD by "
                                 f"{value[0, 0]} at a rational point with d=2, n=3" if one and miss
                   else f"control failed (layer 1 identity: {one}, two-layer miss: {miss})")


# -- registration ------------------------------------------------------------------------------------------
def _gd_baseline(prep, c):
    return lambda: baselines.gd(prep.X, prep.y, c.steps, lr=c.params["lr"], lam=c.params["lam"])


register(
    gd, summary="one GD step on least squares (`lam = 0`) or on ridge (`lam > 0`)",
    source="von Oswald et al. 2023, Prop. 1 (+ Bai et al. 2023, Cor. C.1)", exactness="exact",
    paper_resources='Prop. 1: one LSA layer (1 head) per GD step on tokens (x, y) of width d + 1',
    bench=Bench(lambda d, n: dict(steps=10, lr=0.01), baseline=_gd_baseline),
    claims=[
        Claim("vonoswald23-prop1", "von Oswald et al. 2023", "Prop. 1",
              "one linear self-attention layer = one GD step on 1/(2n)|Xw-y|^2; L stacked layers = L steps "
              "(query masked out of keys/values)",
              "GD iterates x_q.w_t, t = 1..L (numpy)", _gd_case, GD,
              proof=Proof("general", (induction("induction gd", gd_induction),))),
        Claim("vonoswald23-prop1-ridge", "von Oswald et al. 2023 + Bai et al. 2023", "Prop. 1 + Cor. C.1 (l2 head)",
              "adding a constant-score head for the -lr*lam*w term makes each layer one GD step on the ridge "
              "objective",
              "GD iterates on 1/(2n)|Xw-y|^2 + lam/2 |w|^2 (numpy)", _gd_ridge_case, GD, variant="lam>0",
              proof=Proof("general", (induction("induction gd(lam>0)", lambda: gd_induction(LAM)),))),
        Claim("bai23-ridge", "Bai et al. 2023", "Thm 4 (ridge by GD, L = O(kappa log 1/eps))",
              "L layers of GD on the ridge objective reach ridge at the contraction rate: "
              "|y_L - y_ridge| <= rho^L |x_q||w*|, rho = max|1 - lr a_i| <= 1 - lr mu",
              "GD iterates; np.linalg.solve ridge (numpy)", _gd_ridge_case, GD, variant="lam>0",
              knobs=dict(steps=(1, 60)), bounds=_gd_ridge_rate,
              proof=Proof("general", (induction("induction gd(lam>0)", lambda: gd_induction(LAM)),),
                          note="the layer identity; the contraction rate is checked numerically")),
        Claim("vonoswald23-mask", "von Oswald et al. 2023", "remark on Prop. 1; docs/pitfalls.md #2",
              "negative control: without the query mask, layer 1 still equals GD but layers >= 2 miss it",
              "GD iterates (numpy)", _gd_unmasked_case, GD, variant="mask_query=False",
              kind="negative", prompt=dict(m=3), knobs=dict(steps=3, lr_factor=1.0),
              proof=Proof("general", (Part("two-layer counterexample", unmasked_control),))),
    ],
)


def gdpp_eigenvalue_map(lam: np.ndarray, gamma: float) -> np.ndarray:
    """The eigenvalues of ``S' = (I - gamma S) S (I - gamma S)`` from those of ``S``:
    ``lam (1 - gamma lam)^2`` (GD++'s input transform, von Oswald et al. 2023, App. A.10)."""
    return lam * (1 - gamma * lam) ** 2


def gdpp_kappa_lemma() -> Outcome:
    """For ``0 <= gamma l <= 1/3`` (sympy, symbolic gamma and l): ``f(l) = l (1 - gamma l)^2`` has
    ``f' = (1 - gamma l)(1 - 3 gamma l) >= 0`` (order kept), and ``f(l)/l = (1 - gamma l)^2`` is
    decreasing, so ``f(l_max)/f(l_min) = kappa ((1 - gamma l_max)/(1 - gamma l_min))^2 <= kappa``."""
    import sympy as sp

    g, l, a, b = sp.symbols("gamma lambda a b", positive=True)
    f = l * (1 - g * l) ** 2
    deriv_ok = sp.expand(sp.diff(f, l) - (1 - g * l) * (1 - 3 * g * l)) == 0
    ratio = sp.simplify(f.subs(l, b) / f.subs(l, a) - (b / a) * ((1 - g * b) / (1 - g * a)) ** 2) == 0
    # (1 - g l)^2 decreasing on [0, 1/g]: its derivative -2 g (1 - g l) <= 0 there
    decr = sp.expand(sp.diff((1 - g * l) ** 2, l) + 2 * g * (1 - g * l)) == 0
    ok = deriv_ok and ratio and decr
    return Outcome(ok, "f'(l) = (1 - g l)(1 - 3 g l) >= 0 on [0, 1/(3g)]; f(b)/f(a) = (b/a) ((1 - g b)/(1 - g a))^2; "
                       "(1 - g l)^2 decreasing on [0, 1/g]: kappa never grows for g lambda_max <= 1/3"
                   if ok else "the eigenvalue-map identities do not hold")


def check_gdpp_kappa(prompt, knobs):
    """GD++'s input transform on the construction's own stream: for ``gamma <= 1/(3 lambda_max(S_0))``
    (``gamma = kappa_factor / (3 max_b lambda_max)``), every layer maps the context covariance's
    eigenvalues by :func:`gdpp_eigenvalue_map` (which is increasing on ``[0, 1/(3 gamma)]``, so
    the order is kept) and the condition number never grows:
    ``kappa_{t+1}/kappa_t = ((1 - gamma lambda_max)/(1 - gamma lambda_min))^2 <= 1``.  Measured per
    layer from the construction's x slots (:meth:`Construction.read_slot`): the eigenvalues against
    the map (relative to lambda_max), and ``max(0, kappa_{t+1}/kappa_t - 1)`` against 0; tolerance
    the error model's (:func:`verify.tolerance.tolerance`) at scale 1 (eigenvalues) and ``kappa_t``
    (the ratio: a relative error eps in lambda_min moves kappa by eps kappa)."""
    X, y, Xq = prompt.arrays
    n, d = X.shape[1], X.shape[2]
    lam_max = np.linalg.eigvalsh(np.einsum("bni,bnj->bij", X, X) / n)[:, -1].max()
    gamma = knobs.kappa_factor / (3 * lam_max)
    c = gd_plus_plus(d, knobs.steps, stable_lr(X, knobs.lr_factor), gamma)
    xs = c.read_slot(X, y, Xq, "x", check=False)[:, :, :n]  # [S+1, B, n, d]: the context inputs after each layer
    ev = np.linalg.eigvalsh(np.einsum("sbni,sbnj->sbij", xs, xs) / n)  # ascending
    kappa = ev[..., -1] / ev[..., 0]
    mapped = np.abs(ev[1:] - gdpp_eigenvalue_map(ev[:-1], gamma)).max(-1) / ev[:-1, :, -1]
    growth = np.maximum(kappa[1:] / kappa[:-1] - 1, 0)
    model = np.stack([mapped, growth], -1)
    tol = tolerance(torch.float64, n, d, np.stack([np.ones_like(growth), kappa[:-1]], -1))
    return Comparison(model, np.zeros_like(model), tol, np.ones_like(model))


def _gdpp_baseline(prep, c):
    return lambda: baselines.gd_plus_plus(prep.X, prep.y, prep.Xq, c.steps, c.params["lr"], c.params["gamma"])


register(
    gd_plus_plus, summary="an input transform `(I − γ XᵀX/n)` plus a GD step",
    source="von Oswald et al. 2023, App. A.10", exactness="exact",
    paper_resources='App. A.10: one LSA layer (1 head) per GD++ step',
    bench=Bench(lambda d, n: dict(steps=10, lr=0.01, gamma=0.001), baseline=_gdpp_baseline),
    claims=[
        Claim("vonoswald23-gdpp", "von Oswald et al. 2023", "App. A.10 (GD++)",
              "one LSA layer transforms every input by (I - gamma X^T X/n) and takes a GD step on the "
              "current inputs",
              "GD++ recursion, effective weights (numpy)", _gdpp_case, GDPlusPlus,
              proof=Proof("general", (induction("induction gd_plus_plus", gdpp_induction),))),
        Claim("vonoswald23-gdpp-kappa", "von Oswald et al. 2023", "App. A.10, Fig. 13 (GD++ conditioning)",
              "GD++'s input transform maps each eigenvalue l of X^T X/n to l (1 - gamma l)^2; for gamma <= "
              "1/(3 lambda_max) the condition number after every layer is at most the one before",
              "eigenvalues of the construction's context inputs (numpy eigvalsh)", check_gdpp_kappa, kind="bound",
              variant="kappa", prompt=dict(n=(12, 40), d=(1, 8)), knobs=dict(kappa_factor=(0.0, 1.0)),
              proof=Proof("general", (Part("lemma: the eigenvalue map keeps order and shrinks kappa", gdpp_kappa_lemma),),
                          note="the eigenvalue map itself is the gd_plus_plus induction (vonoswald23-gdpp)")),
    ],
)


def _pgd_baseline(prep, c):
    P = np.asarray(c.params["precond"])
    return lambda: baselines.gd(prep.X, prep.y, c.steps, precond=P)


register(
    preconditioned_gd, summary="`w ← w − P ∇L(w)` for any d×d P", source="Ahn et al. 2023",
    exactness="exact",
    paper_resources='one LSA layer (1 head) per preconditioned step',
    bench=Bench(lambda d, n: dict(steps=10, precond=0.01 * np.eye(d)), baseline=_pgd_baseline),
    claims=[
        Claim("ahn23-pgd", "Ahn et al. 2023", "LSA layer with P, Q",
              "one LSA layer = one step w <- w - P grad L(w) for any d x d P, non-symmetric included "
              "(transpose trap, docs/pitfalls.md #5)",
              "preconditioned GD iterates (numpy)", _pgd_case, GD,
              proof=Proof("general", (induction("induction preconditioned_gd (non-symmetric P_t)", pgd_induction),))),
    ],
)

register_paper(Paper(
    "von Oswald et al. 2023", "Transformers learn in-context by gradient descent (ICML 2023, arXiv 2212.07677)", (
        Result("Prop. 1", "one linear self-attention layer is one GD step; the query must be masked",
               ("vonoswald23-prop1", "vonoswald23-mask", "vonoswald23-prop1-ridge")),
        Result("Prop. 2", "an MLP then LSA layers: GD on features; one step is a kernel smoother",
               ("vonoswald23-prop2", "vonoswald23-prop2-kernel")),
        Result("Prop. 3", "a copying layer builds (x_i, y_i) tokens from the interleaved prompt",
               ("vonoswald23-prop3", "vonoswald23-prop3-softmax")),
        Result("App. A.9", "two softmax heads approximate one linear head", ("vonoswald23-softmax-lsa",)),
        Result("App. A.10, Fig. 13", "GD++: an input transform plus a GD step; it improves the conditioning",
               ("vonoswald23-gdpp", "vonoswald23-gdpp-kappa")),
        Result("§4, Fig. 3", "trained multi-layer LSAs match GD++ with tuned per-layer (eta, gamma)", (),
               "trained-model evidence, not a claim (icl-verify reproduce vonoswald23, docs/training.md): one trained "
               "layer matches GD; deeper untied LSAs beat GD and improve with depth, but beat even per-layer fitted "
               "GD++ rather than match it; looped (tied) LSAs track GD++ with one (eta, gamma), sensitivity cosine "
               "0.990-0.995 in the full run, at a lower loss"),
    )))

register_paper(Paper(
    "Ahn et al. 2023", "Transformers learn to implement preconditioned gradient descent for in-context learning "
                       "(NeurIPS 2023, arXiv 2306.00297)", (
        Result("§3, the LSA layer with P and Q", "one LSA layer is one preconditioned GD step", ("ahn23-pgd",)),
        Result("Thm 1", "the one-layer LSA's global optimum is a preconditioned GD step with a closed-form P",
               ("ahn23-optimum",), "trained one-layer LSAs land on P*: icl-verify reproduce ahn23, docs/training.md"),
    )))
