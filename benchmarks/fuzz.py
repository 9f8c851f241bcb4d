"""The fuzz campaign of :mod:`verify.fuzz`: every class, each in a fresh process (a crash is then
a failed row, not a lost run), with the inputs tried, refused with a ConstructionError, and
answered correctly.  Writes the table into docs/reliability.md (between the markers) and prints
it; exits 1 if any class lets an input escape the promise.

    python benchmarks/fuzz.py [--examples 500] [--only CLASS ...]

With ``CI`` set the hypothesis ``ci`` profile makes the run deterministic.
"""
import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from verify import fuzz
from verify.docs import write_between

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "reliability.md"
BEGIN, END = "<!-- fuzz-table:begin -->", "<!-- fuzz-table:end -->"


def run_class(name: str, examples: int) -> dict:
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "verify.fuzz", name, "--examples", str(examples)], cwd=ROOT, env=env,
                       capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    if r.returncode != 0:
        tail = (r.stderr or r.stdout).strip().splitlines()[-12:]
        return dict(name=name, tried=examples, escaped=True, seconds=seconds, detail="\n".join(tail),
                    rc=r.returncode)
    out = json.loads(r.stdout.strip().splitlines()[-1])
    return dict(out, seconds=seconds, escaped=False)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--examples", type=int, default=500)
    ap.add_argument("--only", nargs="*", default=None)
    args = ap.parse_args()
    rows = ["| class | what is drawn and checked | tried | refused | answered (checked correct) | time |",
            "|---|---|---|---|---|---|"]
    escaped = []
    for name, case in fuzz.CLASSES.items():
        if args.only and name not in args.only:
            continue
        r = run_class(name, args.examples)
        what = " ".join(case.__doc__.split()).replace("``", "`").replace(":mod:", "")
        if r["escaped"]:
            escaped.append(name)
            print(f"{name}: ESCAPE (exit {r['rc']})\n{r['detail']}", file=sys.stderr)
            row = f"| `{name}` | {what} | {r['tried']} | **escape** | **escape** | {r['seconds']:.0f} s |"
        else:
            row = (f"| `{name}` | {what} | {r['tried']} | {r.get('refused', 0)} | {r.get('answered', 0)} | "
                   f"{r['seconds']:.0f} s |")
        rows.append(row)
        print(row, flush=True)
    total = sum(int(r.split("|")[3]) for r in rows[2:])
    note = (f"\n\n{len(rows) - 2} classes, {total} inputs, "
            f"{'no escapes' if not escaped else 'escapes in ' + ', '.join(escaped)} "
            f"(`python benchmarks/fuzz.py --examples {args.examples}`{', CI=true' if os.environ.get('CI') else ''}).")
    print(note.strip())
    if args.only is None:
        write_between(DOC, BEGIN, END, "\n".join(rows) + note)
    return 1 if escaped else 0


if __name__ == "__main__":
    sys.exit(main())
