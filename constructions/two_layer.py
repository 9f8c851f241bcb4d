"""Gradient descent on a two-layer neural network in context (Bai et al. 2023, Thm G.1).

Notation: B batch, n context examples, m queries, d input dim, K hidden units of the network
being trained (``width``), J knots.  The network and its square loss (toolkit convention)::

    f(x) = sum_k u_k act(v_k . x),     L(V, u) = 1/(2n) sum_i (f(x_i) - y_i)^2
    u_k <- u_k - lr (1/n) sum_i e_i act(s_ik)
    v_k <- v_k - lr (1/n) sum_i e_i u_k act'(s_ik) x_i,     e_i = f(x_i) - y_i,  s_ik = v_k . x_i

from a start ``(V_0, u_0)`` that the weights hold (a random one by default: GD from ``V = 0,
u = 0`` never moves, every gradient is 0 there).  The construction runs it with ``act`` the
smoothed sigmoid of :func:`constructions.parts.relu_antiderivative`: ``act' = h_hat``, sigma'
interpolated at J knots on ``[-R, R]`` (a sum of ReLUs), and ``act = sigma_tilde``, h_hat's
antiderivative (a sum of squared ReLUs), so that every layer group is an exact gradient step of
the smoothed network's loss (two independent sums of ReLUs for act and act' would make the step
an inexact gradient step: the second would not be the derivative of the first).

Token layout (slots not named are 0; every token holds the network's parameters):

=========  ===============================  ==========================
slot       context token i                  query token
=========  ===============================  ==========================
``x``      x_i                              x_q
``y``      y_i                              0
``one``    1                                1
``v``      V_t (K x d, row-major)           V_t
``u``      u_t                              u_t
``s``      s_ik = v_k.x_i (layer 1 only)    (the same at x_q)
``z``      relu(s_ik - s_m), K x J          (the same at x_q)
``p``      sigma_tilde(s_ik)                (at x_q)
``h``      h_hat(s_ik)                      (at x_q)
``hx``     u_k h_hat(s_ik) x_i, K x d       (at x_q)
``e``      f(x_i) - y_i                     f(x_q): the readout
=========  ===============================  ==========================

One GD step is 4 blocks; the first three are the network's forward pass at every token, the
fourth the update:

1. a *self* block (each token attends to itself only, ``causal="self"``, divided by its one key):
   K heads write the token's own scores ``s_k = v_k . x`` (bilinear forms of its own slots); the
   ReLU MLP writes ``z_km = relu(s_k - s_m)``, ``h_k = h_hat(s_k)``, the linear part of ``p_k``
   (``c0 + h0 s_k``) and ``e = -y``, and clears ``s`` and the previous step's ``z, p, h, hx, e``;
2. a self block: K heads add ``sum_m (b_m/2) z_km^2`` to ``p_k`` (``p_k = sigma_tilde(s_k)``), K heads
   write ``hx_k = u_k h_k x``;
3. a self block: one head adds ``f = u . p`` to ``e`` (``e = f - y``);
4. the update (linear attention over the context keys, divided by n): two heads of score ``e_j``
   write ``-lr (1/n) sum_j e_j p_j`` into ``u`` and ``-lr (1/n) sum_j e_j hx_j`` into ``v``.

A prefix block (an MLP's output bias) writes ``(V_0, u_0)`` into every token; the readout is
blocks 1 to 3 once more, which leave ``f_t(x_q)`` in the query's ``e`` slot.  Every head is linear:
no masking constant, no gate.
"""
from __future__ import annotations

from fractions import Fraction

import numpy as np

from verify.bounds import sigmoid_fit_errors
from verify.claims import Claim, Outcome, Part, Proof
from verify.prompts import Prompt, PromptSpec
from verify.reference import TwoLayerGD, sigmoid, sigmoid_prime
from verify.tolerance import Comparison, tolerance

from . import parts
from .construction import Construction
from .errors import ConstructionError
from .layout import Readout, ResidualLayout
from .registry import Bench, register
from .spec import BlockSpec

#: the default knot interval [-R, R]: sigma'(6) = 2.5e-3, so the flat extension outside costs little
RADIUS = 6.0


def two_layer_links(knots: int, radius: float) -> tuple:
    """``(knots, b, h0, c0)`` of the smoothed sigmoid (:func:`constructions.parts.relu_antiderivative`)."""
    return parts.relu_antiderivative(sigmoid, sigmoid_prime, knots, radius)


def random_start(d: int, width: int, seed: int = 0) -> dict:
    """A random start ``V_0 ~ N(0, I/d)`` (rows), ``u_0 ~ N(0, 1/K)``, as plain lists."""
    d, width = parts.positive_int(d, "d"), parts.positive_int(width, "width")
    rng = np.random.default_rng(parts.seed(seed))
    return dict(V=(rng.normal(size=(width, d)) / np.sqrt(d)).tolist(), u=(rng.normal(size=width) / np.sqrt(width)).tolist())


def two_layer_gd(d: int, width: int, steps: int, lr: float, knots: int, radius: float = RADIUS, start: dict | None = None,
                 seed: int = 0) -> Construction:
    """Gradient descent on a two-layer sigmoid network's square loss, one step per 4 layers.

    **Theorem** (Bai et al. 2023, Thm G.1, App. G: in-context GD on two-layer neural networks; the
    construction, its layout and its constants are ours, docs/constructions/two_layer_gd.md).  With
    ``f(x) = sum_k u_k sigma_tilde(v_k . x)`` (K = ``width`` hidden units, ``sigma_tilde`` the smoothed
    sigmoid: module docstring), after step t (layers ``2 .. 4t + 1``) every token's ``v`` and ``u``
    slots hold the t-th GD iterate on ``L(V, u) = 1/(2n) sum_i (f(x_i) - y_i)^2`` with step ``lr`` from
    ``(V_0, u_0)``, and ``trace()[t-1]`` is the prediction ``f_t(x_q)``.  Against GD on the network
    with the true sigmoid, one step from the same parameters differs by at most
    ``lr sqrt(A^2 + B^2)``,

        A = (1/n) sum_i (|u|_1 eps0 |sigma_tilde(s_i)| + |e_i| eps0 sqrt(K))
        B = (1/n) sum_i |x_i| (|u|_1 eps0 |u * h_hat(s_i)| + |e_i| eps1 |u|)

    with ``eps0 = R h^2/32``, ``eps1 = h^2/64`` on ``[-R, R]``, ``h = 2R/(J - 1)``
    (:func:`verify.bounds.sigmoid_fit_errors`, which also covers scores outside): while every score
    lies in ``[-R, R]`` the local error falls as ``J^-2``; beyond R the term ``sigma'(R) (|s| - R)``,
    which does not fall with J, takes over.  Over several steps it is carried by the GD map, which on a non-convex loss
    may expand (``|I - lr H|`` can exceed 1), so the end-to-end error can grow faster than linearly
    in the number of steps.

    **Proof sketch.**  A diagonal mask makes attention a bilinear form of one token's own slots:
    the scores, the squares ``z_km^2`` and the products ``u_k h_k x`` are such forms; the MLP's units
    ``relu(s_k - s_m)`` give ``h_hat`` exactly and keep the ``z_km``.  Block 3 gives the residual,
    block 4 the gradient's two parts as means over the context keys of ``e_j`` times a value.
    Checked in exact rational arithmetic (``icl-verify prove bai23-two-layer``).  The local bound:
    the triangle inequality on ``e~ p~ - e p = (f~ - f) p~ + e (p~ - p)`` and its ``v`` analogue.

    **Resources.**  ``4 steps + 4`` layers; heads per layer: K (1), 2K (2), 1 (3), 2 (4); width
    ``d + 3 + K(2d + J + 4)``; one ReLU MLP per step (block 1) with ``3KJ + 2Kd + 6K + 4`` units
    (the paper's counts were not retrievable); linear attention only.

    **Exactness.**  Exact against GD on the smoothed network (float64 round-off); approximate
    against GD on the sigmoid network, with the local bound above.

    **Domain.**  ``lr > 0``; ``radius`` a normal float; ``start``: ``{"V": [K, d], "u": [K]}`` (default:
    :func:`random_start` with ``seed``).  GD on a non-convex loss has no stability limit that a
    prompt can be checked against: a step size that makes the iterates overflow is refused when it
    happens (``ConstructionError``), never returned as inf or NaN.
    """
    d, width, steps = parts.positive_int(d, "d"), parts.positive_int(width, "width"), parts.positive_int(steps, "steps")
    knots = parts.positive_int(knots, "knots")
    if knots < 2:
        raise ConstructionError("knots must be >= 2 (the interpolant of sigma' needs two knots)")
    lr, radius = parts.real(lr, "lr"), parts.real(radius, "radius")
    K, J = width, knots
    mlp_units = 3 * K * J + 2 * K * d + 6 * K + 4
    parts.budget("two_layer_gd", layers=4 * steps + 4, width=d + 3 + K * (2 * d + J + 4), heads=2 * K,
                 d_head=max(d, J, K), mlp=mlp_units)
    if start is None:
        start = random_start(d, K, seed)
    else:
        parts.seed(seed)  # unused with a given start, but a bad value is still refused
    if not isinstance(start, dict) or set(start) != {"V", "u"}:
        raise ConstructionError('start must be a dict {"V": [width, d], "u": [width]} (or None: a random start)')
    V0, u0 = parts.real_array(start["V"], "start['V']", (K, d)), parts.real_array(start["u"], "start['u']", (K,))
    links = two_layer_links(J, radius)
    lay = ResidualLayout.of([("x", d, "x"), ("y", 1, "y"), ("one", 1, "one"), ("v", K * d, "zero"), ("u", K, "zero"),
                             ("s", K, "zero"), ("z", K * J, "zero"), ("p", K, "zero"), ("h", K, "zero"),
                             ("hx", K * d, "zero"), ("e", 1, "zero")], Readout("e", 1.0))
    forward = forward_blocks(lay, links)
    update = parts.block("linear", [
        *parts.bilinear_heads(lay, {"one": [[1.0]]}, {"e": [[1.0]]}, {"p": np.eye(K)}, {"u": -lr * np.eye(K)}, 1),
        *parts.bilinear_heads(lay, {"one": [[1.0]]}, {"e": [[1.0]]}, {"hx": np.eye(K * d)}, {"v": -lr * np.eye(K * d)}, 1)])
    prefix = BlockSpec(None, parts.bias_mlp(lay, {"v": V0.ravel(), "u": u0}))
    blocks = [prefix] + (forward + [update]) * steps + forward
    domain = parts.magnitude_check(3, "the gradient's terms (residual e ~ |x|^2 times u h x)")
    params = dict(d=d, width=K, steps=steps, lr=lr, knots=J, radius=radius, start=dict(V=V0.tolist(), u=u0.tolist()))
    return Construction("two_layer_gd", params, blocks, lay, d, n_prefix=1, n_readout=3, step_blocks=4, domain=domain)


def forward_blocks(lay: ResidualLayout, links) -> list:
    """Blocks 1 to 3 of a step (module docstring): the network's forward pass at every token,
    leaving ``p = sigma_tilde(s)``, ``h = h_hat(s)``, ``hx = u h x`` and ``e = f(x) - y``."""
    kn, b, h0, c0 = links
    d, K, J = lay["x"].size, lay["u"].size, len(kn)
    one, I = [[1.0]], np.eye(d)
    EK, EJ = np.eye(K), np.eye(K * J)

    def rows(k: int, size: int, block) -> np.ndarray:  # [K * size, e]: block in the rows of unit k
        m = np.zeros((K * size, np.shape(block)[1]))
        m[k * size:(k + 1) * size] = block
        return m

    # 1. s_k = v_k . x (self); the MLP: z_km = relu(s_k - s_m), h_k = h_hat(s_k), p_k = c0 + h0 s_k, e = -y;
    #    s and the previous step's z, p, h, hx, e cleared
    scores = [h for k in range(K) for h in parts.bilinear_heads(lay, {"v": rows(k, d, I)}, {"x": I}, {"one": one},
                                                                 {"s": EK[k][None]}, d)]
    units = [({"s": EK[k]}, -s_m, {"z": EJ[k * J + m], "h": b_m * EK[k]})
             for k in range(K) for m, (s_m, b_m) in enumerate(zip(kn, b))]
    for k in range(K):
        units += parts.linear_units({"s": EK[k]}, {"s": -EK[k], "p": h0 * EK[k]})
    units += parts.linear_units({"y": [1.0]}, {"e": [-1.0]}) + parts.clear_units(lay, ("z", "p", "h", "hx", "e"))
    mlp = parts.units_mlp(lay, "relu", units, bias_out={"p": np.full(K, c0), "h": np.full(K, h0)})
    first = parts.block("linear", scores, mlp, causal="self", divisor="keys")
    # 2. p_k += sum_m (b_m/2) z_km^2; hx_k = u_k h_k x (self)
    half = np.diag(np.asarray(b, dtype=np.float64) / 2)
    squares = [h for k in range(K) for h in parts.bilinear_heads(lay, {"z": rows(k, J, half)}, {"z": rows(k, J, np.eye(J))},
                                                                  {"one": one}, {"p": EK[k][None]}, J)]
    products = [h for k in range(K) for h in parts.bilinear_heads(lay, {"u": EK[k][:, None]}, {"h": EK[k][:, None]},
                                                                   {"x": I}, {"hx": rows(k, d, I).T}, 1)]
    second = parts.block("linear", squares + products, causal="self", divisor="keys")
    # 3. e += u . p (self)
    third = parts.block("linear", parts.bilinear_heads(lay, {"u": EK}, {"p": EK}, {"one": one}, {"e": one}, K),
                        causal="self", divisor="keys")
    return [first, second, third]


# -- claims ----------------------------------------------------------------------------------------------
def _start(p: Prompt, width: int) -> dict:
    return random_start(p.spec.d, width, p.spec.seed)


def stable_two_layer_lr(X, y, start: dict, links, factor: float) -> float:
    """``lr = factor / max_b |H_b|``, H_b the smoothed loss's Hessian at the start (prompt b): a step
    size on the scale of the loss's curvature where GD starts (:meth:`verify.reference.TwoLayerGD.hessian`)."""
    ref = TwoLayerGD(1, 1.0, np.asarray(start["V"]), np.asarray(start["u"]), links)
    H = ref.hessian(X, y, ref.start(X.shape[0]))
    return factor / max(float(np.abs(np.linalg.eigvalsh(H)).max()), np.finfo(np.float64).tiny)


def _build(p: Prompt, k, knots: int, radius: float = RADIUS):
    start = _start(p, k.width)
    links = two_layer_links(knots, radius)
    lr = stable_two_layer_lr(p.X, p.y, start, links, k.lr_factor)
    c = two_layer_gd(p.spec.d, k.width, k.steps, lr, knots, radius, start)
    return c, TwoLayerGD(k.steps, lr, np.asarray(start["V"]), np.asarray(start["u"]), links)


def _case(p, k):
    return _build(p, k, k.knots)


def _local_case(p, k):
    return _build(p, k, k.knots, k.radius)


def local_error_bound(X, y, V, u, knots: int, radius: float) -> np.ndarray:
    """``sqrt(A^2 + B^2)`` of :func:`two_layer_gd`'s docstring per prompt ``[B]``: a bound on the
    gradient of the smoothed network's loss minus the sigmoid network's, at ``(V [B, K, d], u [B, K])``."""
    n, K = X.shape[1], u.shape[-1]
    S = np.einsum("bnd,bkd->bnk", X, V)
    eps0, eps1 = sigmoid_fit_errors(knots, radius, float(np.abs(S).max()))
    p_s, h_s = TwoLayerGD(1, 1.0, V, u, two_layer_links(knots, radius)).act(S)[:2]
    e = np.einsum("bk,bnk->bn", u, sigmoid(S)) - y  # the sigmoid network's residual
    u1, u2, xn = np.abs(u).sum(-1), np.linalg.norm(u, axis=-1), np.linalg.norm(X, axis=-1)
    A = (u1[:, None] * eps0 * np.linalg.norm(p_s, axis=-1) + np.abs(e) * eps0 * np.sqrt(K)).sum(-1) / n
    Bv = (xn * (u1[:, None] * eps0 * np.linalg.norm(u[:, None, :] * h_s, axis=-1)
                + np.abs(e) * eps1 * u2[:, None])).sum(-1) / n
    return np.sqrt(A * A + Bv * Bv)


def _local_bounds(p, k, c) -> Comparison:
    """Every step t: the construction's parameters after step t against one GD step of the sigmoid
    network from its own parameters after step t - 1, within ``lr`` times :func:`local_error_bound`
    plus the round-off of that one step (the construction's and the numpy step's, error model)."""
    P = c.params
    lr, knots, radius = P["lr"], P["knots"], P["radius"]
    K, d = P["width"], P["d"]
    U = np.asarray(c.read_slot(*p.arrays, "u"), dtype=np.float64)[:, :, -1]  # [S+1, B, K] (the query token's)
    V = np.asarray(c.read_slot(*p.arrays, "v"), dtype=np.float64)[:, :, -1].reshape(U.shape[:2] + (K, d))
    devs, allowed = [], []
    for t in range(1, U.shape[0]):
        true = TwoLayerGD(1, lr, V[t - 1], U[t - 1]).fit(p.X, p.y)
        smooth = TwoLayerGD(1, lr, V[t - 1], U[t - 1], two_layer_links(knots, radius)).fit(p.X, p.y)
        devs.append(np.linalg.norm(np.concatenate([U[t], V[t].reshape(U.shape[1], -1)], -1) - true.iterates_[1], axis=-1))
        tol = tolerance(c.dtype, p.spec.n, smooth.sum_length(d), smooth.magnitude_[:1], c.step_blocks)[0]
        allowed.append(lr * local_error_bound(p.X, p.y, V[t - 1], U[t - 1], knots, radius) + 2 * tol)
    model, bound = np.stack(devs)[..., None], np.stack(allowed)[..., None]
    return Comparison(model, np.zeros_like(model), bound, bound)


def two_layer_rate(seed: int = 0, d: int = 4, n: int = 32, B: int = 8, width: int = 4, steps: int = 4,
                   lr: float = 0.5, radius: float = RADIUS, knot_counts=(5, 9, 17, 33, 65)) -> dict:
    """The measurements of :func:`_report` (docs/constructions/two_layer_gd.md): on B prompts of a
    random two-layer sigmoid teacher (x ~ N(0, I), y = sum_k a_k sigma(w_k . x), K = width), the
    construction's prediction after ``steps`` steps against GD on the sigmoid network from the
    same start, max over prompts and queries, for several knot counts; and the largest local
    bound (:func:`local_error_bound`) along the way."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(B, n, d))
    Xq = rng.normal(size=(B, 4, d))
    W, a = rng.normal(size=(B, width, d)), rng.normal(size=(B, width))
    y = np.einsum("bk,bnk->bn", a, sigmoid(np.einsum("bnd,bkd->bnk", X, W)))
    start = random_start(d, width, seed)
    true = TwoLayerGD(steps, lr, np.asarray(start["V"]), np.asarray(start["u"])).fit(X, y).trace(Xq)
    gaps, local = [], []
    for J in knot_counts:
        c = two_layer_gd(d, width, steps, lr, J, radius, start)
        gaps.append(float(np.abs(np.asarray(c.trace(X, y, Xq)) - true).max()))
        ref = TwoLayerGD(steps, lr, np.asarray(start["V"]), np.asarray(start["u"]), two_layer_links(J, radius)).fit(X, y)
        local.append(max(float((lr * local_error_bound(X, y, ref.V_[t], ref.u_[t], J, radius)).max())
                         for t in range(steps)))
    return dict(setting=dict(d=d, n=n, B=B, width=width, steps=steps, lr=lr, radius=radius),
                knots=list(knot_counts), gap=gaps, local=local)


def _report(seed: int) -> str:
    r = two_layer_rate(seed)
    S = r["setting"]
    cell = lambda v: f"{v:>10.2e}"  # noqa: E731
    ratios = [a / b for a, b in zip(r["gap"], r["gap"][1:])]
    return "\n".join([
        f"bai23-two-layer-local, the prediction after {S['steps']} steps against GD on the sigmoid network (max over "
        f"{S['B']} prompts of a sigmoid teacher; d={S['d']}, n={S['n']}, K={S['width']}, lr={S['lr']:g}, R={S['radius']:g}, "
        f"seed {seed}):",
        f"  {'knots J':<26}" + "".join(f"{J:>10d}" for J in r["knots"]),
        f"  {'|f_T(x_q) - f_T^sigma|':<26}" + "".join(cell(v) for v in r["gap"]),
        f"  {'ratio to the next J':<26}" + "".join(f"{v:>10.2f}" for v in ratios) + "  (h halves: J^-2 gives 4)",
        f"  {'largest local bound':<26}" + "".join(cell(v) for v in r["local"])])


# -- proof -----------------------------------------------------------------------------------------------
def two_layer_exact() -> Outcome:
    """two_layer_gd(d=2, K=2, steps=2, J=3) equals the reference in exact rational arithmetic, after
    every step, on rational prompts."""
    from verify import exact as ex

    lr, J, R = 0.5, 3, 4.0
    c = two_layer_gd(2, 2, 2, lr, J, R, seed=1)
    ref = TwoLayerGD(2, Fraction(lr), ex.to_exact(c.params["start"]["V"]), ex.to_exact(c.params["start"]["u"]),
                     ex.exact_links(two_layer_links(J, R)))
    ok = all(ex.trace_equals(c, ref, *ex.rational_prompt(PromptSpec(B=1, n=4, m=2, d=2, seed=s))) for s in (0, 1))
    return Outcome(ok, "two_layer_gd(d=2, K=2, J=3, lr=1/2) = GD on the smoothed network exactly, after both steps, on "
                       "2 rational prompts" if ok else "two_layer_gd differs from the reference in exact arithmetic")


def _baseline(prep, c):
    from verify import baselines

    P = c.params
    return lambda: baselines.two_layer_gd(prep.X, prep.y, P["steps"], P["lr"], P["start"])


register(
    two_layer_gd, summary="one GD step on a two-layer sigmoid network's square loss per 4 linear layers: the forward "
                          "pass at every token by self heads and a ReLU MLP, the gradient by two heads",
    source="Bai et al. 2023, Thm G.1 (in-context GD on two-layer neural networks)",
    exactness="exact against GD on the smoothed network; one step within `lr·√(A² + B²)` of the sigmoid's "
              "(`O(J⁻²)` while the scores are in `[−R, R]`)",
    paper_resources="the paper's counts were not retrievable (docs/constructions/two_layer_gd.md)",
    bench=Bench(lambda d, n: dict(width=4, steps=3, lr=0.1, knots=16), labels="unit", baseline=_baseline),
    claims=[
        Claim("bai23-two-layer", "Bai et al. 2023", "Thm G.1, App. G (GD on a two-layer network)",
              "after every 4 layers every token's (V, u) is one more GD step on the square loss of the two-layer network "
              "f(x) = sum_k u_k sigma~(v_k.x) (sigma' by a sum of ReLUs, sigma~ its antiderivative); the readout is f_t(x_q)",
              "GD on the smoothed network (numpy)", _case, TwoLayerGD,
              knobs=dict(steps=(1, 4), lr_factor=(0.05, 1.0), width=(1, 4), knots=(2, 12)),
              proof=Proof("exact-rational", (Part("exact two_layer_gd", two_layer_exact),))),
        Claim("bai23-two-layer-local", "Bai et al. 2023", "Thm G.1 (the approximation, per step)",
              "one step of the construction from its own parameters is within lr sqrt(A^2 + B^2) of one GD step on the "
              "sigmoid network (A, B of order J^-2, the knot spacing squared, while the scores are in [-R, R]), at "
              "every step",
              "GD on the sigmoid network (numpy)", _local_case, TwoLayerGD, variant="sigmoid",
              knobs=dict(steps=(1, 4), lr_factor=(0.05, 1.0), width=(1, 4), knots=(2, 40), radius=(1.0, 8.0)),
              bounds=_local_bounds, report=_report,
              proof=Proof("none", note="approximate against the true sigmoid: the local bound is a triangle inequality "
                                       "on the interpolation errors, checked numerically; no proof of the end-to-end error")),
    ],
)
