"""Run every ``benchmarks/bench_*.py`` in turn (the ``make bench`` entry point).

Each benchmark runs in its own process with the interpreter running this script, its
output shown as it comes; arguments after ``--`` go to every benchmark (e.g. ``--quick``
where they accept it). Exits non-zero when any benchmark fails.

Usage::

    python benchmarks/run_all.py [--only loader,nmm] [-- ARGS...]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    extra: list[str] = []
    if "--" in argv:
        cut = argv.index("--")
        argv, extra = argv[:cut], argv[cut + 1:]
    ap = argparse.ArgumentParser(description="Run every benchmarks/bench_*.py in turn.")
    ap.add_argument("--only", help="comma-separated names (bench_<name>.py) to run")
    args = ap.parse_args(argv)
    scripts = sorted(HERE.glob("bench_*.py"))
    if args.only:
        wanted = {name.strip() for name in args.only.split(",")}
        unknown = wanted - {p.stem[len("bench_"):] for p in scripts}
        if unknown:
            print(f"error: no benchmark named {sorted(unknown)}; have "
                  f"{[p.stem[len('bench_'):] for p in scripts]}", file=sys.stderr)
            return 2
        scripts = [p for p in scripts if p.stem[len("bench_"):] in wanted]
    failed = []
    for script in scripts:
        print(f"\n=== {script.name} ===", flush=True)
        t0 = time.perf_counter()
        rc = subprocess.call([sys.executable, str(script), *extra], cwd=HERE.parent)
        print(f"=== {script.name}: {'ok' if rc == 0 else f'FAILED (exit {rc})'} in "
              f"{time.perf_counter() - t0:.0f} s ===", flush=True)
        if rc != 0:
            failed.append(script.name)
    if failed:
        print(f"\n{len(failed)} benchmark(s) failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
