"""``icl-verify``: check the registered claims on freshly drawn random prompts.

Usage::

    icl-verify                                   # check every claim (float64, 100 prompts each)
    icl-verify list                              # the registry
    icl-verify check [ID ...] [--prompts N] [--dtype float32] [--seed S] [--device cuda]
    icl-verify bench [--device cuda] [--quick]   # throughput vs the matmul peak (verify.bench)
    icl-verify reproduce vonoswald23 [--quick]   # train and compare with the constructions (verify.train)
    icl-verify reproduce ahn23 [--quick]         # trained one-layer LSAs against the proved optimum P*
    icl-verify reproduce akyurek22 [--quick]     # trained learners vs GD / ridge / OLS by depth and noise; probes
    icl-verify prove [ID ...] [-v]               # symbolic / exact-rational proofs (verify.proofs)
    icl-verify docs [--out docs/claims.md]       # regenerate the claims table (and README's table)

Every command reads the one registry (:mod:`constructions.registry`).  ``--import MODULE``
(a module name or a ``.py`` path; repeatable; before or after the command) imports a
module of your own that registers constructions and claims first, so that the command sees
them (``icl-verify check --import my_module``); installed packages register through the
``icl_constructions`` entry-point group.

Exit status 0 only if every checked claim holds; 2 with one line on standard error for bad
input.  The seed is fresh on every run and printed; ``--seed`` (or ``ICL_VERIFY_SEED``)
reproduces a run.  Each claim draws from its own stream of that seed, so a claim checked
alone sees the prompts it sees in the full run.  When the ``CI`` environment variable is
set the default seed is 0, so CI runs are deterministic (as the hypothesis ``ci`` profile is).
"""
from __future__ import annotations

import argparse
import os
import secrets
import sys
import time

import torch

from constructions import fastpath, parts, registry
from constructions.errors import ConstructionError

from .claims import check_claim

VERDICT = {True: "HOLDS", False: "FAILS"}


def _table(rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


#: the most prompts one ``check`` draws per claim (a bound on the work one command line asks for)
MAX_PROMPTS = 10**6


def _int_in(text: str, low: int, high: int, what: str) -> int:
    """``text`` as an integer in ``[low, high]``, else an argparse usage error naming ``what``."""
    try:
        v = int(text)
    except (TypeError, ValueError):
        v = low - 1
    if not low <= v <= high:
        raise argparse.ArgumentTypeError(f"{what} must be an integer from {low} to {high}, got {text!r}")
    return v


def _seed(text: str) -> int:
    """A seed: an integer in [0, 2^32)."""
    return _int_in(text, 0, 2**32 - 1, "the seed")


def _prompts(text: str) -> int:
    return _int_in(text, 1, MAX_PROMPTS, "--prompts")


def _threads(text: str) -> int:
    return _int_in(text, 1, 1024, "--threads")


def _default_seed() -> int:
    if os.environ.get("ICL_VERIFY_SEED"):
        try:
            return _seed(os.environ["ICL_VERIFY_SEED"])
        except argparse.ArgumentTypeError as e:
            raise ConstructionError(f"ICL_VERIFY_SEED: {e}") from None
    return 0 if os.environ.get("CI") else secrets.randbits(32)


def cmd_list(args) -> int:
    rows = [["claim", "construction", "source", "kind", "statement"]]
    for c in registry.claims():
        rows.append([c.id, c.label, f"{c.paper}, {c.section}", c.kind, c.statement])
    print(_table(rows))
    return 0


def cmd_check(args) -> int:
    seed = args.seed if args.seed is not None else _default_seed()
    dtype = {"float64": torch.float64, "float32": torch.float32}[args.dtype]
    chosen = registry.claims(args.ids)
    _device(args.device)
    print(f"icl-verify: {len(chosen)} claim(s), {args.prompts} random prompts each, {args.dtype}, seed {seed} "
          f"(rerun with --seed {seed})")
    rows = [["claim", "construction", "source", "prompts", "dtype", "worst error", "tolerance", "ratio", "verdict"]]
    failed = []
    t0 = time.perf_counter()
    for claim in chosen:
        r = check_claim(claim, args.prompts, dtype, seed=seed, device=args.device)
        ratio = f"{r.figure:.3g}" + (" (min miss)" if claim.kind == "negative" else "")
        rows.append([claim.id, claim.label, f"{claim.paper}, {claim.section}", str(r.prompts), r.dtype,
                     f"{r.err:.2e}", f"{r.tol:.2e}", ratio, VERDICT[r.holds]])
        if not r.holds:
            failed.append(r)
    print(_table(rows))
    print(f"\n{len(chosen) - len(failed)}/{len(chosen)} claims hold ({time.perf_counter() - t0:.1f} s). "
          "Tolerance: C*eps*(t+1)*(n+d)*scale, see docs/tolerance.md; "
          "ratio = error/tolerance (exact claims hold at <= 1; negative controls must exceed 1).\n"
          "Claims with a stated bound (an O(1/t) gap, an approximation error, a selection slack) compare "
          "the measured quantity with that bound plus round-off in the same columns.")
    for claim in chosen:
        if claim.report is not None:
            print("\n" + claim.report(seed))
    for r in failed:
        print(f"\nFAILED {r.claim.id}: {len(r.failures)} of {r.prompts} prompts. First failures:")
        for spec, knobs, report in r.failures[:3]:
            print(f"  prompt {spec}\n  knobs  {knobs}\n  -> {report}")
    return 1 if failed else 0


def _device(name: str) -> None:
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConstructionError("--device cuda: no CUDA device is available here (torch "
                                         f"{torch.__version__}); run on a machine with a GPU or use --device cpu")
    try:
        parts.device(name)
    except ConstructionError as e:
        raise ConstructionError(f"--device: {e}") from None


def cmd_bench(args) -> int:
    from . import bench

    _device(args.device)
    rows = bench.run(args.device, quick=args.quick)
    print(bench.report(rows, args.device))
    return 0


def cmd_reproduce(args) -> int:
    from . import train

    args.out = args.out or f"reproduce-{args.paper}"
    if os.path.lexists(args.out) and not os.path.isdir(args.out):
        raise ConstructionError(f"reproduce --out {args.out}: that path exists and is not a folder; give a folder "
                                "(it is created if missing)")
    try:
        os.makedirs(args.out, exist_ok=True)
    except OSError as e:
        raise ConstructionError(f"reproduce --out {args.out}: cannot create that folder ({e.strerror})") from None
    from . import akyurek

    run = {"vonoswald23": train.reproduce_vonoswald, "ahn23": train.reproduce_ahn,
           "akyurek22": akyurek.reproduce_akyurek}[args.paper]
    print(run(quick=args.quick, out=args.out, seed=args.seed))
    return 0


def cmd_prove(args) -> int:
    from . import proofs  # sympy is imported only here

    chosen = registry.claims(args.ids)
    rows = [["claim", "proof", "time", "verdict", "what was proved"]]
    failed, t0 = [], time.perf_counter()
    for claim in chosen:
        cid = claim.id
        r = proofs.prove(claim)
        verdict = {True: "PROVED", False: "FAILS", None: "n/a"}[r.holds]
        what = "; ".join(f"{name}: {o.detail}" for name, o in r.parts) or r.note
        rows.append([cid, r.kind, f"{r.seconds:.2f} s", verdict, what if args.verbose else what[:100]])
        if args.verbose:
            for name, o in r.parts:
                for p in o.premises:
                    rows.append(["", "", "", "", f"  premise ({name}): {p}"])
        if r.holds is False:
            failed.append(cid)
    print(_table(rows))
    print(f"\n{len(chosen) - len(failed)}/{len(chosen)} claims proved or not applicable "
          f"({time.perf_counter() - t0:.1f} s).  general = sympy proof for symbolic d and n; "
          "exact-rational = exact Fraction arithmetic at concrete sizes (see docs/proofs.md).")
    if failed:
        print("FAILED: " + ", ".join(failed))
    return 1 if failed else 0


def cmd_docs(args) -> int:
    from . import docs

    text = docs.claims_markdown()
    if args.out == "-":
        sys.stdout.write(text)
        return 0
    readme = None
    generated = "<!-- generated by `icl-verify docs`"
    try:
        if os.path.lexists(args.out):
            if not os.path.isfile(args.out) or os.path.islink(args.out):
                raise ConstructionError(f"docs --out {args.out}: that path exists and is not a regular file")
            with open(args.out, errors="replace") as f:
                if generated not in f.read(4096):
                    raise ConstructionError(f"docs --out {args.out}: that file exists and was not written by "
                                            "icl-verify docs, so it is not replaced; remove it or choose another path")
        if args.readme:
            with open(args.readme) as f:
                readme = docs.readme_with_table(f.read())
        with open(args.out, "w") as f:
            f.write(text)
        print(f"wrote {args.out}")
        if readme is not None:
            with open(args.readme, "w") as f:
                f.write(readme)
            print(f"wrote the constructions table of {args.readme}")
    except OSError as e:
        raise ConstructionError(f"docs: {e.strerror}: {e.filename} (run from the repository's root, or pass "
                                "--out PATH and --readme '')") from None
    return 0


class _UsageError(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    """argparse whose usage errors become one line (and exit status 2, from :func:`main`);
    the type converters raise ``argparse.ArgumentTypeError`` naming the fix."""

    def error(self, message):
        raise _UsageError(message)


def main(argv=None) -> int:
    common = _Parser(add_help=False)
    common.add_argument("--import", dest="imports", action="append", default=[], metavar="MODULE",
                        help="import a module (name or .py path) that registers constructions/claims; repeatable")
    common.add_argument("--threads", type=_threads, default=None, metavar="N",
                        help="torch intra-op threads for every forward pass (default: one thread for small "
                             "passes, torch's count for large ones; docs/performance.md)")
    parser = _Parser(prog="icl-verify", description=__doc__.split("\n\n")[0])
    parser.add_argument("--import", dest="imports_first", action="append", default=[], metavar="MODULE",
                        help="import a module (name or .py path) that registers constructions/claims; repeatable")
    sub = parser.add_subparsers(dest="cmd", parser_class=_Parser)
    sub.add_parser("list", help="list the registered claims", parents=[common])
    check = sub.add_parser("check", help="check claims on random prompts (default: all)", parents=[common])
    check.add_argument("ids", nargs="*", help="claim ids (default: all)")
    check.add_argument("--prompts", type=_prompts, default=100,
                       help=f"random prompts per claim (default 100, at most {MAX_PROMPTS})")
    check.add_argument("--dtype", choices=["float64", "float32"], default="float64")
    check.add_argument("--seed", type=_seed, default=None, help="RNG seed in [0, 2^32) (default: fresh, printed)")
    check.add_argument("--device", default="cpu", help="torch device for the models (cpu, cuda)")
    bench = sub.add_parser("bench", help="throughput of the constructions vs the machine's matmul peak", parents=[common])
    bench.add_argument("--device", default="cpu", help="cpu or cuda")
    bench.add_argument("--quick", action="store_true", help="fewer sizes (about 20 s)")
    prove = sub.add_parser("prove", help="prove claims symbolically or in exact arithmetic (default: all)",
                           parents=[common])
    prove.add_argument("ids", nargs="*", help="claim ids (default: all)")
    prove.add_argument("-v", "--verbose", action="store_true", help="full details and premises")
    rep = sub.add_parser("reproduce", help="train transformers and compare them with the constructions", parents=[common])
    rep.add_argument("paper", choices=["vonoswald23", "ahn23", "akyurek22"])
    rep.add_argument("--quick", action="store_true", help="fewer steps and sizes (under 2 minutes on 2 cores)")
    rep.add_argument("--out", default=None, help="folder for plots and the checkpoint (default: reproduce-PAPER)")
    rep.add_argument("--seed", type=_seed, default=0)
    docs = sub.add_parser("docs", help="write the claims table (docs/claims.md) and README's constructions table",
                          parents=[common])
    docs.add_argument("--out", default="docs/claims.md", help="output path, '-' for stdout")
    docs.add_argument("--readme", default="README.md", help="README whose generated table to update ('' to skip)")
    try:
        args = parser.parse_args(argv)
    except _UsageError as e:
        print(f"icl-verify: error: {e}", file=sys.stderr)
        return 2
    if args.cmd is None:
        first = args.imports_first
        args = check.parse_args([])
        args.cmd, args.imports_first = "check", first
    try:
        if getattr(args, "threads", None):
            torch.set_num_threads(args.threads)
            fastpath.set_policy(None)
        for module in args.imports_first + args.imports:
            registry.import_module(module)
        return {"list": cmd_list, "check": cmd_check, "prove": cmd_prove, "bench": cmd_bench,
                "reproduce": cmd_reproduce, "docs": cmd_docs}[args.cmd](args)
    except ConstructionError as e:
        print(f"icl-verify: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
