"""Softmax attention is a Nadaraya-Watson kernel smoother (Nadaraya 1964; Watson 1964).

Notation: B batch, n context examples, m queries, d input dim, beta the inverse temperature.
One softmax head whose key is x_i, whose query is ``beta x_q`` and whose value is y_i outputs at the
query ``sum_i exp(beta x_q . x_i) y_i / sum_i exp(beta x_q . x_i)``: the kernel smoother with the
exponential dot-product kernel.  With the squared-norm slot ``sq = |x|^2`` (the "sqnorm" fill) and
the constant slot ``one``, the score ``beta x_q . x_i - beta |x_i|^2 / 2`` differs from
``-beta |x_q - x_i|^2 / 2`` by a term of the query alone, which the softmax cancels: the Gaussian
kernel ``exp(-beta |x_q - x_i|^2 / 2)``.

==========  ======================  ======================
slot        context token i         query token
==========  ======================  ======================
``x``       x_i                     x_q
``y``       y_i                     0
``sq``      |x_i|^2 (Gaussian)      |x_q|^2 (Gaussian)
``one``     1 (Gaussian)            1 (Gaussian)
``out``     (unread)                the smoother's prediction
==========  ======================  ======================

Query tokens are masked out of the keys, so a query attends to the n context examples only.
"""
from __future__ import annotations

import numpy as np

from verify.claims import Claim
from verify.reference import NadarayaWatson

from . import parts
from .construction import Construction
from .errors import ConstructionError
from .layout import Readout, ResidualLayout
from .registry import Bench, Paper, Result, register, register_paper
from .spec import AttentionSpec, BlockSpec

KERNELS = ("exp", "gaussian")


def nw_kernel_smoother(d: int, beta: float, kernel: str = "exp") -> Construction:
    """One softmax attention layer that is the Nadaraya-Watson kernel smoother.

    **Theorem** (Nadaraya 1964; Watson 1964; Tsai et al. 2019 read attention as a kernel
    smoother).  The layer's readout at a query is
    ``f(x_q) = sum_i k(x_q, x_i) y_i / sum_i k(x_q, x_i)`` with ``k(x, x') = exp(beta x . x')``
    (``kernel="exp"``) or ``k(x, x') = exp(-beta |x - x'|^2 / 2)`` (``kernel="gaussian"``).

    **Proof.**  The head's score is ``beta x_q . x_i`` (exp), or ``beta x_q . x_i - beta |x_i|^2/2``
    (gaussian: the query reads ``[beta x, 1]`` and the key ``[x, -beta sq/2]``), which is
    ``-beta |x_q - x_i|^2/2 + beta |x_q|^2/2``; the softmax over the n keys divides out
    ``exp(beta |x_q|^2/2)`` and any other factor of the query alone, and its weights times the
    values y_i are the smoother.

    **Resources.**  1 layer, 1 head of width d (exp) or d + 1 (gaussian), width ``d + 2``
    (exp) or ``d + 4`` (gaussian); softmax attention, no MLP.

    **Exactness.**  Exact (float64 round-off): the softmax is the smoother's normalisation.

    **Domain.**  ``beta`` a finite positive real; every score ``beta |x_q . x_i|`` (or the
    Gaussian's ``beta |x_q - x_i|^2 / 2`` spread) finite in the run dtype (the overflow check of
    :meth:`Construction.predict`); torch's softmax subtracts the largest score, so large scores do
    not overflow, but beyond ``|score| ~ 700`` (float64) every weight but the nearest key's
    underflows to 0 and the smoother becomes nearest-neighbour.
    """
    d = parts.positive_int(d, "d")
    beta = parts.real(beta, "beta")
    if not isinstance(kernel, str) or kernel not in KERNELS:
        raise ConstructionError(f"kernel must be one of {KERNELS}, got {kernel!r}")
    gauss = kernel == "gaussian"
    parts.budget("nw_kernel_smoother", layers=1, width=d + 4, d_head=d + 1)
    extra = [("sq", 1, "sqnorm"), ("one", 1, "one")] if gauss else []
    lay = ResidualLayout.of([("x", d, "x"), ("y", 1, "y"), *extra, ("out", 1, "zero")], Readout("out"))
    e = d + gauss
    if gauss:
        q = lay.read({"x": beta * np.eye(d, e), "one": np.eye(e)[d:]}, e)
        k = lay.read({"x": np.eye(d, e), "sq": -beta / 2 * np.eye(e)[d:]}, e)
    else:
        q, k = lay.read({"x": beta * np.eye(d)}, d), lay.read({"x": np.eye(d)}, d)
    head = dict(W_Q=q, W_K=k, W_V=lay.read({"y": np.eye(1)}, 1), W_O=lay.write({"out": np.eye(1)}, 1))
    block = BlockSpec(AttentionSpec.from_heads("softmax", [head]), None)
    return Construction("nw_kernel_smoother", dict(d=d, beta=beta, kernel=kernel), [block], lay, d)


def _case(p, k):
    beta = 10.0**k.log10_beta / max(float(np.abs(p.X).max()) * float(np.abs(p.Xq).max()), 1e-12)
    kernel = KERNELS[k.seed % 2]
    return nw_kernel_smoother(p.spec.d, beta, kernel), NadarayaWatson(beta, kernel)


def _baseline(prep, c):
    """The smoother itself in torch: ``softmax(score) y`` on the same prompts."""
    import torch

    beta, X, y, Xq = c.params["beta"], prep.X, prep.y, prep.Xq
    gauss = c.params["kernel"] == "gaussian"

    def run():
        s = beta * Xq @ X.transpose(-1, -2)
        if gauss:
            s = s - beta * (X * X).sum(-1)[:, None, :] / 2
        return torch.softmax(s, -1) @ y[..., None]

    return run


register(
    nw_kernel_smoother, summary="one softmax head with keys x_i, values y_i and query beta x_q: the Nadaraya-Watson "
                                "kernel smoother (exponential dot-product or, with a squared-norm slot, Gaussian kernel)",
    source="Nadaraya 1964; Watson 1964", exactness="exact",
    paper_resources="one softmax attention layer",
    bench=Bench(lambda d, n: dict(beta=1.0), baseline=_baseline),
    claims=[
        Claim("nw-kernel-smoother", "Nadaraya 1964; Watson 1964", "softmax attention as a kernel smoother",
              "one softmax attention layer (keys x_i, values y_i, query beta x_q) outputs the Nadaraya-Watson smoother "
              "sum_i k(x_q, x_i) y_i / sum_i k(x_q, x_i) with k = exp(beta x.x') or, with the squared-norm slot, "
              "exp(-beta |x - x'|^2/2); exact for every beta, including scores where all but the nearest weights "
              "underflow", "Nadaraya-Watson smoother (numpy, log-sum-exp)", _case, NadarayaWatson,
              knobs=dict(log10_beta=(-2.0, 2.5))),
    ],
)

register_paper(Paper(
    "Nadaraya 1964; Watson 1964", "Smooth regression analysis / On estimating regression (the kernel smoother); "
                                  "softmax attention as one", (
        Result("kernel smoother", "one softmax attention layer is the Nadaraya-Watson estimator, exp and Gaussian kernels",
               ("nw-kernel-smoother",)),
    )))
