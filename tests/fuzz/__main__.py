"""``python -m tests.fuzz``: see :mod:`tests.fuzz`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tests.fuzz import run


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.fuzz", description=__doc__)
    parser.add_argument("--seconds", type=float, default=120.0, help="how long to fuzz")
    parser.add_argument("--seed", type=int, default=1, help="the run's seed")
    parser.add_argument("--workers", type=int, default=2, help="worker processes")
    parser.add_argument("--timeout", type=float, default=20.0,
                        help="seconds an input may take before it counts as a hang (above "
                             "engine.stall.STALL_S, after which a stuck decoder is a refusal)")
    parser.add_argument("--out", type=Path, default=Path("fuzz-out"),
                        help="findings go to OUT/findings (default %(default)s)")
    parser.add_argument("--seeds", nargs="+", default=(), metavar="NAME",
                        help="fuzz only these seed files (tests/fuzz/mutate.py, SEEDS)")
    args = parser.parse_args()
    report = run(args.seconds, args.seed, args.workers, args.out, args.timeout,
                 only=args.seeds)
    print(report.summary())
    for finding in report.findings:
        print(f"\n{finding.kind} at iteration {finding.iteration} ({finding.seed_file}, "
              f"ops {finding.ops}) -> {finding.saved}\n{finding.detail}")
    return 1 if report.findings else 0


if __name__ == "__main__":
    sys.exit(main())
