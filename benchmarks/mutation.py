"""The mutation suite: every small wrong change of :data:`verify.mutation.CATALOGUE` applied at run
time, and what catches it -- ``icl-verify check`` on its claims, ``icl-verify prove`` where a proof
applies, and (``--tests``) the test files that cover it, run under the mutation with
``ICL_MUTATION``.  Writes the table into docs/mutation.md (between the markers) and prints it;
exits 1 if a mutation escapes check or an applicable proof.

    python benchmarks/mutation.py [--prompts 50] [--seed 0] [--tests] [--only NAME ...]
"""
import argparse
import os
import re
import subprocess
import sys
import time
from pathlib import Path

from constructions import registry
from verify import mutation as M
from verify.docs import write_between

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "mutation.md"
BEGIN, END = "<!-- mutation-table:begin -->", "<!-- mutation-table:end -->"


def test_files(m: M.Mutation) -> list[str]:
    """The mutation's own test files, those of its claims' modules, and the claims' test."""
    files = list(m.tests)
    for cid in m.claims:
        module = registry.claim(cid).case.__module__
        own = ROOT / "tests" / f"test_{module.rpartition('.')[2]}.py"
        if own.exists():
            files.append(str(own.relative_to(ROOT)))
        else:  # the test files that name the module (e.g. sherman_morrison's tests live in test_ridge.py)
            files += [str(t.relative_to(ROOT)) for t in sorted((ROOT / "tests").glob("test_*.py"))
                      if module.rpartition(".")[2] in t.read_text() and t.name != "test_claims.py"]
    return sorted(set(files)) + ["tests/test_claims.py"]


def caught_by_tests(m: M.Mutation) -> tuple[bool, str]:
    """Run the mutation's test files under it (stop at the first failure): (caught, first failing test)."""
    env = dict(os.environ, ICL_MUTATION=m.name, CI="true")
    r = subprocess.run([sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *test_files(m)],
                       cwd=ROOT, env=env, capture_output=True, text=True)
    failed = re.findall(r"^FAILED (\S+)", r.stdout, re.M)
    return r.returncode != 0, (failed[0].split("::", 1)[-1][:60] if failed else "")


def _mark(v) -> str:
    return "n/a" if v is None else ("caught" if v else "**missed**")


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--prompts", type=int, default=50)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--tests", action="store_true", help="also run each mutation's test files under it")
    ap.add_argument("--only", nargs="*", default=None)
    args = ap.parse_args()
    t0 = time.perf_counter()
    rows = [f"| mutation | what | claims | check ({args.prompts} prompts, seed {args.seed}) | prove |"
            + (" tests |" if args.tests else ""), "|---|---|---|---|---|" + ("---|" if args.tests else "")]
    escaped = []
    for m in M.CATALOGUE:
        if args.only and m.name not in args.only:
            continue
        r = M.run(m, prompts=args.prompts, seed=args.seed)
        which = ", ".join(c for c, v in r.check.items() if v) or "none"
        proved = ", ".join(c for c, v in r.prove.items() if v) if r.by_prove else None
        row = (f"| `{m.name}` | {m.what} | {', '.join(m.claims)} | {_mark(r.by_check)} ({which}) | "
               f"{_mark(r.by_prove)}{f' ({proved})' if proved else ''} |")
        if args.tests:
            hit, first = caught_by_tests(m)
            row += f" {_mark(hit)}{f' (`{first}`)' if first else ''} |"
        rows.append(row)
        if not r.ok:
            escaped.append(m.name)
        print(row, flush=True)
    table = "\n".join(rows)
    note = (f"\n\n{len(rows) - 2} mutations, {len(rows) - 2 - len(escaped)} caught by check and every applicable "
            f"proof ({time.perf_counter() - t0:.0f} s).")
    print(note.strip())
    if args.only is None:
        write_between(DOC, BEGIN, END, table + note)
    return 1 if escaped else 0


if __name__ == "__main__":
    sys.exit(main())
