"""Symbolic proofs (sympy) that one layer of a construction is one step of its algorithm.

Notation: d input dim and n context examples are *symbols* (any positive
integers); tokens are columns here, a token group is a ``[D, count]`` block of
the residual stream (``count`` = n context tokens, 1 query, d ridge tokens).

How a proof reads the construction (not a second copy of its weights):

1. *Lift.*  The construction is built at a concrete ``d`` (3, then 4), each
   head's folded circuits ``QK = W_Q W_K^T`` and ``OV = W_V W_O``
   (:meth:`constructions.construction.Construction.circuits`) are cut into slot
   blocks, and every block is recognised as ``c I_d``, ``c P`` / ``c P^T`` for a
   named parameter matrix P, or a scalar ``c`` (a 1x1 block), with ``c`` the
   exact rational value of the stored float.  A block of any other form, or a
   form that differs between d = 3 and d = 4, makes the proof fail ("not
   liftable").  A perturbed weight therefore changes a coefficient (the
   identity then fails) or breaks a form (the lift fails).
2. *Induction step.*  The proof states the algorithm's state at step t as
   symbolic token groups (``MatrixSymbol`` X ``[d, n]``, y ``[1, n]``, the
   iterate W ``[1, d]``, ...), applies the lifted layer to them with matrix
   algebra, and checks that the result is the state at step t + 1 (every slot
   difference simplifies to the zero matrix).  Layers with ReLU attention are
   handled per (query group, key group): the constant-slot parts of the score are
   numbers there, the gate ``B gate_j`` (a slot holding different constants in
   different groups) and an offset beta (``one``).  A gate < 0 drops the head under
   the premise ``z + beta <= -gate`` (the construction's domain check); a sign-split
   pair with beta = 0 gives ``relu(z) - relu(-z) = z`` (:func:`lemma_sign_split`);
   a head with no linear score part contributes ``relu(gate + beta)``; any other
   head applies ``relu(. + beta)`` to every entry of its score matrix
   (:class:`Entrywise`), and :func:`is_zero` sums the maps of equal score matrices,
   which must add up to an affine map (e.g. a sum-of-ReLU sigmoid minus the
   algorithm's own statement of it).
3. *Base case.*  The state at step 0 equals the embedding's slot fills (read
   from the layout), after the lifted prefix blocks if the construction has any,
   and the readout blocks map the state to ``x_q . w``.

Causal heads (``"strict"``, ``True``, ``"self"``) multiply the context's scores entry by entry
by a mask and divide by each token's key count (:data:`CAUSAL`, :func:`_seen`, :func:`_divisor`).

A block's MLP is lifted when it is coordinatewise (:func:`lift_mlp`): families of d ReLU
units, unit i reading and writing coordinate i of one slot, so the MLP applies a scalar
piecewise-affine map to every entry; it is compared with the algorithm's scalar map on all of
R (:func:`pointwise_equal`).

Together these prove the claim for every d, n and number of layers.  Claims
outside this fragment (other MLPs, null scores or position-gated attention, reciprocal
iterations) get an
*exact-rational* check instead (:mod:`verify.exact`): the construction's own
forward pass in ``fractions.Fraction`` arithmetic equals the algorithm exactly
at concrete sizes on random rational prompts (Schwartz-Zippel: a wrong
polynomial identity survives a random point with small probability).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from fractions import Fraction
from typing import Callable

import numpy as np
import sympy as sp
from sympy.matrices.expressions.applyfunc import ElementwiseApplyFunction

from constructions.errors import ConstructionError
from constructions.layout import ROLE_FILLS

from .claims import Outcome
from .tolerance import C, eps

d, n = sp.symbols("d n", integer=True, positive=True)
LIFT_DIMS = (3, 4)  # the builder is lifted at these d; both must give the same block form
#: the factory's weights are compared, exactly, with the lifted form instantiated at every d here
CHECK_DIMS = tuple(range(1, 9))
#: the numeric anchor of each proved layer: a random rational point at these sizes
ANCHOR_D, ANCHOR_N = 3, 4

#: a *split* context (Bai et al.'s post-ICL validation): the first n_1 of the n examples train, the
#: other n - n_1 validate; the inputs of the two parts are X_1, Y_1 and X_2, Y_2
N1 = sp.Symbol("n_1", integer=True, positive=True)
#: a split construction's weights may depend on its sizes through the split scales n/n_1 and
#: n/(n - n_1) (value matrices turning the attention's 1/n into split means): each coefficient is
#: fitted as ``alpha + beta n/n_1 + gamma n/(n - n_1)`` from the builds at these (n_train, n_val)
#: (:func:`lift_layer`), then checked exactly at every d in :data:`CHECK_DIMS` and every split here
#: and in :data:`SPLIT_CHECK`
#: (splits whose scales are exact floats: n_train/n_val a power of 2, so that the lift reads the
#: scales themselves and not their roundings)
SPLIT_LIFT = ((1, 1), (2, 1), (1, 2))
SPLIT_CHECK = ((4, 1), (1, 4), (4, 2), (2, 8))
#: the split of the numeric anchor's n = 6 examples
ANCHOR_SPLIT = (4, 2)
SPLIT_SCALES = (n / N1, n / (n - N1))


class NotLiftable(Exception):
    """A weight block has no symbolic form (or differs between the lift dimensions)."""


def exact(v) -> sp.Rational:
    """The exact rational value of a float (no rounding)."""
    return sp.Rational(*Fraction(float(v)).as_integer_ratio())


#: the scalar variable of the entrywise functions (:class:`Entrywise`)
Z = sp.Symbol("z", real=True)


#: :meth:`Entrywise.doit`'s results (bounded: cleared when it grows past 10^5 entries)
_DOIT: dict = {}


class Entrywise(ElementwiseApplyFunction):
    """A scalar function applied to every entry of a matrix expression, kept unevaluated for every
    shape (sympy's own class calls the function on a 1x1 matrix, which ``Max`` cannot take)."""

    def __new__(cls, function, expr):
        if not isinstance(function, sp.Lambda):
            function = sp.Lambda(Z, function(Z))
        return sp.MatrixExpr.__new__(cls, function, sp.sympify(expr))

    def doit(self, **hints):
        key = (self, tuple(sorted(hints.items())))
        if len(_DOIT) > 100_000:
            _DOIT.clear()
        if key not in _DOIT:  # expressions are immutable: nested maps are evaluated once, not once per level
            expr = self.expr.doit(**hints) if hints.get("deep", True) else self.expr
            if isinstance(expr, sp.MatrixBase):
                _DOIT[key] = expr.applyfunc(self.function)
            elif isinstance(expr, ElementwiseApplyFunction):
                _DOIT[key] = Entrywise(sp.Lambda(Z, self.function(expr.function(Z))), expr.expr)
            else:
                _DOIT[key] = Entrywise(self.function, expr)
        return _DOIT[key]

    def _eval_transpose(self):
        return Entrywise(self.function, sp.transpose(self.expr))


# -- 1. lifting -----------------------------------------------------------------------
def _lift_block(B: np.ndarray, rows, cols, named: dict) -> sp.MatrixExpr | None:
    if not np.any(B):
        return None
    if B.shape == (1, 1):
        return exact(B[0, 0]) * sp.Identity(1)
    if B.shape[0] == B.shape[1] and rows == cols == d:
        c = B[0, 0]
        if np.array_equal(B, c * np.eye(B.shape[0])) and c != 0:
            return exact(c) * sp.Identity(d)
        for sym, M in named.items():
            for form, target in ((sym, M), (sym.T, M.T)):
                i = np.flatnonzero(target)[:1]
                if i.size and B.flat[i[0]] != 0:
                    c = B.flat[i[0]] / target.flat[i[0]]
                    if np.array_equal(B, c * target):
                        return exact(c) * form
    raise NotLiftable(f"a weight block of shape {B.shape} is not c*I, c*P or c*P^T")


def _slot_size(slot, dd: int):
    if slot.size == dd:
        return d
    if slot.size == 1:
        return 1
    raise NotLiftable(f"slot {slot.name!r} has size {slot.size}: only d and 1 lift")


@dataclass
class LiftedBlock:
    """A block in symbolic form: its attention heads (:func:`lift_layer`) and, if it has one, its
    coordinatewise MLP as unit families (:func:`lift_mlp`)."""

    heads: list
    mlp: list | None = None


def _lift_heads(build: Callable[[int], object], layer: int, named: Callable[[int], dict] | None) -> list[dict]:
    """Block ``layer``'s heads in symbolic form, the same at every d in :data:`LIFT_DIMS`."""
    lifted = []
    for dd in LIFT_DIMS:
        c = build(dd)
        nm = named(dd) if named else {}
        blk = c.blocks[layer]
        if blk.attn is None:
            lifted.append([])
            continue
        if blk.attn.null_score is not None:
            raise NotLiftable(f"block {layer} has a null score (outside the symbolic fragment)")
        sizes = {s.name: _slot_size(s, dd) for s in c.layout.slots}
        heads = []
        for circ in c.circuits(layer):
            heads.append(dict(kind=blk.attn.kind, causal=blk.attn.causal, divisor=blk.attn.divisor, **{
                k: {ab: e for ab, B in circ[k].items()
                    if (e := _lift_block(B, sizes[ab[0]], sizes[ab[1]], nm)) is not None}
                for k in ("QK", "OV")}))
        lifted.append(heads)
    if any(str(h) != str(lifted[0]) for h in lifted[1:]):
        raise NotLiftable(f"block {layer} has different block forms at d = {LIFT_DIMS}")
    return lifted[0]


def _fit_split(per: list[list[dict]], layer: int) -> list[dict]:
    """The heads lifted at the splits :data:`SPLIT_LIFT` (one list per split) as one form whose
    coefficients are ``alpha + beta n/n_1 + gamma n/(n - n_1)`` (:data:`SPLIT_SCALES`), solved
    exactly from the three builds.  The heads, their kinds and every block's matrix part must agree."""
    if any(len(h) != len(per[0]) for h in per) or any(
            (a["kind"], a["causal"], a["divisor"]) != (b["kind"], b["causal"], b["divisor"])
            for h in per for a, b in zip(h, per[0])):
        raise NotLiftable(f"block {layer} has other heads at other splits")
    rows = sp.Matrix([[1, *(sp.Rational(ntr + nv, m) for m in (ntr, nv))] for ntr, nv in SPLIT_LIFT])
    out = []
    for i, h0 in enumerate(per[0]):
        head = dict(kind=h0["kind"], causal=h0["causal"], divisor=h0["divisor"])
        for k in ("QK", "OV"):
            blocks = {}
            for ab in sorted({ab for h in per for ab in h[i][k]}, key=str):
                parts = [h[i][k][ab].as_coeff_mmul() if ab in h[i][k] else (sp.Integer(0), None) for h in per]
                forms = {str(m) for _, m in parts if m is not None}
                if len(forms) != 1:
                    raise NotLiftable(f"block {layer}: the {k} block {ab} has other forms at other splits")
                form = next(m for _, m in parts if m is not None)
                alpha, beta, gamma = rows.LUsolve(sp.Matrix([c for c, _ in parts]))
                coeff = alpha + beta * SPLIT_SCALES[0] + gamma * SPLIT_SCALES[1]
                blocks[ab] = coeff * form.doit()
            head[k] = blocks
        out.append(head)
    return out


def lift_layer(build: Callable, layer: int, named: Callable[[int], dict] | None = None,
               split: bool = False) -> LiftedBlock:
    """The symbolic circuits of block ``layer``: per head ``dict(kind, QK={(a, b): expr}, OV=...)``,
    read from ``build(dd)`` for every ``dd`` in :data:`LIFT_DIMS` (they must agree), then checked
    against the factory's weights at every d in :data:`CHECK_DIMS` (:func:`check_instances`); and
    the block's MLP, if any, as coordinatewise unit families (:func:`lift_mlp`).

    ``split``: the construction has a split context and ``build(dd, n_train, n_val)`` builds it for
    those sizes; its coefficients are fitted in the split scales (:func:`_fit_split`) and checked at
    every d in :data:`CHECK_DIMS` and every split in :data:`SPLIT_LIFT` and :data:`SPLIT_CHECK`."""
    if not split:
        heads = _lift_heads(build, layer, named)
        check_instances(build, layer, heads, named)
        return LiftedBlock(heads, lift_mlp(build, layer))
    at = [lambda dd, p=p: build(dd, *p) for p in (*SPLIT_LIFT, *SPLIT_CHECK)]
    heads = _fit_split([_lift_heads(b, layer, named) for b in at[:len(SPLIT_LIFT)]], layer)
    mlps = []
    for b, (ntr, nv) in zip(at, (*SPLIT_LIFT, *SPLIT_CHECK)):
        check_instances(b, layer, heads, named, {n: ntr + nv, N1: ntr})
        mlps.append(lift_mlp(b, layer))
    if any(m != mlps[0] for m in mlps):
        raise NotLiftable(f"block {layer}: the MLP differs between splits (only attention values may carry the "
                          "split scales)")
    return LiftedBlock(heads, mlps[0])


def _mlp_families(c, layer: int, dd: int, dslots: set) -> list[tuple] | None:
    """The MLP of block ``layer`` of c (built at d = dd) as families of hidden units, or None
    without an MLP.  A family is ``d`` ReLU units, one per coordinate i, unit i computing
    ``relu(sum_s a_s h_s[i] + beta)`` over d-sized slots s and adding ``c_t`` times it to
    ``h_t[i]``: the signature ``(reads ((s, a_s), ...), beta, writes ((t, c_t), ...))`` in exact
    rationals.  A unit that reads and writes only 1-sized slots is kept as its own signature (a
    scalar map of an affine combination of those slots).  Any other unit (reading two coordinates,
    touching both a d-sized and a 1-sized slot, a coordinate missing from its family, an output
    bias on a d-sized slot, another activation) is NotLiftable; an output bias b on a 1-sized slot is
    the unit ``sign(b) relu(|b|)`` that reads nothing."""
    m = c.blocks[layer].mlp
    if m is None:
        return None
    if m.act != "relu" or m.layernorm:
        raise NotLiftable(f"block {layer}: a {m.act} MLP{' on LayerNorm' if m.layernorm else ''} is outside the "
                          "coordinatewise fragment")
    slots = [s for s in c.layout.slots if s.name in dslots]
    scalars = [s for s in c.layout.slots if s.name not in dslots]
    if any(m.b_out[s.index].any() for s in slots):
        raise NotLiftable(f"block {layer}: an MLP output bias on a d-sized slot is outside the coordinatewise fragment")
    families: dict = {}
    for s in scalars:  # an output bias b on a 1-sized slot: the unit sign(b) relu(|b|) with no reads
        b = exact(m.b_out[s.index][0])
        if b != 0:
            families.setdefault(((), abs(b), ((s.name, sp.sign(b)),)), []).append(None)
    for f in range(m.W_in.shape[1]):
        if any(m.W_in[s.index, f].any() or m.W_out[f, s.index].any() for s in scalars):
            if any(m.W_in[s.index, f].any() or m.W_out[f, s.index].any() for s in slots):
                raise NotLiftable(f"block {layer}: MLP unit {f} reads or writes both a d-sized and a 1-sized slot "
                                  "(outside the coordinatewise fragment)")
            sig = tuple(tuple((s.name, exact(w[0])) for s in scalars if (w := part(s)).any())
                        for part in (lambda s: m.W_in[s.index, f], lambda s: m.W_out[f, s.index]))
            families.setdefault((sig[0], exact(m.b_in[f]), sig[1]), []).append(None)  # a unit on 1-sized slots
            continue
        coords, reads, writes = set(), [], []
        for s in slots:
            for part, out in ((m.W_in[s.index, f], reads), (m.W_out[f, s.index], writes)):
                nz = np.flatnonzero(part)
                coords.update(nz.tolist())
                if nz.size == 1:
                    out.append((s.name, exact(part[nz[0]])))
        if not coords and not np.any(m.W_out[f]):
            continue  # an idle unit
        if len(coords) != 1:
            raise NotLiftable(f"block {layer}: MLP unit {f} touches coordinates {sorted(coords)} (a coordinatewise "
                              "unit reads and writes one)")
        families.setdefault((tuple(reads), exact(m.b_in[f]), tuple(writes)), []).append(coords.pop())
    out = []
    for sig, coords in families.items():
        if None in coords:  # units on 1-sized slots, each kept (equal ones add up)
            out += [sig] * len(coords)
        elif sorted(coords) != list(range(dd)):
            raise NotLiftable(f"block {layer}: the MLP units {sig} cover coordinates {sorted(coords)} of d = {dd}")
        else:
            out.append(sig)
    return sorted(out, key=str)


def lift_mlp(build: Callable[[int], object], layer: int) -> list[tuple] | None:
    """The coordinatewise MLP of block ``layer`` (:func:`_mlp_families`), the same families at every
    d in :data:`LIFT_DIMS` and :data:`CHECK_DIMS`; None if the block has no MLP."""
    dslots = {k for k, v in slot_sizes(build(LIFT_DIMS[0])).items() if v == d}  # at d = 1 sizes alone cannot tell
    forms = {dd: _mlp_families(build(dd), layer, dd, dslots) for dd in (*LIFT_DIMS, *CHECK_DIMS)}
    first = forms[LIFT_DIMS[0]]
    for dd, f in forms.items():
        if f != first:
            raise NotLiftable(f"block {layer}: the MLP at d = {dd} has other unit families than at d = {LIFT_DIMS[0]}")
    return first


def _instance(expr, dd: int, named_at: dict, sizes_at: dict | None = None) -> np.ndarray:
    """A lifted block at d = dd (and, for a split construction, the sizes ``{n: .., N1: ..}``), with
    the named matrices' values: an array of exact Fractions."""
    return evaluate(expr, {n: 1, **(sizes_at or {}), d: dd}, {s.name: _fractions(M) for s, M in named_at.items()})


def _fractions(M) -> np.ndarray:
    return np.vectorize(lambda v: Fraction(float(v)), otypes=[object])(np.asarray(M, dtype=np.float64))


def check_instances(build: Callable[[int], object], layer: int, heads: list[dict], named=None,
                    sizes_at: dict | None = None) -> None:
    """The lifted form of block ``layer``, instantiated at every d in :data:`CHECK_DIMS`, equals the
    factory's weights there exactly (every nonzero slot block, every head); else NotLiftable.  A
    weight that depends on d in another way than the proved form is caught at every d <= 8."""
    for dd in CHECK_DIMS:
        c = build(dd)
        nm = named(dd) if named else {}
        circuits = c.circuits(layer)
        a = c.blocks[layer].attn
        if len(circuits) != len(heads) or (heads and (a.kind, a.causal, a.divisor) !=
                                           (heads[0]["kind"], heads[0]["causal"], heads[0]["divisor"])):
            raise NotLiftable(f"block {layer} at d = {dd} has other heads than the lifted form")
        for h, circ in zip(heads, circuits):
            for k in ("QK", "OV"):
                extra = set(circ[k]) - set(h[k])
                if extra:
                    raise NotLiftable(f"block {layer} at d = {dd}: nonzero {k} blocks {sorted(extra)} outside the lifted form")
                for ab, expr in h[k].items():  # a block the form has may vanish at some d (a zero entry of P)
                    want = _instance(expr, dd, nm, sizes_at)
                    got = _fractions(circ[k][ab]) if ab in circ[k] else np.zeros(want.shape, dtype=int)
                    if got.shape != want.shape or not (got == want).all():
                        raise NotLiftable(f"block {layer} at d = {dd}: the {k} block {ab} is not the lifted form")


# -- 2. token groups and the symbolic layer -------------------------------------------
@dataclass
class Group:
    """``count`` tokens with the same symbolic content: ``slots[name]`` is ``[size, count]``."""

    name: str
    count: object  # n, 1, d
    role: str  # "train", "val" (a split context's validation part), "query" (fills from ROLE_FILLS) or "extra"
    slots: dict
    key: bool = True  # set by the proof runner: queries are keys only without the query mask


def complete(layout, g: Group, sizes: dict) -> dict:
    """All slots of group g: its given state, constant slots from the layout's fills."""
    out = dict(g.slots)
    col = {"train": 0, "val": 1, "query": 2}.get(g.role)
    for s in layout.slots:
        if s.name in out:
            continue
        if g.role == "extra" or s.fill not in ROLE_FILLS:
            raise NotLiftable(f"group {g.name!r} does not state slot {s.name!r}")
        v = exact(ROLE_FILLS[s.fill][col])
        out[s.name] = sp.ZeroMatrix(sizes[s.name], g.count) if v == 0 else v * sp.OneMatrix(sizes[s.name], g.count)
    return out


def constant_slots(layout, full: dict) -> set:
    """Slots with a constant fill in the layout that hold a number in every group (not state: a slot
    holding one symbolic scalar in every token, e.g. a statistic written by an earlier layer, is state)."""
    out = set()
    for s in layout.slots:
        if s.fill in ROLE_FILLS:
            try:
                if all(_const(f, s.name).is_number for f in full.values()):
                    out.add(s.name)
            except NotLiftable:
                pass
    return out


def _score(Hk: dict, Hg: dict, QK: dict, keep) -> sp.MatrixExpr | None:
    """``[count_k, count_g]`` scores ``h_g^T QK h_k`` (row-vector convention ``h_g QK h_k^T``)."""
    terms = [Hk[b].T * M.T * Hg[a] for (a, b), M in QK.items() if keep(a, b)]
    return sp.MatAdd(*terms) if terms else None


def _values(Hk: dict, OV: dict, slot: str) -> sp.MatrixExpr | None:
    terms = [M.T * Hk[b] for (b, c), M in OV.items() if c == slot]
    return sp.MatAdd(*terms) if terms else None


def _const(Hslots: dict, slot: str):
    """The constant a constant slot holds across a group (all entries equal, at any size)."""
    if Hslots[slot].atoms(sp.MatrixSymbol):  # it holds state (evaluating it would be slow, and not a number)
        raise NotLiftable(f"constant slot {slot!r} holds a symbol")
    vals = {v for dd, nn, n1 in ((2, 3, 1), (3, 5, 2))
            for v in sp.Matrix(Hslots[slot].subs({d: dd, n: nn, N1: n1}).doit().as_explicit())}
    if len(vals) != 1:
        raise NotLiftable(f"constant slot {slot!r} does not hold a constant")
    return vals.pop()


# -- causal masks: the keys each token group sees, and its divisor -------------------------------
#: the masks of causal heads among the n context tokens, ``[keys, tokens]`` (entry ``(j, i)`` is 1
#: when token i sees key j: ``"strict"`` j < i, ``True`` j <= i), and the diagonal divisors of
#: ``divisor="keys"`` (``1/((i-1) v 1)`` and ``1/i`` for 1-based i), entries by :func:`_structure`
#: (stated here, not read from the toolkit's mask: the anchors check that the code agrees)
CAUSAL = {m: (sp.MatrixSymbol(f"M_{tag}", n, n), sp.MatrixSymbol(f"D_{tag}", n, n))
          for m, tag in (("strict", "strict"), (True, "causal"))}
_STRUCTURE = {sym.name: (m, part) for m, pair in CAUSAL.items() for part, sym in zip(("mask", "divisor"), pair)}


def _structure(name: str, nn: int) -> np.ndarray:
    """The entries of a mask or divisor of :data:`CAUSAL` at n = nn (Fractions)."""
    causal, part = _STRUCTURE[name]
    j, i = np.arange(nn)[:, None], np.arange(nn)[None, :]  # 0-based key j, token i
    seen = j < i if causal == "strict" else j <= i
    if part == "mask":
        return np.where(seen, Fraction(1), Fraction(0)).astype(object)
    out = np.full((nn, nn), Fraction(0), dtype=object)
    np.fill_diagonal(out, [Fraction(1, max(int(c), 1)) for c in seen.sum(0)])
    return out


def diagonal(A) -> sp.MatrixExpr:
    """The row of the diagonal entries of the square matrix expression A, ``1^T (A o I)``."""
    return sp.OneMatrix(1, A.shape[0]) * sp.HadamardProduct(A, sp.Identity(A.shape[0]))


def _seen(causal, k: Group, g: Group):
    """The ``[count_k, count_g]`` block of the keys of group k that g's tokens see: None (all of
    them), 0 (none) or a mask.  The context comes first, then the query (one token standing for
    each query: they do not see each other)."""
    if causal is False:
        return None
    if k.role not in ("train", "query") or g.role not in ("train", "query"):
        raise NotLiftable("causal attention with extra tokens is outside the symbolic fragment")
    if causal == "self":
        return (sp.Identity(k.count) if k.role == "train" else None) if k.name == g.name else 0
    if k.role == g.role:
        if k.role == "query":
            raise NotLiftable("a causal head whose queries are keys: each query would see the queries before it, "
                              "which one query group does not state")
        return CAUSAL[causal][0]
    return None if k.role == "train" else 0  # the query sees every context token, no context token the query


def _divisor(causal, divisor: str, g: Group, keys: list):
    """The factor on the right of group g's attention output: ``1/n``, or (``divisor="keys"``) one
    over the number of keys each of g's tokens sees (a diagonal matrix for the context under a
    causal mask)."""
    if divisor == "n":
        return 1 / n
    if causal in CAUSAL and g.role == "train":
        return CAUSAL[causal][1]
    seen = [(k, _seen(causal, k, g)) for k in keys]
    count = sum((k.count if m is None else 1 for k, m in seen if m is None or m != 0), sp.Integer(0))
    return 1 / sp.Max(count, 1)


def _masked(A, m):
    """The scores A restricted to the keys a mask m lets through (``A o m``; m None: all)."""
    if m is None or (isinstance(m, sp.Identity) and m.shape == (1, 1)):
        return A
    if isinstance(A, sp.OneMatrix):
        return m
    return sp.HadamardProduct(A, m)


def _is_mask(m) -> bool:
    return isinstance(m, sp.Identity) or (isinstance(m, sp.MatrixSymbol) and m.name in _STRUCTURE)


def _split_hadamard(h):
    """``(sum_t c_t A_t) o M`` as ``sum_t c_t (A_t o M)`` for a mask M (the product is linear in
    the scores), each ``A_t`` a monomial (up to transposition for the symmetric mask I)."""
    masks = [a for a in h.args if _is_mask(a)]
    if len(h.args) != 2 or len(masks) != 1:
        return h
    M = masks[0]
    A = next(a for a in h.args if a is not M)
    out = []
    for t in A.args if isinstance(A, sp.MatAdd) else (A,):
        c, m = t.as_coeff_mmul()
        m = m.doit()
        if isinstance(m, sp.ZeroMatrix) or c == 0:
            continue
        if isinstance(m, sp.OneMatrix):
            out.append(c * M)
            continue
        if isinstance(M, sp.Identity):
            m = min(m, sp.transpose(m).doit(), key=str)
        out.append(c * sp.HadamardProduct(m, M))
    return sp.MatAdd(*out) if len(out) > 1 else out[0] if out else sp.ZeroMatrix(*h.shape)


def _expand(e):
    """The matrix expression e expanded: powers as products, Hadamard products with masks split."""
    e = sp.expand(_powers_to_products(e.doit()).doit())
    if e.has(sp.HadamardProduct):
        e = sp.expand(e.replace(lambda x: isinstance(x, sp.HadamardProduct), _split_hadamard).doit())
    return e


@dataclass
class LayerResult:
    delta: dict  # group -> slot -> delta expr
    premises: list = field(default_factory=list)


def apply_layer(heads: list[dict], layout, groups: list[Group], sizes: dict) -> LayerResult:
    """The change a lifted layer makes to every token group (attention divided by n)."""
    full = {g.name: complete(layout, g, sizes) for g in groups}
    consts = constant_slots(layout, full)
    res = LayerResult({g.name: {} for g in groups})

    def add(gname, c, e):
        res.delta[gname][c] = e if c not in res.delta[gname] else res.delta[gname][c] + e

    kind = {h["kind"] for h in heads}
    causal, divisor = heads[0].get("causal", False), heads[0].get("divisor", "n")  # a head built by hand: no mask
    keys = groups if causal == "self" else [k for k in groups if k.key]  # a self head sees its own token
    pairs = [(g, k, m, _divisor(causal, divisor, g, keys)) for g in groups for k in keys
             if (m := _seen(causal, k, g)) is None or m != 0]
    if kind == {"linear"}:
        for g, k, m, div in pairs:
            for h in heads:
                S = _score(full[k.name], full[g.name], h["QK"], lambda a, b: True)
                for c in layout.names:
                    V = _values(full[k.name], h["OV"], c)
                    if S is not None and V is not None:
                        add(g.name, c, V * _masked(S, m) * div)
        return res
    if kind != {"relu"}:
        raise NotLiftable(f"attention kinds {kind} are outside the symbolic fragment")

    gates = gate_slots(full, consts)
    lin = lambda a, b: not (a in consts and b in consts)  # noqa: E731
    const = lambda a, b: a in consts and b in consts  # noqa: E731
    used = set()
    for i, h in enumerate(heads):
        if i in used:
            continue
        partner = None
        if any(lin(*ab) for ab in h["QK"]):
            partner = next((j for j in range(i + 1, len(heads)) if j not in used and _negated(h, heads[j], lin)
                            and _same(h["QK"], heads[j]["QK"], const)), None)
            if partner is not None:
                used.add(partner)
        pair = [h] if partner is None else [h, heads[partner]]
        for g, k, m, div in pairs:
            def beta(is_gate):
                return sum((_const(full[g.name], a) * M[0, 0] * _const(full[k.name], b)
                            for (a, b), M in h["QK"].items() if const(a, b) and ((a in gates or b in gates) == is_gate)),
                           sp.Integer(0))
            gate, rest = beta(True), beta(False)
            S = _score(full[k.name], full[g.name], h["QK"], lin)
            if S is None:  # relu(beta) on a constant score
                for c in layout.names:
                    if (V := _values(full[k.name], h["OV"], c)) is not None:
                        add(g.name, c, sp.Max(gate + rest, 0) * V * _masked(sp.OneMatrix(k.count, g.count), m) * div)
                continue
            if gate > 0:
                raise NotLiftable(f"gate constant {gate} > 0 on a ReLU head with a linear score")
            if gate < 0:  # relu(z + rest + gate) = 0 while z <= -gate - rest (and -z too for a pair)
                bound = -gate - rest
                if bound < 0 and partner is not None:
                    raise NotLiftable(f"a gated sign-split pair with offset {rest} > -gate = {-gate}: one of its heads "
                                      "is open at every score")
                form = "|score|" if partner is not None else "score"
                res.premises.append(f"{form} <= {bound} for {g.name} tokens on {k.name} keys")
                continue
            if partner is not None and rest == 0:  # relu(z) v + relu(-z)(-v) = z v (a masked key: 0 both ways)
                for c in layout.names:
                    if (V := _values(full[k.name], h["OV"], c)) is not None:
                        add(g.name, c, V * _masked(S, m) * div)
                continue
            if m is not None:
                raise NotLiftable("an entrywise map of masked scores is outside the symbolic fragment")
            relu = sp.Lambda(Z, sp.Max(Z + rest, 0))
            for o in pair:  # relu(z + rest) applied to every score: an entrywise map of the score matrix
                F = Entrywise(relu, _score(full[k.name], full[g.name], o["QK"], lin))
                for c in layout.names:
                    if (V := _values(full[k.name], o["OV"], c)) is not None:
                        add(g.name, c, V * F * div)
    return res


def gate_slots(full: dict, consts: set) -> set:
    """The constant slots that gate keys: they hold different constants in different token groups
    (e.g. 0 on the context and -1 on the query, :func:`constructions.parts.gated_relu_head`); a
    constant slot that holds the same value everywhere (``one``) gives a score offset instead."""
    return {s for s in consts if len({_const(f, s) for f in full.values()}) > 1}


def _negated(h, o, keep) -> bool:
    """Head o is h's sign-split partner: the kept (linear) part of its score and its whole output negated."""
    def part(x, k, sign=1):
        return {ab: str(sp.simplify(sign * M)) for ab, M in x[k].items() if k == "OV" or keep(*ab)}

    return part(o, "QK") == part(h, "QK", -1) and part(o, "OV") == part(h, "OV", -1)


def _same(A: dict, B: dict, keep) -> bool:
    return {ab: str(M) for ab, M in A.items() if keep(*ab)} == {ab: str(M) for ab, M in B.items() if keep(*ab)}


# -- equality ---------------------------------------------------------------------------
def _powers_to_products(e):
    """``(c M)**k`` as ``c**k M**k`` (sympy leaves e.g. ``(c I)**2`` unsimplified)."""
    def split(x):
        c, m = x.base.as_coeff_mmul()
        return c**x.exp * sp.MatPow(m.doit(), x.exp).doit()

    return e.replace(lambda x: isinstance(x, sp.MatPow) and x.exp.is_Integer and x.exp > 0, split)


def _factors(m) -> list:
    return list(m.args) if isinstance(m, sp.MatMul) else [m]


def _product(mats: list) -> tuple:
    """``(coeff, matrix)`` of a product of factors, 1x1 identities and ones dropped (matrix None
    for an empty product)."""
    if not mats:
        return sp.Integer(1), None
    c, m = sp.MatMul(*mats).doit().as_coeff_mmul()
    fs = [f for f in _factors(m.doit()) if not (f.shape == (1, 1) and isinstance(f, (sp.Identity, sp.OneMatrix)))]
    return c, (sp.MatMul(*fs) if len(fs) > 1 else fs[0]) if fs else None


def _canonical(f: sp.Lambda, A) -> tuple:
    """``(g, left, A', right)`` with ``f(A) = left g(A') right`` entry by entry: broadcast ones
    stripped from A (``f(A 1^T) = f(A) 1^T``, ``f(1 B) = 1 f(B)``) and A' scaled to a leading
    coefficient 1 (``f(c A') = g(A')``, ``g(z) = f(c z)``), so that equal maps of equal scores meet.
    Maps inside A are first summed and put in canonical form (:func:`_normal`)."""
    A = _normal(A)
    split = [(c, _factors(m)) for c, m in (t.as_coeff_mmul() for t in (A.args if isinstance(A, sp.MatAdd) else (A,)))]
    left = right = None
    for end, shape in ((-1, 0), (0, 1)):
        ones = {ms[end] for _, ms in split}
        if all(len(ms) > 1 for _, ms in split) and len(ones) == 1:
            o = ones.pop()
            if isinstance(o, sp.OneMatrix) and o.shape[shape] == 1:
                split = [(c, ms[:-1] if end == -1 else ms[1:]) for c, ms in split]
                left, right = (left, o) if end == -1 else (o, right)
    if sp.MatMul(*split[0][1]).shape == (1, 1):  # a 1x1 term is its transpose: w^T x_q and x_q^T w meet
        split = [(c, _factors(min(m, sp.transpose(m).doit(), key=str))) for c, m in
                 ((c, sp.MatMul(*ms).doit()) for c, ms in split)]
    split.sort(key=lambda t: str(sp.MatMul(*t[1])))
    c0 = split[0][0].as_coeff_Mul()[0]  # the number in the leading coefficient (n stays in A: g's switches are numbers)
    c0 = c0 if c0 != 0 else sp.Integer(1)
    arg = sp.MatAdd(*[(c / c0) * sp.MatMul(*ms) for c, ms in split]).doit() if len(split) > 1 else \
        (split[0][0] / c0) * sp.MatMul(*split[0][1]).doit()
    if arg.shape == (1, 1):  # a 1x1 matrix is its transpose
        arg = min(arg, sp.transpose(arg).doit(), key=str)
    return f(c0 * Z), left, arg, right


_SWITCHES = (sp.Max, sp.Min, sp.Abs, sp.sign, sp.Heaviside, sp.Piecewise)


def _outer_switches(e) -> set:
    """The outermost ``Max``/``Min``/``Abs``/``sign``/... applications in the scalar expression e."""
    if isinstance(e, _SWITCHES):
        return {e}
    return set().union(*(_outer_switches(a) for a in e.args)) if e.args else set()


def _knots(h):
    """The points where the scalar expression h of :data:`Z` may switch between affine pieces, or
    None if h is not piecewise affine: h must be affine in z and its outermost switches jointly,
    and each switch piecewise affine (:func:`_pieces`, one switch at a time: a sum switches only
    where a term does)."""
    outer = sorted(_outer_switches(h), key=str)
    marks = sp.symbols(f"m0:{len(outer)}", real=True)
    flat = sp.expand(h.xreplace(dict(zip(outer, marks))))
    if sp.Poly(flat, Z, *marks).total_degree() > 1:
        return None
    knots = []
    for sw in outer:
        pieces, k = _pieces(sp.Lambda(Z, sw))
        if any(sp.Poly(sp.expand(e), Z).degree() > 1 for e in pieces):
            return None
        knots += k
    return knots


def _test_points(knots, interval=None) -> list:
    """Points that decide an identity between two piecewise-affine functions whose pieces switch
    only at ``knots``: every knot, two points inside every gap between consecutive knots and two
    beyond each end (or, on ``interval``, its ends and two points inside each gap).  On every open
    gap both sides are affine, so two agreeing points there are agreement on the gap; the knots are
    checked themselves, so a jump at a knot is caught too."""
    ks = sorted(set(sp.Rational(k) for k in knots))
    if interval is None:
        edges = [ks[0] - 2, *ks, ks[-1] + 2] if ks else [sp.Integer(-1), sp.Integer(1)]
    else:
        lo, hi = (sp.Rational(v) for v in interval)
        edges = [lo, *(k for k in ks if lo < k < hi), hi] if lo < hi else [lo]
    inside = [u + (v - u) * t for u, v in zip(edges, edges[1:]) for t in (sp.Rational(1, 3), sp.Rational(2, 3))]
    return inside + (edges if interval is not None else ks)


def _affine(h, interval=None):
    """``(alpha, gamma)`` if the piecewise-affine function ``h`` of :data:`Z` equals ``alpha z + gamma``
    on all of R (or on ``interval = (lo, hi)``), else None (also when h is not piecewise affine with
    rational switch points)."""
    f = sp.Lambda(Z, h)
    try:
        knots = _knots(h)
        pts = _test_points(knots, interval) if knots is not None else None
    except (NotLiftable, TypeError, sp.PolynomialError):  # a switch without z, a symbolic or curved one
        return None
    if pts is None:
        return None
    if len(pts) == 1:
        return sp.Integer(0), sp.simplify(f(pts[0]))
    a, b = pts[0], pts[1]  # two points inside the first gap
    alpha = sp.simplify((f(b) - f(a)) / (b - a))
    gamma = sp.simplify(f(a) - alpha * a)
    return (alpha, gamma) if all(sp.simplify(f(p) - alpha * p - gamma) == 0 for p in pts) else None


def _group_maps(e) -> tuple[list, dict]:
    """The terms of the expanded matrix expression e: ``(others, maps)``, maps ``{(s, L, A, R): [g]}``
    for the terms ``s c L f(A) R`` with one entrywise map (c a number, s the rest of the coefficient,
    ``g = c f`` after :func:`_canonical`)."""
    others, maps = [], {}
    for t in e.args if isinstance(e, sp.MatAdd) else (e,):
        coeff, mat = t.as_coeff_mmul()
        fs = _factors(mat)
        at = [i for i, f in enumerate(fs) if isinstance(f, ElementwiseApplyFunction)]
        if len(at) != 1:
            others.append(t)
            continue
        g, lo, arg, ro = _canonical(fs[at[0]].function, fs[at[0]].expr)
        cl, left = _product(fs[:at[0]] + ([lo] if lo is not None else []))
        cr, right = _product(([ro] if ro is not None else []) + fs[at[0] + 1:])
        num, sym = sp.sympify(coeff * cl * cr).as_coeff_Mul()
        maps.setdefault((sym, left, arg, right), []).append(num * g)
    return others, maps


def _outer(s, left, m, right):
    return s * sp.MatMul(*[x for x in (left, m, right) if x is not None])


def _pl_form(h):
    """A continuous piecewise-affine h of :data:`Z` with rational switch points in one canonical form,
    ``alpha z + beta + sum_k delta_k max(z - k, 0)`` over its kinks k (so that two statements of the
    same map, e.g. six ReLUs and two triangular bumps, are the same expression); h itself otherwise."""
    f = sp.Lambda(Z, h)
    try:
        knots = _knots(h)
        ks = sorted(set(sp.Rational(k) for k in knots)) if knots is not None else None
    except (NotLiftable, TypeError, sp.PolynomialError):
        return h
    if ks is None:
        return h
    edges = [ks[0] - 1, *ks, ks[-1] + 1] if ks else [sp.Integer(0), sp.Integer(1)]
    slopes = [sp.simplify((f(u + 2 * (v - u) / 3) - f(u + (v - u) / 3)) * 3 / (v - u)) for u, v in zip(edges, edges[1:])]
    alpha, start = slopes[0], edges[0]
    g = alpha * (Z - start) + sp.simplify(f(start)) + sum(
        (sp.simplify(b - a) * sp.Max(Z - k, 0) for k, a, b in zip(ks, slopes, slopes[1:]) if sp.simplify(b - a) != 0),
        sp.Integer(0))
    g = sp.expand(g)
    return g if all(sp.simplify(f(p) - g.subs(Z, p)) == 0 for p in _test_points(ks)) else h  # else: not continuous


def _normal(A):
    """The expanded matrix expression A with the maps of each ``(s, L, A', R)`` (:func:`_group_maps`)
    summed into one map in canonical form (:func:`_pl_form`), scaled so that its first kink (or its
    slope) has coefficient 1, the scale moved in front (``c f(A) = (c f)(A)``: one form for both)."""
    A = _expand(A)
    if not A.has(ElementwiseApplyFunction):
        return A
    others, maps = _group_maps(A)
    out = list(others)
    for (s, left, arg, right), hs in maps.items():
        g = _pl_form(sp.Add(*hs))
        kinks = sorted(g.atoms(sp.Max), key=str)
        poly = sp.Poly(sp.expand(g), Z) if not kinks and g.is_polynomial(Z) else None
        if poly is not None and poly.degree() <= 1:  # an affine map: alpha A + gamma 1
            alpha, gamma = poly.coeff_monomial(Z), poly.coeff_monomial(1)
            out += [alpha * _outer(s, left, arg, right), gamma * _outer(s, left, sp.OneMatrix(*arg.shape), right)]
            continue
        scale = g.coeff(kinks[0]) if kinks else (g.coeff(Z) or g)  # c f(A) = f_c(A) with c out front
        scale = scale if scale.is_number and scale != 0 else sp.Integer(1)
        out.append(scale * _outer(s, left, Entrywise(sp.Lambda(Z, sp.expand(g / scale)), arg), right))
    return sp.MatAdd(*out).doit() if len(out) > 1 else out[0]


def is_zero(e, domains: dict | None = None) -> bool:
    """True iff the matrix expression simplifies to zero: expand, then group the terms by
    their matrix part and simplify every scalar coefficient (sympy leaves e.g.
    ``a/(a+1) M - a/(a+1) M`` uncombined otherwise).  A 1x1 term equals its transpose,
    so 1x1 matrix parts are grouped up to transposition.

    Terms ``c L f(A) R`` with one entrywise map (:class:`Entrywise`, e.g. a ReLU head's
    ``relu(score + beta)``) are grouped by ``(L, A, R)`` (:func:`_canonical`) and their maps
    summed, ``sum_i c_i L f_i(A) R = L (sum_i c_i f_i)(A) R``; the sum must be affine on all of R,
    ``alpha z + gamma`` (:func:`_affine`), and is replaced by ``alpha L A R + gamma L 1 R``.
    ``domains`` maps an input symbol to a closed interval ``(lo, hi)`` its entries lie in (e.g. 0/1
    labels: ``{Y: (0, 1)}``): a map of that symbol alone need only be affine there."""
    if e is None or e == 0:
        return True
    e = _expand(e)
    if isinstance(e, sp.ZeroMatrix) or e == 0:
        return True
    terms, maps = _group_maps(e)
    for (s, left, arg, right), hs in maps.items():
        base = arg.T if isinstance(arg, sp.Transpose) else arg
        interval = (domains or {}).get(base) if isinstance(base, sp.MatrixSymbol) else None
        ab = _affine(sp.Add(*hs), interval)
        if ab is None:
            return False
        terms += [ab[0] * _outer(s, left, arg, right), ab[1] * _outer(s, left, sp.OneMatrix(*arg.shape), right)]
    e = sp.expand(sp.MatAdd(*terms).doit()) if terms else sp.Integer(0)
    if isinstance(e, sp.ZeroMatrix) or e == 0:
        return True
    groups: dict = {}
    for t in e.args if isinstance(e, sp.MatAdd) else (e,):
        coeff, mat = t.as_coeff_mmul()
        mat = mat.doit()
        if mat.shape == (1, 1):
            mat = min(mat, sp.transpose(mat).doit(), key=str)
        groups.setdefault(mat, []).append(coeff)
    return all(sp.simplify(sp.Add(*cs)) == 0 for cs in groups.values())


# -- 3. induction proofs ------------------------------------------------------------------
X = sp.MatrixSymbol("X", d, n)  # context inputs, one column per example
Y = sp.MatrixSymbol("Y", 1, n)  # context targets
XQ = sp.MatrixSymbol("x_q", d, 1)  # a query input
#: a split context's train part (n_1 examples) and validation part (n - n_1)
X1, Y1 = sp.MatrixSymbol("X_1", d, N1), sp.MatrixSymbol("Y_1", 1, N1)
X2, Y2 = sp.MatrixSymbol("X_2", d, n - N1), sp.MatrixSymbol("Y_2", 1, n - N1)
Z11 = sp.ZeroMatrix(1, 1)


def context(**slots) -> Group:
    """The n context (train) tokens holding ``slots`` (the other slots follow the layout's fills)."""
    return Group("context", n, "train", slots)


def train(**slots) -> Group:
    """A split context's n_1 train tokens holding ``slots``."""
    return Group("train", N1, "train", slots)


def validation(**slots) -> Group:
    """A split context's n - n_1 validation tokens holding ``slots``."""
    return Group("validation", n - N1, "val", slots)


def query(**slots) -> Group:
    """One query token holding ``slots``."""
    return Group("query", 1, "query", slots)


@dataclass
class Induction:
    """"One step layer = one algorithm step", by induction over the layers.

    ``build(dd)``: the construction at d = dd (the proof's parameters fixed);
    ``state(v)``: the token groups holding the algorithm state ``v`` (a dict of
    symbols); ``step(v, layer)``: the algorithm's next state (``layer``: the block's index);
    ``start``: the state at step 0 (after the construction's prefix blocks, if any); ``prediction(v)``: ``x_q . w`` (1x1) for state v; ``named(dd)``:
    parameter matrices ``{MatrixSymbol: array at d = dd}`` that weights may contain.
    """

    build: Callable
    variables: dict
    state: Callable
    step: Callable
    start: dict
    prediction: Callable
    named: Callable | None = None
    #: ``{symbol: (lo, hi)}``: intervals the entries of input symbols lie in by the construction's
    #: domain (e.g. 0/1 labels ``{Y: (0, 1)}``); a premise of the proof, and the anchors draw them there
    domains: dict = field(default_factory=dict)
    #: ``prefix_prediction(v)``: the readout slot of the context tokens (``[1, n]``), for a decoder
    #: that predicts at every position (e.g. :func:`diagonal` of ``X^T W``: token i's ``x_i . w_i``)
    prefix_prediction: Callable | None = None
    #: the context is split (:data:`N1`): ``build(dd, n_train, n_val)`` builds the construction for
    #: those sizes (its weights may carry the split scales, :func:`lift_layer`), the state has a
    #: :func:`train` and a :func:`validation` group, and the inputs are X_1, Y_1, X_2, Y_2
    split: bool = False

    def builder(self, split=None) -> Callable[[int], object]:
        """``dd -> construction``: the build, at the split ``split`` (default :data:`SPLIT_LIFT`'s
        first) for a split induction."""
        if not self.split:
            return self.build
        ntr, nv = split or SPLIT_LIFT[0]
        return lambda dd: self.build(dd, ntr, nv)


def slot_sizes(c) -> dict:
    """Every slot's symbolic size (d or 1) in construction c."""
    return {s.name: _slot_size(s, c.d) for s in c.layout.slots}


def key_groups(c, groups: list[Group]) -> list[Group]:
    """The groups with their key flag: queries are keys only without the query mask."""
    return [Group(g.name, g.count, g.role, g.slots, key=g.role != "query" or not c.mask_query) for g in groups]


def _embedding(c, split: bool = False) -> list[Group]:
    """The embedding's context and query groups for inputs X, Y, x_q (or, split, the train and
    validation groups of X_1, Y_1 and X_2, Y_2), from the layout's fills."""
    out = []
    parts = (("train", N1, X1, Y1), ("val", n - N1, X2, Y2)) if split else (("train", n, X, Y),)
    for role, count, x, yv in (*parts, ("query", 1, XQ, sp.ZeroMatrix(1, 1))):
        slots = {}
        for s in c.layout.slots:
            if s.fill == "x":
                slots[s.name] = x
            elif s.fill == "y":
                slots[s.name] = yv
        out.append(Group(role, count, role, slots))
    return out


def _extra_matches(c, g: Group, sizes: dict, dd: int = 3, nn: int = 4) -> bool:
    """The symbolic extra-token group, at d = dd and n = nn, equals ``c.extra_tokens(nn)`` exactly."""
    full = complete(c.layout, g, sizes)
    cols = sp.Matrix.vstack(*[sp.Matrix(full[s.name].subs({d: dd, n: nn}).doit().as_explicit()) for s in c.layout.slots])
    want = sp.Matrix(c.extra_tokens(nn).T.tolist()).applyfunc(exact)
    return cols == want


def _compare(c, sizes, got: list[Group], want: list[Group], what: str, domains: dict | None = None) -> list[str]:
    bad = []
    for g, w in zip(got, want):
        fg, fw = complete(c.layout, g, sizes), complete(c.layout, w, sizes)
        for s in c.layout.names:
            if not slot_equal(fg[s], fw[s], domains):
                bad.append(f"{what}: slot {s!r} of the {g.name} tokens")
    return bad


def coordinatewise(f: Callable, A) -> sp.MatrixExpr:
    """The scalar function ``f`` applied to every entry of the matrix expression A (for an
    induction's algorithm step, e.g. a soft threshold; compared by :func:`slot_equal`)."""
    return Entrywise(sp.Lambda(Z, f(Z)), A)


def apply_mlp(families: list[tuple], layout, groups: list[Group], sizes: dict) -> list[Group]:
    """The groups after a coordinatewise MLP (:func:`lift_mlp`): every slot t that units write
    becomes ``phi(h_s)`` applied entry by entry, ``phi(z) = z + sum_f c_f relu(a_f z + beta_f)``
    (an :class:`Entrywise`), for units that read the slot they write (s = t); a unit on 1-sized
    slots adds ``c_t relu(sum_s a_s h_s + beta)`` (an entrywise map of that row) to each slot t it
    writes; another unit that reads several slots, or writes another slot than it reads, is NotLiftable."""
    phi: dict = {}
    scalar = []
    for reads, beta, writes in families:
        if all(sizes[s] == 1 for s, _ in (*reads, *writes)):  # relu(sum_s a_s h_s + beta) into 1-sized slots
            scalar.append((reads, beta, writes))
            continue
        if len(reads) != 1 or any(t != reads[0][0] for t, _ in writes):
            raise NotLiftable(f"MLP units reading {[r for r, _ in reads]} and writing {[t for t, _ in writes]}: only "
                              "units that read one slot and write it are coordinatewise functions of it")
        (slot, a), = reads
        for _, c in writes:
            phi[slot] = phi.get(slot, Z) + c * sp.Max(a * Z + beta, 0)
    out = []
    for g in groups:
        full = complete(layout, g, sizes)
        new = {s: Entrywise(sp.Lambda(Z, phi[s]), full[s]) if s in phi else full[s] for s in layout.names}
        for reads, beta, writes in scalar:
            F = Entrywise(sp.Lambda(Z, sp.Max(Z + beta, 0)), sp.MatAdd(*[a * full[s] for s, a in reads])) if reads \
                else sp.Max(beta, 0) * sp.OneMatrix(1, g.count)  # a unit on its bias alone
            for t, c in writes:
                new[t] = new[t] + c * F
        out.append(Group(g.name, g.count, g.role, new, g.key))
    return out


def _pointwise(e):
    """``(phi, A)`` if e is ``phi`` applied entry by entry to A, or such a column broadcast over
    tokens (``phi(A) 1^T = phi(A 1^T)``); else None."""
    if isinstance(e, ElementwiseApplyFunction):
        return e.function, e.expr
    if isinstance(e, sp.MatMul):
        coeff, mats = e.as_coeff_matrices()
        if coeff == 1 and len(mats) == 2 and isinstance(mats[0], ElementwiseApplyFunction) \
                and isinstance(mats[1], sp.OneMatrix) and mats[1].shape[0] == 1:
            return mats[0].function, mats[0].expr * mats[1]
    return None


def _affine_condition(cond) -> bool:
    """A piece's condition is built from inequalities alone (And, Or, Not of relationals)."""
    if isinstance(cond, (sp.core.relational.Relational, sp.logic.boolalg.BooleanAtom)):
        return True
    return isinstance(cond, (sp.And, sp.Or, sp.Not)) and all(_affine_condition(a) for a in cond.args)


def _pieces(f) -> tuple[list, list]:
    """A scalar function (``Max``, ``Min``, ``Abs``, ``sign`` of affine maps, nested) in sympy's
    piecewise form: its pieces, and the points where its conditions switch (each condition must
    be an affine inequality in the variable; NotLiftable otherwise)."""
    z = f.variables[0]
    pw = sp.piecewise_fold(f.expr.rewrite(sp.Piecewise))
    pairs = pw.args if isinstance(pw, sp.Piecewise) else [(pw, sp.true)]
    knots = []
    for _, cond in pairs:
        if not _affine_condition(cond):
            raise NotLiftable(f"the coordinatewise function {f} switches on {cond} (not a combination of inequalities)")
        for rel in cond.atoms(sp.core.relational.Relational):
            p = sp.Poly(sp.expand(rel.lhs - rel.rhs), z)
            if p.degree() != 1:
                raise NotLiftable(f"the coordinatewise function {f} switches where {rel} (not an affine condition)")
            knots.append(-p.coeff_monomial(1) / p.coeff_monomial(z))
    return [e for e, _ in pairs], knots


def pointwise_equal(f, g) -> bool:
    """Two coordinatewise functions (sympy ``Lambda``) are equal on all of R: both piecewise affine
    (:func:`_pieces`), so agreement at every switch point of either, between them and beyond
    them (:func:`piecewise_linear_equal`) is agreement everywhere."""
    knots = []
    for h in (f, g):
        pieces, k = _pieces(h)
        if any(sp.Poly(sp.expand(e), h.variables[0]).degree() > 1 for e in pieces):
            raise NotLiftable(f"the coordinatewise function {h} is not piecewise affine")
        knots += k
    return piecewise_linear_equal(f, g, knots)


def slot_equal(a, b, domains: dict | None = None) -> bool:
    """Two slot values are equal: coordinatewise functions of matrix expressions by equal arguments
    (:func:`is_zero`) and equal functions (:func:`pointwise_equal`); other matrix expressions, with
    entrywise maps among their terms or not, by :func:`is_zero` (``domains`` as there)."""
    pa, pb = _pointwise(a), _pointwise(b)
    if pa is not None and pb is not None and is_zero(pa[1] - pb[1]) and pointwise_equal(pa[0], pb[0]):
        return True
    return is_zero(a - b, domains)


def advance(c, sizes, block: LiftedBlock, groups: list[Group]):
    """The groups after the lifted block (attention, then its MLP), and the premises the layer used."""
    new, premises = groups, []
    if block.heads:
        res = apply_layer(block.heads, c.layout, groups, sizes)
        full = {g.name: complete(c.layout, g, sizes) for g in groups}
        new = [Group(g.name, g.count, g.role, {s: full[g.name][s] + res.delta[g.name][s] if s in res.delta[g.name]
                                                else full[g.name][s] for s in c.layout.names}, g.key)
               for g in groups]
        premises = res.premises
    if block.mlp is not None:
        new = apply_mlp(block.mlp, c.layout, new, sizes)
    return new, premises


# -- the numeric anchor: the proved layer against the toolkit's own forward passes -------------------
def _fraction(v) -> Fraction:
    v = sp.sympify(v)
    if not v.is_Rational:
        v = sp.simplify(v)  # e.g. sqrt(n lam) at n lam = 1; never a rational approximation
    if not v.is_Rational:
        raise NotLiftable(f"the numeric anchor met the irrational value {v}")
    return Fraction(int(v.p), int(v.q))


def evaluate(e, sizes_at: dict, values: dict) -> np.ndarray:
    """A matrix expression at concrete sizes (``{d: dd, n: nn}``) and values (``{symbol name: object
    array of Fractions}``), as an exact object array (numpy arithmetic on Fractions, no symbolic sums)."""
    def shape(m):
        return tuple(int(sp.sympify(k).subs(sizes_at)) for k in m.shape)

    def full(m, v):
        a = np.empty(shape(m), dtype=object)
        a[...] = Fraction(v)
        return a

    if isinstance(e, sp.MatrixSymbol):
        return _structure(e.name, shape(e)[0]) if e.name in _STRUCTURE else values[e.name]
    if isinstance(e, sp.Identity):
        a = full(e, 0)
        np.fill_diagonal(a, Fraction(1))
        return a
    if isinstance(e, sp.ZeroMatrix):
        return full(e, 0)
    if isinstance(e, sp.OneMatrix):
        return full(e, 1)
    if isinstance(e, sp.MatAdd):
        return sum(evaluate(a, sizes_at, values) for a in e.args)
    if isinstance(e, sp.MatMul):
        coeff, mats = e.as_coeff_matrices()
        out = evaluate(mats[0], sizes_at, values)
        for m in mats[1:]:
            out = out @ evaluate(m, sizes_at, values)
        return _fraction(sp.sympify(coeff).subs(sizes_at)) * out
    if isinstance(e, sp.Transpose):
        return evaluate(e.arg, sizes_at, values).T
    if isinstance(e, sp.HadamardProduct):
        out = evaluate(e.args[0], sizes_at, values)
        for m in e.args[1:]:
            out = out * evaluate(m, sizes_at, values)
        return out
    if isinstance(e, ElementwiseApplyFunction):
        return np.vectorize(lambda v: _fraction(e.function(sp.Rational(v.numerator, v.denominator))),
                            otypes=[object])(evaluate(e.expr, sizes_at, values))
    if isinstance(e, sp.MatPow) and e.exp.is_Integer and e.exp > 0:
        base = evaluate(e.base, sizes_at, values)
        out = base
        for _ in range(int(e.exp) - 1):
            out = out @ base
        return out
    raise NotLiftable(f"the numeric anchor cannot evaluate {type(e).__name__}")


def _point(spec: Induction, dd: int, nn: int, seed: int = 0):
    """A random rational point: values of X, Y, x_q (or, split, X_1, Y_1, X_2, Y_2 and x_q, with
    n_1 from :data:`ANCHOR_SPLIT`), the state variables and the named matrices at d = dd, n = nn,
    by symbol name."""
    rng = np.random.default_rng(seed)
    sizes_at = {d: dd, n: nn, **({N1: ANCHOR_SPLIT[0]} if spec.split else {})}
    values = {}
    domains = {s.name: iv for s, iv in spec.domains.items()}
    inputs = (X1, Y1, X2, Y2, XQ) if spec.split else (X, Y, XQ)
    for sym in (*inputs, *spec.variables.values()):
        shape = tuple(int(sp.sympify(k).subs(sizes_at)) for k in sym.shape)
        lo, hi = (Fraction(v) for v in domains.get(sym.name, (-1, 1)))
        eighths = rng.integers(int(np.ceil(lo * 8)), int(np.floor(hi * 8)) + 1, size=shape)
        values[sym.name] = np.vectorize(lambda v: Fraction(int(v), 8), otypes=[object])(eighths)
    for sym, M in (spec.named(dd) if spec.named else {}).items():
        values[sym.name] = np.vectorize(lambda v: Fraction(float(v)), otypes=[object])(M)
    return sizes_at, values


def _stream(c, groups: list[Group], sizes: dict, sizes_at: dict, values: dict) -> np.ndarray:
    """The residual stream ``[1, T, D]`` (Fractions) of symbolic token groups at a concrete point:
    context tokens, then extra tokens, then the query, each token its slots in layout order."""
    order = {"train": 0, "val": 1, "extra": 2, "query": 3}
    columns = []
    for g in sorted(groups, key=lambda g: order[g.role]):
        full = complete(c.layout, g, sizes)
        columns.append(np.concatenate([evaluate(full[s.name], sizes_at, values) for s in c.layout.slots], axis=0))
    return np.concatenate(columns, axis=1).T[None]


def _unsigned_scale(blocks, h: np.ndarray, n_keys: int, norm: int, mask_query: bool) -> float:
    """The size of the terms a stack of attention blocks sums, with every weight and value taken
    in absolute value (a bound on the unsigned sums; |relu(s)| <= |s|)."""
    h = np.abs(np.asarray(h, dtype=np.float64))
    for b in blocks:
        a = b.attn
        if a is not None:
            keys = h[:, :n_keys] if mask_query and a.causal != "self" else h
            div = 1 if a.divisor == "keys" else norm  # a row seeing few keys divides by few: bound by their sum
            out = np.zeros_like(h)
            for WQ, WK, WV, WO in zip(*(np.abs(getattr(a, k)) for k in ("W_Q", "W_K", "W_V", "W_O"))):
                out += ((h @ WQ) @ (keys @ WK).transpose(0, 2, 1) / div) @ (keys @ WV) @ WO
            h = h + out
        if b.mlp is not None:  # |relu(u)| <= |u|
            m = b.mlp
            h = h + (h @ np.abs(m.W_in) + np.abs(m.b_in)) @ np.abs(m.W_out) + np.abs(m.b_out)
    return float(h.max())


def anchor(spec: Induction, c, first: int, last: int, before: list[Group], after: list[Group] | None,
           prediction=None, prefix_prediction=None) -> list[str]:
    """Blocks ``first..last-1`` of ``c`` (built at d = :data:`ANCHOR_D`) on the stream of the groups
    ``before`` at a random rational point (n = :data:`ANCHOR_N`, or split as :data:`ANCHOR_SPLIT`): the numpy pass in exact arithmetic
    must give the stream of ``after`` (or, for the readout, the prediction ``prediction``) exactly,
    and the torch model, in every evaluation order, must give the exact result within the
    tolerance model.  Ties the symbolic model of attention to the code that users run."""
    import torch

    from constructions.fastpath import ORDERS
    from constructions.numpy_pass import numpy_forward

    from .exact import to_exact
    from .tolerance import tolerance

    sizes = slot_sizes(c)
    nn = sum(ANCHOR_SPLIT) if spec.split else ANCHOR_N
    sizes_at, values = _point(spec, ANCHOR_D, nn, seed=first)
    h = _stream(c, before, sizes, sizes_at, values)
    n_keys = nn + sum(int(sp.sympify(g.count).subs(sizes_at)) for g in before if g.role == "extra")
    blocks = c.blocks[first:last]
    out = numpy_forward(blocks, h, n_keys, c.model.mask_query, norm=nn, convert=to_exact)[-1]
    if after is not None:
        got, want = out, _stream(c, after, sizes, sizes_at, values)
    else:
        r = c.layout.readout
        got = Fraction(r.sign) * out[0, -1:, c.layout[r.slot].start]
        want = evaluate(prediction, sizes_at, values)[0]
        if prefix_prediction is not None:  # and every context position's
            got = np.concatenate([Fraction(r.sign) * out[0, :nn, c.layout[r.slot].start], got])
            want = np.concatenate([evaluate(prefix_prediction, sizes_at, values)[0], want])
    bad = []
    if not (got == want).all():
        bad.append(f"numeric anchor: the numpy pass of blocks {first}..{last - 1} differs from the proved step")
    scale = _unsigned_scale(blocks, h, n_keys, nn, c.model.mask_query)
    width = max([b.attn.W_Q.shape[2] for b in blocks if b.attn is not None]
                + [b.mlp.W_in.shape[1] for b in blocks if b.mlp is not None])
    tol = tolerance(torch.float64, n_keys, width, np.array([scale]), len(blocks))[0]
    ht = torch.from_numpy(h.astype(np.float64))
    for order in ORDERS:
        c.model.order = order
        with torch.no_grad():
            t = c.model(ht, n_keys, start=first, stop=last, norm=nn).numpy()
        if not np.abs(t - out.astype(np.float64)).max() <= tol:
            bad.append(f"numeric anchor: the torch model ({order} order) of blocks {first}..{last - 1} differs from "
                       "the exact pass")
    c.model.order = None
    return bad


def prove_induction(spec: Induction, stop_at_failure: bool = False, blocks=None) -> Outcome:
    """Base case, induction step for every step block, and the readout; symbolic d and n; each
    layer anchored to the toolkit's forward passes (:func:`anchor`).  Every failing part is reported,
    or, with ``stop_at_failure``, the first (the verdict is the same).

    ``blocks``: only the parts that read one of these block indices (the base case when one is a
    prefix block, those step layers, the readout when one is a readout block), for a construction
    that differs from a proved one in those blocks alone: every other part is then the proved
    construction's.  The outcome says so; it is not a proof of the construction."""
    c = spec.builder()(LIFT_DIMS[0])
    sizes = slot_sizes(c)
    if blocks is not None:
        L = len(c.blocks)
        if not isinstance(blocks, (set, frozenset, list, tuple)) or not all(isinstance(b, (int, np.integer)) and not isinstance(b, bool)
                                                       and -L <= b < L for b in blocks):
            raise ConstructionError(f"blocks must be block indices of {c.name} (-{L} .. {L - 1}), got {blocks!r}")
        blocks = {int(b) % L for b in blocks}
    wanted = (lambda *layers: True) if blocks is None else (lambda *layers: bool(blocks.intersection(layers)))
    V = spec.variables
    prefix = getattr(c, "n_prefix", 0)
    bad = []
    if any(sym not in (X, Y, XQ, X1, Y1, X2, Y2) for sym in spec.domains):
        return Outcome(False, "a domain may restrict only the inputs X, Y and x_q: an assumption on the state would "
                              "need its own proof that every step keeps it")
    domains = dict(spec.domains)
    premises = [f"the entries of {sym.name} lie in [{lo}, {hi}] (the construction's domain)"
                for sym, (lo, hi) in domains.items()]
    # base case: the state at step 0 is the embedding, after the prefix blocks if any
    start = key_groups(c, spec.state(spec.start))
    if prefix and any(g.role == "extra" for g in start):
        return Outcome(False, f"{c.name} has prefix blocks and extra tokens: the base case runs the prefix on the "
                              "context and query tokens only; prove it in exact rational arithmetic instead")
    anchored = spec.builder(ANCHOR_SPLIT)(ANCHOR_D)
    if wanted(*range(prefix)):
        order = {"train": 0, "val": 1, "query": 2}
        start = sorted(start, key=lambda g: order.get(g.role, 3))  # the base case pairs the groups by role
        embedded = key_groups(c, _embedding(c, spec.split))
        for layer in range(prefix):
            embedded, prem = advance(c, sizes, lift_layer(spec.build, layer, spec.named, spec.split), embedded)
            premises += prem
        if [g.role for g in start if g.role != "extra"] != ["train", *(["val"] if spec.split else []), "query"]:
            bad.append("base case: the state must have one context (split: a train and a validation) group and one "
                       "query group")
        bad += _compare(c, sizes, [g for g in start if g.role != "extra"], embedded, "base case", domains)
        for g in (g for g in start if g.role == "extra"):
            if not _extra_matches(c, g, sizes):
                bad.append(f"base case: the {g.name} tokens differ from the construction's extra tokens")
        if prefix and not bad:
            bad += anchor(spec, anchored, 0, prefix, _embedding(c, spec.split), spec.state(spec.start))
    # induction step: every step block maps state(V) to state(step(V))
    for layer in (layer for layer in range(prefix, c.n_step_blocks) if wanted(layer)):
        if bad and stop_at_failure:
            return Outcome(False, "; ".join(bad), sorted(set(premises)))
        heads = lift_layer(spec.build, layer, spec.named, spec.split)
        got, prem = advance(c, sizes, heads, key_groups(c, spec.state(V)))
        premises += prem
        wrong = _compare(c, sizes, got, key_groups(c, spec.state(spec.step(V, layer))), f"step layer {layer}", domains)
        bad += wrong or anchor(spec, anchored, layer, layer + 1, spec.state(V), spec.state(spec.step(V, layer)))
    # readout: the readout blocks map state(V) to the prediction x_q . w
    if bad and stop_at_failure:
        return Outcome(False, "; ".join(bad), sorted(set(premises)))
    if wanted(*range(c.n_step_blocks, len(c.blocks))):
        bad += _readout(spec, c, sizes, anchored, domains, premises)
    steps = f"the prefix block(s), {c.n_step_blocks - prefix}" if prefix else f"{c.n_step_blocks}"
    sizes_said = "d, n_train and n_val" if spec.split else "d and n"
    checked = f" and splits (n_train, n_val) in {list(SPLIT_LIFT + SPLIT_CHECK)}" if spec.split else ""
    detail = "; ".join(bad) if bad else (f"base case, {steps} step layer(s) and the readout, for symbolic "
                                         f"{sizes_said}; weights checked for d <= {CHECK_DIMS[-1]}{checked}; each "
                                         "layer anchored to the "
                                         "numpy pass (exact) and the torch model (every evaluation order)")
    if blocks is not None:
        detail = f"only the parts reading blocks {sorted(blocks)}: {detail}"
    return Outcome(not bad, detail, sorted(set(premises)))


def _readout(spec: Induction, c, sizes: dict, anchored, domains: dict, premises: list) -> list[str]:
    """The readout part: the readout blocks map state(V) to the prediction (and, with
    ``prefix_prediction``, every position's); anchored.  Appends the premises it used."""
    V = spec.variables
    groups = key_groups(c, spec.state(V))
    for layer in range(c.n_step_blocks, len(c.blocks)):
        groups, prem = advance(c, sizes, lift_layer(spec.build, layer, spec.named, spec.split), groups)
        premises += prem
    by_role = {g.role: g for g in groups}
    if "query" not in by_role or (spec.prefix_prediction is not None and "train" not in by_role):
        return ["readout: the state has no query group" if "query" not in by_role else
                "readout: a prediction at every position needs a context group"]
    q = complete(c.layout, by_role["query"], sizes)
    r = c.layout.readout
    if not is_zero(exact(r.sign) * q[r.slot] - spec.prediction(V), domains):
        return ["readout: the query's readout slot is not x_q . w"]
    if spec.prefix_prediction is not None and not is_zero(
            exact(r.sign) * complete(c.layout, by_role["train"], sizes)[r.slot] - spec.prefix_prediction(V), domains):
        return ["readout: the context tokens' readout slot is not the prediction at every position"]
    if c.n_step_blocks < len(c.blocks):
        return anchor(spec, anchored, c.n_step_blocks, len(c.blocks), spec.state(V), None, spec.prediction(V),
                      spec.prefix_prediction(V) if spec.prefix_prediction is not None else None)
    return []


# -- lemmas (scalar identities, proved for every real input) ------------------------------
def lemma_sign_split() -> Outcome:
    """``relu(z) - relu(-z) = z`` for every real z (the sign split of docs/pitfalls.md #17)."""
    z = sp.Symbol("z", real=True)
    e = sp.piecewise_fold((sp.Max(z, 0) - sp.Max(-z, 0) - z).rewrite(sp.Piecewise))
    ok = sp.simplify(e) == 0
    return Outcome(ok, "relu(z) - relu(-z) = z for all real z" if ok else "sign-split identity failed")


def piecewise_linear_equal(f: Callable, g: Callable, knots: list) -> bool:
    """Two scalar piecewise-linear functions whose pieces switch only at ``knots`` are equal on all
    of R: equal at the points of :func:`_test_points` (every knot, two points inside every gap and
    beyond each end)."""
    return all(sp.simplify(f(p) - g(p)) == 0 for p in _test_points(knots))


def lemma_sherman_morrison() -> Outcome:
    """``(A + u v^T)^{-1} = A^{-1} - A^{-1} u v^T A^{-1} / (1 + v^T A^{-1} u)`` (general d,
    non-commutative symbols; ``s = v^T A^{-1} u`` a scalar): the RLS update."""
    A, U, V = sp.symbols("A U V", commutative=False)
    s = sp.Symbol("s")
    inv = A**-1 - A**-1 * U * V * A**-1 / (1 + s)
    e = sp.expand((A + U * V) * inv)
    e = sp.expand(e.subs(V * A**-1 * U, s))
    ok = sp.simplify(e - 1) == 0
    return Outcome(ok, "(A + u v^T) (A^-1 - A^-1 u v^T A^-1/(1 + v^T A^-1 u)) = I" if ok else "SM identity failed")


def lemma_newton_reciprocal() -> Outcome:
    """One Newton step ``r' = r (2 - c r)`` squares the error: ``1 - c r' = (1 - c r)^2``."""
    c, r = sp.symbols("c r")
    ok = sp.expand(1 - c * r * (2 - c * r) - (1 - c * r) ** 2) == 0
    return Outcome(ok, "1 - c r(2 - c r) = (1 - c r)^2" if ok else "Newton reciprocal identity failed")


def lemma_newton_schulz() -> Outcome:
    """Newton-Schulz squares the error: ``I - M' A = (I - M A)^2`` for ``M' = 2M - M A M``."""
    M, A = sp.symbols("M A", commutative=False)
    ok = sp.expand((1 - (2 * M - M * A * M) * A) - (1 - M * A) ** 2) == 0
    return Outcome(ok, "I - (2M - MAM)A = (I - MA)^2" if ok else "Newton-Schulz identity failed")


# -- softmax regression (Li et al. / Gao et al.) ----------------------------------------------
def lemma_softmax_gradients(n_: int = 3) -> Outcome:
    """The closed-form gradients (and the normalised loss's Hessian) of
    :mod:`constructions.softmax_regression` in logit space, with
    symbolic logits z and labels b at n = 3 (so for every x and A by the chain rule
    ``grad_x = A^T grad_z``): ``d/dz 1/2|f - b|^2 = f o c - <f, c> f`` and
    ``d/dz 1/2|u - alpha b|^2 = u o c' - <b, c'> u``."""
    z = sp.symbols(f"z0:{n_}", real=True)
    b = sp.symbols(f"b0:{n_}", real=True)
    u = [sp.exp(v) for v in z]
    al = sum(u)
    f = [v / al for v in u]
    c = [fi - bi for fi, bi in zip(f, b)]
    s = sum(fi * ci for fi, ci in zip(f, c))
    L = sum(ci**2 for ci in c) / 2
    cp = [ui - al * bi for ui, bi in zip(u, b)]
    Lr = sum(v**2 for v in cp) / 2
    sb = sum(bi * v for bi, v in zip(b, cp))
    ok = all(sp.simplify(sp.diff(L, z[j]) - (f[j] * c[j] - s * f[j])) == 0 for j in range(n_))
    ok &= all(sp.simplify(sp.diff(Lr, z[j]) - (u[j] * cp[j] - sb * u[j])) == 0 for j in range(n_))
    # the Hessian in logit space: G = diag(c - s + f) J - f (J (c + f))^T, J = diag(f) - f f^T
    J = [[(f[i] if i == j else 0) - f[i] * f[j] for j in range(n_)] for i in range(n_)]
    Jcf = [sum(J[j][k] * (c[k] + f[k]) for k in range(n_)) for j in range(n_)]
    ok &= all(sp.simplify(sp.diff(L, z[i], z[j]) - ((c[i] - s + f[i]) * J[i][j] - f[i] * Jcf[j])) == 0
              for i in range(n_) for j in range(n_))
    return Outcome(ok, f"both gradient formulas and the Hessian G equal sympy's derivatives (symbolic z, b; "
                       f"n = {n_})" if ok else "a gradient or Hessian formula differs from sympy's derivative")


def lemma_rescaled_hessian(n_: int = 3) -> Outcome:
    """The rescaled loss's Hessian in logit space (:func:`constructions.softmax_regression.hessian_rescaled`),
    with symbolic logits z and labels b at n = 3: ``d^2/dz dz 1/2|u - alpha b|^2 = J'^T J' +
    diag(u o (c' - <b, c'>))`` with ``J' = diag(u) - b u^T``."""
    z = sp.symbols(f"z0:{n_}", real=True)
    b = sp.symbols(f"b0:{n_}", real=True)
    u = [sp.exp(v) for v in z]
    al = sum(u)
    cp = [ui - al * bi for ui, bi in zip(u, b)]
    Lr = sum(v**2 for v in cp) / 2
    sb = sum(bi * v for bi, v in zip(b, cp))
    Jp = [[(u[k] if k == i else 0) - b[k] * u[i] for i in range(n_)] for k in range(n_)]  # dc'_k/dz_i
    ok = all(sp.simplify(sp.diff(Lr, z[i], z[j]) - (sum(Jp[k][i] * Jp[k][j] for k in range(n_))
                                                     + (u[i] * (cp[i] - sb) if i == j else 0))) == 0
             for i in range(n_) for j in range(n_))
    # the torch code is this formula: at a rational anchor (A = I, so x = z) against sympy's exact Hessian
    import torch

    from constructions import softmax_regression as sr

    at = {**{v: sp.Rational(k - 1, 3) for k, v in enumerate(z)}, **{v: sp.Rational(k + 1, 7) for k, v in enumerate(b)}}
    exact = np.array([[float(sp.diff(Lr, z[i], z[j]).subs(at)) for j in range(n_)] for i in range(n_)])
    zt = torch.tensor([float(at[v]) for v in z], dtype=torch.float64)
    bt = torch.tensor([float(at[v]) for v in b], dtype=torch.float64)
    got = sr.hessian_rescaled(torch.eye(n_, dtype=torch.float64), bt, zt).numpy()
    anchored = np.abs(got - exact).max() <= C * eps(torch.float64) * n_ * (1 + np.abs(exact).max())
    ok = ok and bool(anchored)
    return Outcome(ok, f"the rescaled loss's Hessian J'^T J' + diag(u o (c' - <b, c'>)) equals sympy's (symbolic z, b; "
                       f"n = {n_}), and the torch hessian_rescaled is it at a rational anchor" if ok else
                   "the rescaled Hessian differs from sympy's second derivative, or the torch code from the formula")


def lemma_softmax_jacobian_norm() -> Outcome:
    """``|diag(f) - f f^T|_2 <= 1/2`` for every distribution f: by Gershgorin, row i's disc
    lies in ``[0, 2 f_i (1 - f_i)]`` (it is symmetric PSD), and
    ``1/2 - 2 f (1 - f) = (2f - 1)^2 / 2 >= 0``."""
    f = sp.Symbol("f", real=True)
    ok = sp.expand(sp.Rational(1, 2) - 2 * f * (1 - f) - (2 * f - 1) ** 2 / 2) == 0
    return Outcome(ok, "1/2 - 2f(1 - f) = (2f - 1)^2/2: the softmax Jacobian has norm <= 1/2"
                   if ok else "Jacobian bound identity failed")
