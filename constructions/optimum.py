"""The proved training optimum of one linear self-attention layer, as a construction.

Ahn et al. 2023 (Thm 1) and Zhang, Frei and Bartlett 2023 prove that the one-layer LSA which
minimises the expected in-context risk over Gaussian linear-regression prompts is one step of
preconditioned GD with a closed-form preconditioner.  :func:`optimal_lsa` is that layer.  The
closed form and the expected risk are derived below in the toolkit's conventions (docs/constructions/optimal_lsa.md
has the derivation and the mapping to the papers), and the claim ``ahn23-optimum`` checks it.

Setting: ``x ~ N(0, Sigma)`` (context and query), ``w ~ N(0, I_d)``, ``y = <w, x> + sigma eps``;
one GD step from ``w_0 = 0`` on ``L(w) = 1/(2n) |Xw - y|^2`` with preconditioner P,
``w_1 = P X^T y / n``, predicts ``<w_1, x_q>``.
"""
from __future__ import annotations

import numpy as np

from verify import baselines
from verify.claims import Claim, Proof
from verify.reference import GD
from verify.tolerance import C, Comparison, compare_trace, eps

from . import parts
from .construction import Construction
from .errors import ConstructionError
from .registry import Bench, register


def _cov(cov, d: int) -> np.ndarray:
    """``cov`` as a symmetric positive definite ``[d, d]`` array (symmetrised: asymmetry beyond
    round-off, 1e-12 of its largest entry, is refused)."""
    S = parts.real_array(cov, "cov")
    if S.shape != (d, d):
        raise ConstructionError(f"cov must be a ({d}, {d}) matrix, got shape {S.shape}")
    if np.abs(S - S.T).max() > 1e-12 * np.abs(S).max():
        raise ConstructionError("cov must be symmetric (a covariance matrix)")
    S = (S + S.T) / 2
    if np.linalg.eigvalsh(S)[0] <= 0:
        raise ConstructionError("cov must be positive definite (the inputs' covariance)")
    return S


def optimal_precond(cov, n: int, noise: float = 0.0) -> np.ndarray:
    """``P* = ((1 + 1/n) Sigma + (tr(Sigma) + sigma^2)/n I)^{-1}``: the minimiser of
    :func:`one_step_risk` over all d x d matrices P."""
    S = np.asarray(cov, dtype=np.float64)
    d = S.shape[0]
    return np.linalg.inv((1 + 1 / n) * S + (np.trace(S) + np.square(noise)) / n * np.eye(d))


def one_step_risk(P, cov, n: int, noise: float = 0.0) -> float:
    """The expected risk ``E (<w_1, x_q> - y_q)^2`` of one preconditioned GD step, in closed form:
    ``tr(Sigma P G P^T) - 2 tr(Sigma P Sigma) + tr(Sigma) + sigma^2`` with
    ``G = E[S^2] + (sigma^2/n) Sigma = ((n+1)/n) Sigma^2 + ((tr(Sigma) + sigma^2)/n) Sigma``
    (S = X^T X/n, and ``E[S^2]`` of the Wishart matrix)."""
    P, S = np.asarray(P, dtype=np.float64), np.asarray(cov, dtype=np.float64)
    G = (n + 1) / n * S @ S + (np.trace(S) + np.square(noise)) / n * S
    return float(np.trace(S @ P @ G @ P.T) - 2 * np.trace(S @ P @ S) + np.trace(S) + np.square(noise))


def risk_gradient(P, cov, n: int, noise: float = 0.0) -> np.ndarray:
    """``d risk / d P = 2 Sigma P G - 2 Sigma^2`` (G as in :func:`one_step_risk`); zero only at P*."""
    P, S = np.asarray(P, dtype=np.float64), np.asarray(cov, dtype=np.float64)
    G = (n + 1) / n * S @ S + (np.trace(S) + np.square(noise)) / n * S
    return 2 * S @ P @ G - 2 * S @ S


def optimal_lsa(d: int, n: int, cov, noise: float = 0.0) -> Construction:
    """The expected-risk-optimal one-layer LSA (Ahn et al. 2023, Thm 1; Zhang, Frei and Bartlett 2023).

    **Theorem** (derived in docs/constructions/optimal_lsa.md; Ahn et al. 2023 Thm 1 and Zhang, Frei and Bartlett
    2023 for the noiseless case).  For prompts of n examples with ``x ~ N(0, Sigma)``,
    ``w ~ N(0, I_d)``, ``y = <w, x> + sigma eps``, the one preconditioned GD step
    ``w_1 = P X^T y / n`` has expected risk :func:`one_step_risk`, a strictly convex quadratic in
    P whose unique minimiser is ``P* = ((1 + 1/n) Sigma + (tr(Sigma) + sigma^2)/n I)^{-1}``
    (:func:`optimal_precond`).  This construction is the linear-attention layer of that step.

    **Resources.**  1 layer, 1 head, width ``d + 1``, linear attention.

    **Exactness.**  Exact (float64 round-off): the layer is one preconditioned GD step with P*;
    the claim ``ahn23-optimum`` checks that P* is stationary and minimal for the closed-form risk
    and that the construction's Monte-Carlo risk matches the closed form.

    **Domain.**  ``cov`` symmetric positive definite, ``noise >= 0``, any prompt (one step needs no
    stability condition).
    """
    d, n = parts.positive_int(d, "d"), parts.positive_int(n, "n")
    noise = parts.real(noise, "noise", strict=False)
    parts.budget("optimal_lsa", layers=1, width=d + 1, d_head=d)
    S = _cov(cov, d)
    with np.errstate(all="ignore"):
        P = optimal_precond(S, n, noise)
    if not np.isfinite(P).all() or not np.isfinite(np.trace(S) + np.square(noise)):
        raise ConstructionError(f"P* = ((1 + 1/n) cov + (tr cov + noise^2)/n I)^-1 is not finite for noise={noise:.3g} "
                                "and this cov; rescale cov and noise towards unit scale")
    lay = parts.lsa_layout(d)
    return Construction("optimal_lsa", dict(d=d, n=n, cov=S.tolist(), noise=noise),
                        [parts.block("linear", [parts.gd_head(lay, P)])], lay, d)


# -- the claim ------------------------------------------------------------------------------------------
#: Monte-Carlo prompts per case, and the number of standard errors the Monte-Carlo risk may differ by
MC_PROMPTS, MC_SIGMAS = 4000, 5.0


def _sigma(spec, isotropic: bool, rng) -> np.ndarray:
    d = spec.d
    if isotropic:
        return np.eye(d)
    q, _ = np.linalg.qr(rng.standard_normal((d, d)))
    S = (q * np.geomspace(1.0, 10.0 ** -spec.log10_kappa, d)) @ q.T
    return (S + S.T) / 2


def check_optimum(prompt, knobs) -> Comparison:
    """``ahn23-optimum`` on one drawn setting (d, n, Sigma isotropic on even knob seeds, else with
    the prompt's condition number; sigma the prompt's noise level):

    * stationarity: ``|grad R(P*)| <= C eps |G| |P*| d`` (round-off of the closed form);
    * minimality: ``R(P* + delta E) - R(P*) = delta^2 tr(Sigma E G E^T) >= 0`` for random E and
      delta, up to the same round-off: checked as ``R(P*) - R(P* + delta E) <= tol``;
    * the closed form itself: the construction's empirical risk on MC_PROMPTS fresh prompts from
      the model, at P* and at a perturbed P, within MC_SIGMAS standard errors of one_step_risk;
    * the layer: on the drawn prompt, one preconditioned GD step with P* (numpy), within the error
      model's tolerance."""
    spec = prompt.spec
    rng = np.random.default_rng([spec.seed, knobs.seed, 1])
    d, n, noise = spec.d, spec.n, float(spec.noise)
    S = _sigma(spec, knobs.seed % 2 == 0, rng)
    c = optimal_lsa(d, n, S, noise)
    P = optimal_precond(S, n, noise)
    G = (n + 1) / n * S @ S + (np.trace(S) + np.square(noise)) / n * S
    R0 = one_step_risk(P, S, n, noise)
    scale = np.linalg.norm(G) * np.linalg.norm(P) * d + np.trace(S) + np.square(noise)
    tol = C * eps(np.float64) * scale * d
    grad = np.linalg.norm(risk_gradient(P, S, n, noise))
    drops = []
    for _ in range(4):
        E = rng.standard_normal((d, d))
        delta = 10.0 ** rng.uniform(-3, 0) * np.linalg.norm(P) / np.linalg.norm(E)
        drops.append(R0 - one_step_risk(P + delta * E, S, n, noise))
    # Monte Carlo with the construction itself
    L = np.linalg.cholesky(S)
    B = MC_PROMPTS
    X = rng.standard_normal((B, n, d)) @ L.T
    xq = rng.standard_normal((B, 1, d)) @ L.T
    w = rng.standard_normal((B, d))
    y = np.einsum("bnd,bd->bn", X, w) + noise * rng.standard_normal((B, n))
    yq = np.einsum("bmd,bd->bm", xq, w) + noise * rng.standard_normal((B, 1))
    E = rng.standard_normal((d, d)) * 0.3 * np.linalg.norm(P) / np.sqrt(d)
    perturbed = parts.gd_head(c.layout, P + E)
    c2 = Construction("optimal_lsa", c.params, [parts.block("linear", [perturbed])], c.layout, d)
    m, t = [grad, max(max(drops), 0.0)], [tol, tol]  # a risk increase is fine: only a drop below R(P*) counts
    for model, Pm in ((c, P), (c2, P + E)):
        sq = (model.predict(X, y, xq, check=False) - yq) ** 2
        se = sq.std(ddof=1) / np.sqrt(B)
        m.append(abs(sq.mean() - one_step_risk(Pm, S, n, noise)))
        t.append(MC_SIGMAS * se)
    # the layer itself: one preconditioned GD step with P* on the drawn prompt (the error model's tolerance)
    exact = compare_trace(c, GD(1, precond=P), prompt.X, prompt.y, prompt.Xq)
    m += list(np.abs(exact.model - exact.ref).ravel())
    t += list(exact.tol.ravel())
    m, t = np.array(m)[None, None], np.array(t)[None, None]
    return Comparison(m, np.zeros_like(m), t, t)


def _baseline(prep, c):
    P = optimal_precond(np.asarray(c.params["cov"]), c.params["n"], c.params["noise"])
    return lambda: baselines.gd(prep.X, prep.y, 1, precond=P)


register(
    optimal_lsa, summary="the expected-risk-optimal one-layer LSA: one preconditioned GD step with "
                         "P* = ((1 + 1/n)Σ + (tr Σ + σ²)/n · I)⁻¹",
    source="Ahn et al. 2023, Thm 1; Zhang, Frei and Bartlett 2023", exactness="exact",
    paper_resources="Thm 1: one linear self-attention layer",
    bench=Bench(lambda d, n: dict(n=n, cov=np.eye(d).tolist(), noise=0.1), baseline=_baseline),
    claims=[
        Claim("ahn23-optimum", "Ahn et al. 2023", "Thm 1 (the one-layer optimum)",
              "for x ~ N(0, Sigma), w ~ N(0, I), noise sigma, the one-step risk is a convex quadratic in P, stationary "
              "and minimal at P* = ((1 + 1/n) Sigma + (tr Sigma + sigma^2)/n I)^-1; the construction's Monte-Carlo risk "
              "at P* and at a perturbed P matches the closed form within 5 standard errors",
              "the closed-form risk and its gradient, and Monte Carlo of the construction (numpy)", check_optimum,
              kind="bound", prompt=dict(n=(2, 40), d=(1, 8), noise=(0.0, 1.0)),
              proof=Proof("none", note="no proof in the toolkit's prover: the closed form is derived in docs/constructions/optimal_lsa.md "
                                       "and checked here by its gradient, by perturbation and by Monte Carlo")),
    ],
)
