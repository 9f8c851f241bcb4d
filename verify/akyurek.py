"""Akyurek et al. 2022's evidence from trained learners (arXiv 2211.15661, Sec. 4-5, Figs. 3-5,
App. E and H): which algorithm a trained transformer's predictions match, across depth, width and
noise (the *phase diagram*), and what its hidden states encode (*probes*).  ``icl-verify reproduce
akyurek22 [--quick]`` runs both (docs/training.md, "Akyurek et al.").

Notation: d input dim, N the longest context, k = 1..N a context length (a prefix), B prompts.
Tasks: x ~ N(0, I_d), w ~ N(0, I_d), y = w.x + sigma eps (Akyurek's setting).  The models are
:func:`verify.train.softmax_model` transformers trained with every context length
(``train(..., prefixes=True)``), so that one model predicts from every prefix, as the paper's
decoders do at every position.

Predictors compared at each k (their weights ``w(X, y)``, toolkit normalisation by k):

* ``GD``: one GD step from 0, ``lr X^T y / k``, its step tuned per k (:func:`verify.train.best_gd_lr`);
* ``ridge``: the Bayes ridge, ``(X^T X/k + (sigma^2/k) I)^{-1} X^T y/k``.  The paper's ridge loss
  ``sum_i (w.x_i - y_i)^2 + lam |w|^2`` is not divided by k, so its Bayes ``lam = sigma^2/tau^2``
  (tau = 1) is ``sigma^2 / k`` here;
* ``OLS``: min-norm least squares (for sigma = 0 it is the Bayes predictor, as ridge is).

Metrics (Akyurek et al.'s Sec. 4; the paper's text was not available when this was written, so the
definitions are ours as we read them): SPD, the mean squared prediction difference ``E (f(x) - g(x))^2`` on
fresh queries; ILWD, the mean squared distance ``E |w_f - w_g|^2`` of the *implicit linear
weights*, where a model's weight is the least-squares fit of its predictions on 2d probe queries
per prompt.
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from . import baselines
from .train import (TaskConfig, _figure, best_gd_lr, model_predictor, plot_lines, sample_tasks, save_checkpoint,
                    softmax_model, stream, train)

#: the runs: --quick (d = 4) and full (d = 8, the paper's d)
SETTINGS = {
    True: dict(d=4, depths=(1, 2, 3), noises=(0.0, 0.5), widths=(32,), width_depth=2, steps=500, batch=256,
               prompts=1000, probe_prompts=2000),
    False: dict(d=8, depths=(1, 2, 4, 8), noises=(0.0, 1.0), widths=(32, 64), width_depth=2,
                steps=2000, batch=256, prompts=4000, probe_prompts=8000),
}
#: the residual width of the phase diagram's models, and Adam's learning rate (cosine schedule)
WIDTH, LR = 16, 3e-3
PREDICTORS = ("GD", "ridge", "OLS")


def _gaussian(d: int, n: int, noise: float, w=None) -> TaskConfig:
    return TaskConfig(d=d, n=n, noise=noise, cov=tuple(tuple(float(i == j) for j in range(d)) for i in range(d)), w=w)


def _trained(d: int, N: int, layers: int, width: int, noise: float, S: dict, seed: int, w=None):
    """A softmax transformer trained on every context length 1..N (``w``: a fixed task weight)."""
    m = softmax_model(d, layers=layers, heads=2, mlp=64, seed=seed, width=width)
    train(m, _gaussian(d, N, noise, w), S["steps"], batch=S["batch"], lr=LR, seed=seed, prefixes=True,
          schedule="cosine")
    return m


def implicit_weights(f, X, y, gen: torch.Generator) -> torch.Tensor:
    """``[B, d]``: the least-squares linear fit of predictor ``f``'s outputs on 2d fresh probe
    queries per prompt (Akyurek's implicit linear weight)."""
    B, _, d = X.shape
    Xp = torch.randn(B, 2 * d, d, generator=gen, dtype=X.dtype)
    with torch.no_grad():
        out = f(X, y, Xp)
    return torch.linalg.lstsq(Xp, out[..., None]).solution[..., 0]


def algorithm_weights(name: str, X, y, noise: float, lr: float) -> torch.Tensor:
    """``[B, d]``: the weights of predictor ``name`` (:data:`PREDICTORS`) on the context ``X, y``."""
    k = X.shape[1]
    if name == "GD":
        return baselines.gd(X, y, 1, lr=lr)
    return baselines.ridge(X, y, noise**2 / k if name == "ridge" else 0.0)


def match(model, d: int, N: int, noise: float, prompts: int, seed: int) -> dict:
    """SPD and ILWD of ``model`` to each of :data:`PREDICTORS` at every context length k = 1..N:
    ``{"spd": {name: [N]}, "ilwd": {name: [N]}, "risk": {"model" or name: [N]}}``."""
    gen = torch.Generator().manual_seed(seed)
    f = model_predictor(model)
    out = {m: {p: np.zeros(N) for p in PREDICTORS} for m in ("spd", "ilwd")}
    out["risk"] = {p: np.zeros(N) for p in ("model", *PREDICTORS)}
    X, y, Xq, yq = sample_tasks(_gaussian(d, N, noise), prompts, gen)
    for k in range(1, N + 1):
        Xk, yk = X[:, :k], y[:, :k]
        lr = best_gd_lr(_gaussian(d, k, noise), 1, B=4000, seed=seed + k)[0]
        with torch.no_grad():
            pm = f(Xk, yk, Xq)
        wm = implicit_weights(f, Xk, yk, gen)
        out["risk"]["model"][k - 1] = float(((pm - yq) ** 2).mean())
        for p in PREDICTORS:
            w = algorithm_weights(p, Xk, yk, noise, lr)
            pa = baselines.predict(Xq, w)
            out["spd"][p][k - 1] = float(((pm - pa) ** 2).mean())
            out["ilwd"][p][k - 1] = float(((wm - w) ** 2).sum(-1).mean())
            out["risk"][p][k - 1] = float(((pa - yq) ** 2).mean())
    return out


def _hidden(model, X, y, Xq) -> torch.Tensor:
    """``[L + 1, B, T, D]``: every token's residual stream after every block (input first; the query
    token last)."""
    with torch.no_grad():
        return model.residuals(stream(model, X, y, Xq), X.shape[1])


def probe_error(H: torch.Tensor, target: torch.Tensor, kind: str = "linear", seed: int = 0,
                rows: str = "test") -> float:
    """Test mean squared error (per coordinate) of a probe from features ``H [B, D]`` to ``target
    [B, d]``, trained on the first 3/4 of the rows and tested on the rest: ``"linear"`` (least
    squares with a bias, closed form) or ``"mlp"`` (one hidden layer of 64 ReLUs, Adam), both on one
    token's state ``[B, D]``; or ``"attention"`` on every token's state ``H [B, T, D]``: a learned
    query scores each position, the softmax-weighted mean of the states goes through a linear map
    (Adam), so the probe can read a code spread over the context tokens.  ``rows="train"``: the
    error on the rows it was fitted on instead."""
    H, target = H.double(), target.double()
    cut = 3 * len(H) // 4
    flat = H.reshape(-1, H.shape[-1])[: cut * (H.shape[1] if H.ndim == 3 else 1)]
    mu, sd = flat.mean(0), flat.std(0).clamp_min(1e-12)
    Z = (H - mu) / sd
    r = slice(None, cut) if rows == "train" else slice(cut, None)
    if kind == "attention":
        return _attention_probe(Z, target, cut, r, seed)
    if kind == "linear":
        A = torch.cat([Z, torch.ones_like(Z[:, :1])], 1)
        W = torch.linalg.lstsq(A[:cut], target[:cut], driver="gelsd").solution  # SVD: features may be rank-deficient
        return float(((A[r] @ W - target[r]) ** 2).mean())
    g = torch.Generator().manual_seed(seed)
    D, d = Z.shape[1], target.shape[1]
    W1, W2 = (torch.randn(D, 64, generator=g, dtype=H.dtype) / D**0.5).requires_grad_(), \
        (torch.randn(64, d, generator=g, dtype=H.dtype) / 8).requires_grad_()
    b1, b2 = torch.zeros(64, dtype=H.dtype, requires_grad=True), torch.zeros(d, dtype=H.dtype, requires_grad=True)
    opt = torch.optim.Adam([W1, W2, b1, b2], lr=1e-2)
    net = lambda z: torch.relu(z @ W1 + b1) @ W2 + b2  # noqa: E731
    for _ in range(500):
        opt.zero_grad()
        loss = ((net(Z[:cut]) - target[:cut]) ** 2).mean()
        loss.backward()
        opt.step()
    with torch.no_grad():
        return float(((net(Z[r]) - target[r]) ** 2).mean())


def _attention_probe(Z: torch.Tensor, target: torch.Tensor, cut: int, r: slice, seed: int) -> float:
    """:func:`probe_error`'s ``"attention"`` probe on standardised states ``Z [B, T, D]``."""
    g = torch.Generator().manual_seed(seed)
    D, d = Z.shape[-1], target.shape[1]
    q = torch.zeros(D, dtype=Z.dtype, requires_grad=True)  # uniform weights at the start: the mean over positions
    W = (torch.randn(D, d, generator=g, dtype=Z.dtype) / D**0.5).requires_grad_()
    b = torch.zeros(d, dtype=Z.dtype, requires_grad=True)
    opt = torch.optim.Adam([q, W, b], lr=1e-2)
    net = lambda z: (torch.softmax(z @ q, -1)[..., None] * z).sum(-2) @ W + b  # noqa: E731
    for _ in range(500):
        opt.zero_grad()
        loss = ((net(Z[:cut]) - target[:cut]) ** 2).mean()
        loss.backward()
        opt.step()
    with torch.no_grad():
        return float(((net(Z[r]) - target[r]) ** 2).mean())


def probe_targets(X, y) -> dict:
    """The probes' targets: ``w_OLS`` (min-norm least squares) and the moment ``X^T y / k``."""
    return {"w_OLS": baselines.ridge(X, y, 0.0), "X^T y/k": (X.transpose(1, 2) @ y[..., None])[..., 0] / X.shape[1]}


def probes(models: dict, d: int, N: int, prompts: int, seed: int, noise: float = 0.0) -> dict:
    """Linear and MLP probe errors on every layer of each model of ``{label: model}`` at context
    length N, for each target of :func:`probe_targets`, on the same fresh prompts (w ~ N(0, I)):
    ``{(target, probe, label): [L + 1]}``."""
    X, y, Xq, _ = sample_tasks(_gaussian(d, N, noise), prompts, torch.Generator().manual_seed(seed))
    out = {}
    for label, model in models.items():
        H = _hidden(model, X, y, Xq)
        for name, t in probe_targets(X, y).items():
            for kind in ("linear", "mlp", "attention"):
                out[(name, kind, label)] = [probe_error(h if kind == "attention" else h[:, -1], t, kind, seed) for h in H]
    return out


def construction_probes(d: int, N: int, steps: int, prompts: int, seed: int) -> dict:
    """The sanity bound for the probes: on :func:`constructions.relu_gd` (GD, ``steps`` layers),
    the linear probe's error for w_OLS at every layer, beside the error of the iterate its ``w``
    slot holds there (``read_slot``, exact), on the test rows (``probe``, ``slot``) and on the rows
    the probe was fitted on (``probe_train``, ``slot_train``).  Reading the slot is one of the linear
    maps the probe's least squares chooses from, so on its fitting rows the probe's error is at most
    the slot's (up to round-off); on the test rows that is expected, not guaranteed."""
    import constructions
    from constructions.bai import score_bound

    gen = torch.Generator().manual_seed(seed)
    X, y, Xq, _ = sample_tasks(_gaussian(d, N, 0.0), prompts, gen)
    lr = float(1.0 / torch.linalg.eigvalsh(X.transpose(1, 2) @ X / N)[:, -1].max())
    c = constructions.relu_gd(d, steps, lr, mask_const=float(score_bound(X, y, Xq, 0.0).max()) * 2)
    target = baselines.ridge(X, y, 0.0)
    H = torch.as_tensor(c.residuals(X, y, Xq))[: steps + 1, :, -1]  # the query token after each step layer
    slot = torch.as_tensor(c.read_slot(X, y, Xq, "w"))[:, :, -1]  # [S+1, B, d]
    cut = 3 * prompts // 4
    return dict(probe=[probe_error(h, target) for h in H],
                slot=[float(((s[cut:] - target[cut:]) ** 2).mean()) for s in slot],
                probe_train=[probe_error(h, target, rows="train") for h in H],
                slot_train=[float(((s[:cut] - target[:cut]) ** 2).mean()) for s in slot])


def _heatmap(path, grid: np.ndarray, labels: np.ndarray, rows, cols, title: str, xlabel: str, ylabel: str) -> Path:
    """A heat map of the best-matching predictor (colour) with its SPD (text) per cell."""
    from matplotlib.colors import ListedColormap
    from matplotlib.patches import Patch

    fig = _figure()
    ax = fig.add_subplot()
    colours = ["tab:orange", "tab:blue", "tab:green"]
    ax.imshow(labels, cmap=ListedColormap(colours), vmin=-0.5, vmax=len(PREDICTORS) - 0.5, aspect="auto")
    for i in range(labels.shape[0]):
        for j in range(labels.shape[1]):
            ax.text(j, i, f"{PREDICTORS[labels[i, j]]}\n{grid[i, j]:.3g}", ha="center", va="center", fontsize=8)
    ax.set_xticks(range(len(cols)), [str(c) for c in cols])
    ax.set_yticks(range(len(rows)), [str(r) for r in rows])
    ax.set(title=title, xlabel=xlabel, ylabel=ylabel)
    ax.legend(handles=[Patch(color=c, label=f"closest: {p}") for c, p in zip(colours, PREDICTORS)], fontsize=7,
              loc="upper right")
    fig.tight_layout()
    fig.savefig(path)
    return Path(path)


def reproduce_akyurek(quick: bool = False, out: str = "reproduce-akyurek22", seed: int = 0) -> str:
    """Train softmax transformers of several depths (and widths) at several noise levels, match each
    against GD, ridge and OLS by SPD and ILWD at every context length, probe one model's layers for
    w_OLS and X^T y, and set the same probe on a hand-set construction; returns the report and writes
    PNG plots and a checkpoint into ``out``."""
    _figure()  # matplotlib is needed for the plots: say so before minutes of training
    t0 = time.perf_counter()
    S = SETTINGS[quick]
    d, N = S["d"], 2 * S["d"]
    outdir = Path(out)
    outdir.mkdir(parents=True, exist_ok=True)
    lines = [f"Akyurek et al. 2022, trained learners: d = {d}, contexts of k = 1..{N} examples, x ~ N(0, I), w ~ N(0, I); "
             f"softmax transformers (2 heads, ReLU MLP 64, residual width {WIDTH} unless stated), Adam lr {LR:g} (cosine), batch "
             f"{S['batch']}, {S['steps']} steps, every context length; {S['prompts']} test prompts, seed {seed} "
             f"({'--quick' if quick else 'full'}). SPD and ILWD averaged over k; bold = the closest predictor.", "",
             "Paper (Sec. 4, Fig. 3, App. H): learners move from GD towards ridge and OLS as depth and width grow, "
             "and with noise the closest predictor is the Bayes ridge.", ""]
    rows = ["| depth | width | sigma | SPD to GD | SPD to ridge | SPD to OLS | ILWD to GD | ILWD to ridge | ILWD to OLS "
            "| model risk at k = N | ridge risk at k = N |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    best = np.zeros((len(S["depths"]), len(S["noises"])), dtype=int)
    best_spd = np.zeros(best.shape)
    curves, kept = {}, None
    runs = [(L, WIDTH, s) for L in S["depths"] for s in S["noises"]]
    runs += [(S["width_depth"], w, S["noises"][0]) for w in S["widths"] if (S["width_depth"], w, S["noises"][0]) not in runs]
    for L, width, sigma in runs:
        task = _gaussian(d, N, sigma)
        m = _trained(d, N, L, width, sigma, S, seed)
        r = match(m, d, N, sigma, S["prompts"], seed + 1)
        spd = [float(r["spd"][p].mean()) for p in PREDICTORS]
        ilwd = [float(r["ilwd"][p].mean()) for p in PREDICTORS]
        b = int(np.argmin(spd))
        cells = [f"**{v:.4f}**" if i == b else f"{v:.4f}" for i, v in enumerate(spd)]
        cells += [f"**{v:.4f}**" if i == int(np.argmin(ilwd)) else f"{v:.4f}" for i, v in enumerate(ilwd)]
        rows.append(f"| {L} | {width} | {sigma:g} | " + " | ".join(cells)
                    + f" | {r['risk']['model'][-1]:.4f} | {r['risk']['ridge'][-1]:.4f} |")
        if width == WIDTH and L in S["depths"] and sigma in S["noises"]:
            i, j = S["depths"].index(L), S["noises"].index(sigma)
            best[i, j], best_spd[i, j] = b, spd[b]
            if sigma == S["noises"][0]:
                curves[f"depth {L}: SPD to OLS"] = r["spd"]["OLS"]
                curves[f"depth {L}: SPD to GD"] = r["spd"]["GD"]
        if width == WIDTH and sigma == S["noises"][0] and L == max(S["depths"]):
            kept = (m, task)
    lines += ["Phase diagram:", "", *rows, ""]
    _heatmap(outdir / "phase_diagram.png", best_spd, best, S["depths"], S["noises"],
             f"Closest predictor (d = {d}, SPD averaged over k = 1..{N})", "noise sigma",
             "depth (layers)")
    plot_lines(outdir / "spd_vs_examples.png", curves, f"SPD of trained transformers to OLS and GD (d = {d}, "
               f"sigma = {S['noises'][0]:g})", "context length k (examples)", "SPD, mean squared prediction difference",
               x=np.arange(1, N + 1))
    model, task = kept
    save_checkpoint(model, outdir / "akyurek22.safetensors", task, overwrite=True, steps=S["steps"], seed=seed, lr=LR,
                    batch=S["batch"], prefixes=True, schedule="cosine")
    control = _trained(d, N, model.n_layers, WIDTH, 0.0, S, seed, w=(1.0,) * d)  # the control task: w = 1 fixed
    pr = probes({"task": model, "control": control}, d, N, S["probe_prompts"], seed + 2)
    L = model.n_layers
    head = "| target | probe | model | " + " | ".join(f"layer {l}" for l in range(L + 1)) + " |"
    prow = [head, "|" + "---|" * (L + 4)]
    for (name, kind, t), v in pr.items():
        prow.append(f"| {name} | {kind} | {t} | " + " | ".join(f"{e:.4f}" for e in v) + " |")
    cp = construction_probes(d, N, L, S["probe_prompts"], seed + 3)
    crow = ["| relu_gd (hand-set, GD) | " + " | ".join(f"layer {l}" for l in range(L + 1)) + " |", "|" + "---|" * (L + 2),
            "| linear probe for w_OLS, test MSE | " + " | ".join(f"{e:.4f}" for e in cp["probe"]) + " |",
            "| its w slot (read_slot) vs w_OLS, MSE | " + " | ".join(f"{e:.4f}" for e in cp["slot"]) + " |"]
    lines += [f"Probes on the depth-{L} model (sigma = {S['noises'][0]:g}, k = {N}): test MSE per coordinate of the query "
              f"token's hidden state after each block (layer 0 = the input) to the target (attention: of every token's, "
              f"pooled by a learned query), on fresh prompts; control = "
              "the same architecture trained as long on the paper's control task (w = 1 in every prompt, so it never "
              "needs the target), probed on the same prompts. Paper (Figs. 4-5): w_OLS and X^T y are decodable from "
              "the late layers, better than on the control.", "", *prow, "",
              "The same linear probe on a hand-set construction, where the answer sits in a slot (a sanity bound: "
              "the probe can read the slot, so it should do at least as well):", "", *crow, ""]
    series = {f"{name}, {kind} probe" + (", control model" if t == "control" else ""): v
              for (name, kind, t), v in pr.items()}
    series["relu_gd: linear probe for w_OLS"] = cp["probe"]
    plot_lines(outdir / "probes.png", series, f"Probe error per layer (depth-{L} transformer, d = {d}, k = {N})",
               "layer (0 = input)", "test MSE per coordinate", x=np.arange(L + 1))
    lines += [f"plots: {outdir / 'phase_diagram.png'}, {outdir / 'spd_vs_examples.png'}, {outdir / 'probes.png'}; "
              f"checkpoint {outdir / 'akyurek22.safetensors'} (verify.train.load_trained); "
              f"total {time.perf_counter() - t0:.0f} s"]
    return "\n".join(lines)

