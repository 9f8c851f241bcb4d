"""Measure the softmax-regression bounds and Akyurek's primitives' error rates and numeric
limits; write the tables of docs/softmax_regression.md and docs/akyurek.md.

    python benchmarks/softmax_and_raw.py            # ~5 s on 2 cores; rewrites the four tables

Tables go between the ``<!-- measured -->`` markers of each page, and the SGD pass's between
the ``<!-- sgd-pass -->`` and ``<!-- thm2-raw -->`` markers of docs/akyurek.md.
"""
from __future__ import annotations

import re
import sys
from pathlib import Path

import numpy as np
import torch

from constructions import raw as akyurek
from constructions import softmax_regression as sr
from constructions.raw import RawConfig, raw_gd
from verify.knobs import KNOB_RANGES, Knobs
from verify.prompts import PromptSpec, make_prompt

DOCS = Path(__file__).resolve().parent.parent / "docs"


def _ratio(cmp, k: int) -> float:
    """The largest measured / bound of column k of a claim check's Comparison."""
    return float((cmp.model[0][:, k] / cmp.tol[0][:, k]).max())


def softmax_table(prompts: int = 300) -> str:
    rng = np.random.default_rng(0)
    worst = dict(shift_ours=0.0, shift_li=0.0, lip=0.0, hess=0.0, resc_grad=0.0, resc_hess=0.0, resc_lip=0.0,
                 mat_hess=0.0, label=0.0, label_resc=0.0, data2=0.0, data2_resc=0.0, data=0.0, data_li=0.0)
    for _ in range(prompts):
        spec = PromptSpec.sample(rng, n=(2, 16), d=(1, 6))
        k = Knobs.sample(rng)
        p = make_prompt(spec)
        A, b, x = sr._instance(p, k)
        x1 = x - 10.0**k.log10_eta * sr.grad(A, b, x)
        shift = torch.linalg.vector_norm(torch.softmax(sr._mv(A, x1), -1) - torch.softmax(sr._mv(A, x), -1), dim=-1)
        dx = torch.linalg.vector_norm(x1 - x, dim=-1)
        worst["shift_ours"] = max(worst["shift_ours"], float((shift / (sr.softmax_lipschitz(A) * dx)).max()))
        worst["shift_li"] = max(worst["shift_li"], float((shift / (sr.li_constant(A.shape[-2], k.R) * dx)).max()))
        cmp = sr.check_lipschitz(p, k)
        r = cmp.model[0] / (cmp.tol[0])
        worst["lip"] = max(worst["lip"], float(r[:, 0].max()))
        worst["hess"] = max(worst["hess"], float(r[:, 1].max()))
        cmp = sr.check_rescaled(p, k)
        for key, col in (("resc_grad", 2), ("resc_hess", 3), ("resc_lip", 4)):
            worst[key] = max(worst[key], _ratio(cmp, col))
        worst["mat_hess"] = max(worst["mat_hess"], _ratio(sr.check_matrix_hessian(p, k), 1))
        cmp = sr.check_matrix_closeness(p, k)
        for key, col in (("label", 3), ("data2", 4), ("label_resc", 8), ("data2_resc", 9)):
            worst[key] = max(worst[key], _ratio(cmp, col))
        cmp = sr.check_data_shift(p, k)
        worst["data"] = max(worst["data"], _ratio(cmp, 2))
        A, b, x = sr._instance(p, k)
        dA = 10.0**k.log10_eta * torch.linalg.matrix_norm(sr.data_grad(A, b, x), 2)
        worst["data_li"] = max(worst["data_li"], float((cmp.model[0][:, 2] / (sr.li_constant(A.shape[-2], k.R) * dA.numpy())).max()))
    return "\n".join([
        f"Largest measured ratio over {prompts} random instances (n in 2..16, d in 1..6, R in "
        f"{KNOB_RANGES['R']}, eta in 10^{KNOB_RANGES['log10_eta']}):",
        "",
        "| bound | constant | largest measured / bound |",
        "|---|---|---|",
        f"| label shift ‖b~ − b‖ ≤ L‖x' − x‖ (Li et al.) | ours: L = ‖A‖/2 | {worst['shift_ours']:.3f} |",
        f"| same | Li et al.: M = n^1.5 exp(10 R²) | {worst['shift_li']:.2e} |",
        f"| row softmax in X (Gao et al.) | ours: ‖A1‖‖A2‖/2 | {worst['lip']:.3f} |",
        f"| ‖Hess L_exp‖ | ours: ‖A‖² (5/2 + 3‖b‖/2) | {worst['hess']:.3f} |",
        f"| ‖∇L_resc‖ (Gao et al.) | ours: R E (1 + √n‖b‖)(√n + n‖b‖), E = exp(R²) | {worst['resc_grad']:.2e} |",
        f"| ‖Hess L_resc‖ | ours: R² E² ((1 + √n‖b‖)² + 1 + n‖b‖ + ‖b‖(√n + n‖b‖)) | {worst['resc_hess']:.2e} |",
        f"| ∇L_resc Lipschitz on the sphere | ours: the Hessian bound | {worst['resc_lip']:.2e} |",
        f"| ‖Hess L_att‖ in vec(X) (Gao et al.) | ours: ‖A1‖²‖A2‖² max_j (5/2 + 3‖B_j‖/2) | {worst['mat_hess']:.3f} |",
        f"| label shift ‖B~ − B‖_F, normalised step | ours: ‖A1‖‖A2‖‖X' − X‖_F/2 | {worst['label']:.3f} |",
        f"| same, rescaled step | same | {worst['label_resc']:.3f} |",
        f"| data shift ‖A2' − A2‖_F, normalised step | ours: ‖A2‖‖X⁻¹‖‖X' − X‖_F | {worst['data2']:.3f} |",
        f"| same, rescaled step | same | {worst['data2_resc']:.3f} |",
        f"| data step: ‖b~ − b‖ ≤ L‖A' − A‖ (Li et al.) | ours: L = ‖x‖/2 | {worst['data']:.3f} |",
        f"| same | Li et al.: M = n^1.5 exp(10 R²) | {worst['data_li']:.2e} |",
    ])


def raw_table() -> str:
    rows = ["| knob | value | float64 error | float32 error |", "|---|---|---|---|"]
    rng = np.random.default_rng(0)
    d = 3
    x1, x2 = rng.normal(size=(1, d)) * 0.5, rng.normal(size=(1, d)) * 0.5
    y1, w0 = np.array([0.3]), rng.normal(size=d) * 0.5
    lr, lam = 0.1, 0.05
    ref = (w0 - 2 * lr * (x1[0] * (w0 @ x1[0] - y1[0]) + lam * w0)) @ x2[0]
    for s in (1e-1, 1e-2, 1e-3, 1e-4):
        c = raw_gd(d, w0, lr, lam, RawConfig(mul_scale=s))
        e64 = abs(c.predict(x1, y1, x2)[0] - ref)
        e32 = abs(c.to(torch.float32).predict(x1, y1, x2)[0] - ref)
        rows.append(f"| raw_gd: mul scale s | {s:g} | {e64:.2e} | {e32:.2e} |")
    # single primitives on fixed operands (k = 2), each knob swept with the others tight
    lay = akyurek.primitive_layout(2)
    h = np.zeros((1, 3, lay.width))
    h[0, :, lay["a"].index] = [[0.7, -0.4], [0.2, 0.9], [-0.5, 0.3]]
    h[0, :, lay["b"].index] = [[0.1, 0.5], [-0.3, 0.6], [0.8, -0.2]]
    h[0, :, lay["c"].start] = [-1.3, 0.45, 0.6]
    h[0, :, lay["pos"].index] = np.eye(3)
    sweeps = [("mov", "attn_gap", "N", (10, 20, 40)), ("aff", "passthrough", "P", (2, 4, 8)),
              ("mul", "mul_scale", "s", (1e-1, 1e-2, 1e-3, 1e-4)), ("div", "ln_pad", "M", (1e1, 1e2, 1e3, 1e4, 1e6))]
    for name, field, sym, values in sweeps:
        for v in values:
            cfg = RawConfig(**{field: v})
            e64 = akyurek.primitive_errors(h, cfg, 2)[name][0][0]
            e32 = akyurek.primitive_errors(h, cfg, 2, dtype=torch.float32)[name][0][0]
            rows.append(f"| {name}: {sym} | {v:g} | {e64:.2e} | {e32:.2e} |")
    return "\n".join(rows)


def sgd_table() -> str:
    """raw_sgd's error after the last exemplar against its predicted accumulated ``s^2 K_n``."""
    rows = ["| n | s | float64 error | error / (s² K_n) | deviation / remainder bound | float32 error |",
            "|---|---|---|---|---|---|"]
    rng = np.random.default_rng(0)
    d, lr, lam = 3, 0.2, 0.05
    w0 = rng.normal(size=d) * 0.3
    for n in (1, 5, 10, 20):
        X = np.tanh(rng.normal(size=(1, n, d))) * 0.5
        y, xq = np.tanh(rng.normal(size=(1, n))), np.tanh(rng.normal(size=(1, d))) * 0.5
        for s, (err, pred, rem) in zip(akyurek.SGD_SCALES, akyurek.sgd_pass_errors(X, y, xq, w0, lr, lam)):
            c32 = akyurek.raw_sgd(d, n, lr, lam, w0, RawConfig(mul_scale=s)).to(torch.float32)
            e32 = abs(c32.predict(X, y, xq[:, None])[0, 0] - akyurek.sgd_pass(X, y, w0, lr, lam)[0][0, -1] @ xq[0])
            e, p, r = err[0, -1], pred[0, -1], rem[0, -1]
            rows.append(f"| {n} | {s:g} | {abs(e):.2e} | {e / p:.6f} | {abs(e - p) / r:.2g} | {e32:.2e} |")
    return "\n".join(rows)


def ridge_table() -> str:
    """raw_ridge's error against its predicted first-order term, over the two knobs."""
    rows = ["| s | M | float64 error | predicted | (error − predicted) / predicted | mul part | div part |",
            "|---|---|---|---|---|---|---|"]
    rng = np.random.default_rng(1)
    d, lam = 3, 0.5
    x1, x2 = np.tanh(rng.normal(size=(1, d))) * 0.5, np.tanh(rng.normal(size=(1, d))) * 0.5
    y1 = np.tanh(rng.normal(size=1))
    exact = akyurek.ridge_raw_emulate(x1, y1, x2, lam)
    for s, M in ((1e-2, 1e4), (1e-3, 1e4), (1e-4, 1e4), (1e-3, 1e2), (1e-3, 1e3), (1e-3, 1e5), (1e-3, 1e6)):
        err, pred = (v[0, 0] for v in akyurek.ridge_raw_errors(x1, y1, x2, lam, ((s, M),)))
        ms = akyurek.ridge_raw_emulate(x1, y1, x2, lam, s=s)[0] - exact[0]
        dv = akyurek.ridge_raw_emulate(x1, y1, x2, lam, M=M)[0] - exact[0]
        rows.append(f"| {s:g} | {M:g} | {err:.3e} | {pred:.3e} | {(err - pred) / pred:.1e} | {ms:.2e} | {dv:.2e} |")
    return "\n".join(rows)


def _write(page: Path, table: str) -> None:
    text = page.read_text()
    new = re.sub(r"(<!-- measured -->\n).*?(<!-- /measured -->)", lambda m: m.group(1) + table + "\n" + m.group(2),
                 text, flags=re.S)
    page.write_text(new)
    print(f"wrote {page}")


if __name__ == "__main__":
    torch.set_num_threads(max(1, torch.get_num_threads()))
    _write(DOCS / "softmax_regression.md", softmax_table())
    _write(DOCS / "akyurek.md", raw_table())
    from verify.docs import write_table

    sys.exit(write_table(DOCS / "akyurek.md", "<!-- sgd-pass -->", "<!-- /sgd-pass -->", sgd_table())
             or write_table(DOCS / "akyurek.md", "<!-- thm2-raw -->", "<!-- /thm2-raw -->", ridge_table()))
