"""The long fuzz of the API before a release: schemathesis against a real gateway (Redis, an Ollama double),
every operation, every phase (schema examples, coverage, random fuzzing, stateful sequences through the
schema's links), the contract's checks (no server error; status code, content type and body as the schema
says). `make test` runs a bounded one (tests/gateway/test_api_fuzz.py); this one generates tens of thousands
of cases.

    python -m bench.fuzz                                          # deterministic, --max-examples 100: ~5,000 cases
    python -m bench.fuzz --random --seed 11 --max-examples 800    # cases from a seed: ~24,000, a few minutes

Each failure is printed with its reproduction (a curl command); the exit code is schemathesis's (0: none).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from testkit.api_fuzz import PHASES, fuzz_stack, run_schemathesis


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--max-examples", type=int, default=100, help="cases per operation and phase")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--random", action="store_true", help="not deterministic: --seed picks the cases")
    parser.add_argument("--phases", default=",".join(PHASES))
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--max-time", type=float, default=None, help="seconds; fuzzing repeats until spent")
    parser.add_argument("--report-dir", default=None, help="also write JUnit and NDJSON reports here")
    args = parser.parse_args(argv)
    reports = str(Path(args.report_dir).resolve()) if args.report_dir else None  # schemathesis runs elsewhere
    extra = ["--report", "junit,ndjson", "--report-dir", reports] if reports else []
    with fuzz_stack() as url:
        result = run_schemathesis(
            url,
            max_examples=args.max_examples,
            seed=args.seed,
            phases=args.phases.split(","),
            workers=args.workers,
            max_time_s=args.max_time,
            deterministic=not args.random,
            extra=extra,
        )
    print(result.output)
    print(
        f"fuzz: {result.operations} operations, {result.cases} cases, {result.seconds:.0f} s, seed {args.seed}, "
        f"max-examples {args.max_examples}: {'no failures' if result.ok else 'FAILED'}"
    )
    return result.returncode


if __name__ == "__main__":
    sys.exit(main())
