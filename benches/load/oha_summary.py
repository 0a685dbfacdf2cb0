#!/usr/bin/env python3
"""Check one `oha --output-format json` result and print "p50_us p99_us".

usage: oha_summary.py OHA_JSON EXPECTED_REQUESTS
Exit 1 (with the reason on stderr) unless every one of EXPECTED_REQUESTS requests
got a 2xx answer and oha recorded no error (connection errors, timeouts, ...).
"""
import json
import sys


def main() -> int:
    path, expected = sys.argv[1], int(sys.argv[2])
    with open(path) as f:
        d = json.load(f)
    codes = {str(k): int(v) for k, v in d.get("statusCodeDistribution", {}).items()}
    errors = d.get("errorDistribution", {})
    bad = {k: v for k, v in codes.items() if not k.startswith("2")}
    total = sum(codes.values())
    problems = []
    if bad:
        problems.append(f"non-2xx status codes: {bad}")
    if errors:
        problems.append(f"errors: {errors}")
    if total != expected:
        problems.append(f"{total} responses, expected {expected}")
    if problems:
        print(f"{path}: " + "; ".join(problems), file=sys.stderr)
        return 1
    lp = d["latencyPercentiles"]  # seconds, exact percentiles over every request
    print(f"{lp['p50'] * 1e6:.0f} {lp['p99'] * 1e6:.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
