"""Noise-level selection on a mixture (Bai et al. 2023, Thm 17, App. I.1), measured by Monte Carlo.

Prompts from :func:`constructions.bai.noise_mixture` (x ~ N(0, I_d), w ~ N(0, I_d/d), noise level
drawn per prompt from {0.1, 1}); ``ridge_select`` runs ridge GD at both levels' Bayes lambdas on
the first 60% of the examples and selects by the validation loss on the rest.  With Gaussian x a
linear predictor's test risk is exact, ``|v - w|^2 + sigma^2``, so every number below is a mean of
exact per-prompt risks over the prompts (95% confidence intervals from their standard error):

* the selected predictor's excess risk over the candidate of the prompt's true level (the oracle
  that knows sigma), and over the exact Bayes ridge of the true level (a closed-form solve on the
  same train split);
* how often the selection puts its weight on the true level's candidate;
* the mean slack ``gamma + 2 max_k |L_k - R_k|`` of the per-prompt bound that
  ``bai23-noise-selection`` checks.

    python benchmarks/noise_selection.py [--prompts 2000] [--d 5]
"""
from __future__ import annotations

import argparse

import numpy as np

from constructions.bai import bayes_lams, noise_mixture, ridge_select, select_split
from verify.knobs import stable_lr
from verify.prompts import PromptSpec
from verify.reference import RidgeSelect


def _chunk(n: int, d: int, B: int, steps: int, seed: int) -> dict:
    """Per-prompt arrays for one batch of B prompts."""
    X, y, Xq, w, sigma = noise_mixture(PromptSpec(B=B, n=n, d=d, seed=seed))
    n_train = select_split(n)
    lams = bayes_lams(d, n_train)
    lr = stable_lr(X[:, :n_train], 1.0, lams[-1])
    gamma = 1e-3 * float(np.mean(y**2))
    c = ridge_select(d, lams, steps, lr, n_train, n - n_train, gamma)
    w_sel = c.predict(X, y, Xq)
    ref = RidgeSelect(lams, steps, lr, n_train, gamma).fit(X, y)
    risk = lambda v: ((v - w) ** 2).sum(-1) + sigma**2  # noqa: E731
    R = np.stack([risk(ref.W_[-1][:, k]) for k in range(len(lams))], -1)
    true = np.array([lams.index(s * s * d / n_train) for s in sigma])  # each prompt's own level
    Xt, yt = X[:, :n_train], y[:, :n_train]
    A = Xt.transpose(0, 2, 1) @ Xt / n_train + np.array(lams)[true][:, None, None] * np.eye(d)
    bayes = np.linalg.solve(A, Xt.transpose(0, 2, 1) @ yt[..., None] / n_train)[..., 0]
    return dict(oracle=risk(w_sel) - R[np.arange(B), true], bayes=risk(w_sel) - risk(bayes),
                slack=gamma + 2 * np.abs(ref.losses_[-1] - R).max(-1),
                hit=ref.weights_[-1][np.arange(B), true] >= 0.5, bayes_risk=risk(bayes))


def row(n: int, d: int, prompts: int, steps: int = 60, chunk: int = 500) -> dict:
    parts = [_chunk(n, d, min(chunk, prompts - i), steps, seed=i) for i in range(0, prompts, chunk)]
    v = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    ci = lambda a: (float(a.mean()), float(1.96 * a.std(ddof=1) / np.sqrt(len(a))))  # noqa: E731
    return dict(n=n, d=d, prompts=prompts, oracle=ci(v["oracle"]), bayes=ci(v["bayes"]), hit=float(v["hit"].mean()),
                slack=float(v["slack"].mean()), bayes_risk=float(v["bayes_risk"].mean()))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prompts", type=int, default=2000)
    ap.add_argument("--d", type=int, default=5)
    a = ap.parse_args()
    print(f"noise levels {{0.1, 1}}, d = {a.d}, {a.prompts} prompts per row, 60/40 split, 60 GD steps, gamma = 1e-3 mean(y^2)")
    print("\n| n | Bayes risk of the true level | excess over the true level's candidate | excess over its exact Bayes ridge "
          "| true level selected | mean slack gamma + 2 max_k abs(L_k - R_k) |")
    print("|---|---|---|---|---|---|")
    for n in (20, 40, 80, 160):
        r = row(n, a.d, a.prompts)
        print(f"| {n} | {r['bayes_risk']:.4f} | {r['oracle'][0]:.4f} ± {r['oracle'][1]:.4f} | "
              f"{r['bayes'][0]:.4f} ± {r['bayes'][1]:.4f} | {100 * r['hit']:.1f}% | {r['slack']:.3f} |")


if __name__ == "__main__":
    main()
