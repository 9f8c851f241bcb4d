"""Named residual-stream layout (after tracr's named bases).

Notation: D is the residual width.  A token is a vector in R^D made of
consecutive named *slots* (``x``, ``y``, ``y0``, ``one``, ...).  Weights are
written through slot names with :meth:`ResidualLayout.read` (a block of rows
of a ``[D, k]`` input map such as ``W_Q``) and :meth:`ResidualLayout.write`
(a block of columns of a ``[k, D]`` output map such as ``W_O``), never at
hand-computed indices.

Each slot also states how a prompt fills it (``fill``).  Context tokens are
*train* tokens, unless a construction splits the context into train and
*validation* tokens (``Construction.split``); then come the *query* tokens.

==============  ====================  ==================  ===========
fill            train token i         validation token i  query token
==============  ====================  ==================  ===========
``x``           x_i (slot size d)     x_i                 x_q
``y``           y_i (slot size 1)     y_i                 0
``zero``        0                     0                   0
``one``         1                     1                   1
``minus_one``   -1                    -1                  -1
``t``           1                     -1                  0
``train_gate``  0                     -1                  -1
``val_gate``    -1                    0                   -1
==============  ====================  ==================  ===========

``posgate`` (size n): on context token i the vector ``e_i - 1`` (0 at i, -1
elsewhere), on query tokens all -1; a head gated by entry t admits token t only.

``position`` (size N, the number of context tokens): the one-hot ``e_i`` of context token i,
0 on query tokens (von Oswald et al.'s positional encodings, Prop. 3).
``sqnorm`` (size 1): the squared norm ``|x|^2`` of the token's input (context and query
tokens; 0 on interleaved y-tokens), the squared-distance trick of a Gaussian-kernel score.

*Interleaved* prompts (``Construction(interleaved=True)``, Garg et al.'s format ``x_1, y_1, x_2,
y_2, ..., x_q``): example i takes two context tokens, an x-token (``x`` filled, ``y`` 0) and a
y-token (``x`` 0, ``y`` filled); the constant fills are the same on both.

``t`` is Bai et al.'s token type.  The gates are ``indicator - 1``: a ReLU head
adds ``B * gate_j`` to its score, which is an exact 0 on the tokens it admits
(whatever the summation order) and ``-B`` on the others (docs/pitfalls.md #15).

The readout (which slot, which sign) belongs to the layout: the prediction
for a query token is ``sign * token[slot]``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property

import numpy as np

from .errors import ConstructionError

#: Constant fills: value on (train, validation, query) tokens.
ROLE_FILLS = {
    "zero": (0.0, 0.0, 0.0),
    "one": (1.0, 1.0, 1.0),
    "minus_one": (-1.0, -1.0, -1.0),
    "t": (1.0, -1.0, 0.0),
    "train_gate": (0.0, -1.0, -1.0),
    "val_gate": (-1.0, 0.0, -1.0),
}
FILLS = ("x", "y", "posgate", "position", "sqnorm", *ROLE_FILLS)


@dataclass(frozen=True)
class Slot:
    name: str
    size: int
    fill: str
    start: int

    @property
    def stop(self) -> int:
        return self.start + self.size

    @property
    def index(self) -> slice:
        return slice(self.start, self.stop)


@dataclass(frozen=True)
class Readout:
    """Prediction = ``sign * token[slot]`` at every query token."""

    slot: str
    sign: float = 1.0


@dataclass(frozen=True)
class ResidualLayout:
    """An ordered list of named slots and the readout.

    >>> lay = ResidualLayout.of([("x", 3, "x"), ("y", 1, "y")], Readout("y", -1.0))
    >>> lay.width, lay["y"].start
    (4, 3)
    """

    slots: tuple[Slot, ...]
    readout: Readout
    _by_name: dict = field(default_factory=dict, compare=False, repr=False)

    @classmethod
    def of(cls, spec, readout: Readout) -> "ResidualLayout":
        slots, start = [], 0
        for name, size, fill in spec:
            if fill not in FILLS:
                raise ConstructionError(f"slot {name!r}: fill must be one of {FILLS}, got {fill!r}")
            if size < 1:
                raise ConstructionError(f"slot {name!r}: size must be >= 1, got {size}")
            slots.append(Slot(name, int(size), fill, start))
            start += int(size)
        lay = cls(tuple(slots), readout)
        names = [s.name for s in slots]
        if len(set(names)) != len(names):
            raise ConstructionError(f"duplicate slot names in {names}")
        lay._by_name.update({s.name: s for s in slots})
        if readout.slot not in lay._by_name or lay[readout.slot].size != 1:
            raise ConstructionError(f"readout slot {readout.slot!r} must be a slot of size 1")
        return lay

    def __getitem__(self, name: str) -> Slot:
        try:
            if not isinstance(name, str):
                raise KeyError(name)
            return self._by_name[name]
        except KeyError:
            raise ConstructionError(
                f"no slot {name!r} in this layout; slots are {list(self._by_name)}"
            ) from None

    def __contains__(self, name: str) -> bool:
        return name in self._by_name

    @cached_property
    def width(self) -> int:  # asked for by every read and write of a weight
        return sum(s.size for s in self.slots)

    @property
    def names(self) -> list[str]:
        return [s.name for s in self.slots]

    def x_dim(self) -> int:
        xs = [s for s in self.slots if s.fill == "x"]
        return xs[0].size if xs else 0

    # -- weight writing through slot names ---------------------------------
    def read(self, reads: dict, k: int) -> np.ndarray:
        """A ``[D, k]`` map whose rows of slot ``s`` are ``reads[s]`` (shape ``[size, k]``)."""
        W = np.zeros((self.width, k))
        for name, block in reads.items():
            s = self[name]
            W[s.index, :] += _block(block, (s.size, k), name)
        return W

    def write(self, writes: dict, k: int) -> np.ndarray:
        """A ``[k, D]`` map whose columns of slot ``s`` are ``writes[s]`` (shape ``[k, size]``)."""
        W = np.zeros((k, self.width))
        for name, block in writes.items():
            s = self[name]
            W[:, s.index] += _block(block, (k, s.size), name)
        return W

    def view(self, M: np.ndarray) -> dict:
        """The nonzero slot blocks of a ``[D, D]`` map (e.g. a head's ``W_Q W_K^T`` or
        ``W_V W_O``): ``{(row_slot, col_slot): block}``."""
        M = np.asarray(M)
        if M.shape != (self.width, self.width):
            raise ConstructionError(f"view needs a [{self.width}, {self.width}] matrix, got {M.shape}")
        nz = M != 0
        rows = [a for a in self.slots if nz[a.index].any()]  # only slots with a nonzero row (column) pair up
        cols = [b for b in self.slots if nz[:, b.index].any()]
        return {(a.name, b.name): M[a.index, b.index] for a in rows for b in cols if nz[a.index, b.index].any()}

    def describe(self) -> list[dict]:
        """Plain-data description (for docs and metadata)."""
        return [dict(name=s.name, start=s.start, size=s.size, fill=s.fill) for s in self.slots] + [
            dict(readout=self.readout.slot, sign=self.readout.sign)
        ]

    def table(self) -> str:
        rows = [f"| `{s.name}` | {s.start}:{s.stop} | {s.fill} |" for s in self.slots]
        return "\n".join(["| slot | rows | filled with |", "|---|---|---|", *rows])


def _block(block, shape, name) -> np.ndarray:
    a = np.asarray(block, dtype=np.float64)
    if a.ndim == 0:
        a = np.full(shape, float(a))
    if a.shape != shape:
        raise ConstructionError(f"block for slot {name!r} has shape {a.shape}, expected {shape}")
    return a
