#!/usr/bin/env python3
"""Per-function costs per request from a callgrind output file.

callgrind_annotate splits a function's cost by the source file of each inlined
piece, which makes Rust profiles hard to read; this reads the file itself and
adds up by function name (the symbol callgrind charged, whatever was inlined
into it), then divides by the number of requests counted.

usage:
  callgrind_top.py FILE [--requests N] [--top 40] [--grep REGEX]
      the top functions by inclusive and by self (exclusive) cost per request
  callgrind_top.py FILE --callees REGEX [--requests N] [--depth 1]
      what the functions matching REGEX call, inclusive cost per request of each
      callee (the call tree under them, --depth levels; below the first level a
      callee's own calls are its calls from everywhere, scaled by the share of its
      inclusive cost that this caller accounts for, as gprof does)
  callgrind_top.py FILE --callers REGEX [--requests N]
      who calls the functions matching REGEX, and the inclusive cost of those calls
  callgrind_top.py FILE --diff BASE_FILE [--requests N] [--base-requests M] [--top 40]
      self cost per request of each function in FILE minus in BASE_FILE

N defaults to FILE's sibling FILE-without-.out + '.requests' (written by run.sh with
INSTR_KEEP), else 1. Inclusive cost counts a function's own instructions and all its
calls, except calls to itself (recursion); a function that is called from several
places has the sum.
"""
import argparse
import collections
import os
import re
import sys


def parse(path):
    """-> (totals, self_cost{fn}, calls{(caller, callee)} -> [count, inclusive])"""
    names = {"fn": {}, "fl": {}, "ob": {}}
    self_cost = collections.Counter()
    calls = {}
    fn = None
    pending = None  # (callee, count) awaiting its cost line
    totals = 0

    def name(kind, rest):
        rest = rest.strip()
        m = re.match(r"\((\d+)\)(?:\s+(.*))?$", rest)
        if not m:
            return rest
        if m.group(2) is not None:
            names[kind][m.group(1)] = m.group(2)
            return m.group(2)
        return names[kind].get(m.group(1), "?" + m.group(1))

    with open(path, errors="replace") as f:
        for line in f:
            if not line or line[0] == "\n":
                continue
            c = line[0]
            if c.isdigit() or c in "+-*":
                parts = line.split()
                if len(parts) < 2:
                    continue
                cost = int(parts[1])
                if pending is not None:
                    callee, count = pending
                    e = calls.setdefault((fn, callee), [0, 0])
                    e[0] += count
                    e[1] += cost
                    pending = None
                else:
                    self_cost[fn] += cost
                continue
            key, _, rest = line.partition("=")
            if key == "fn":
                fn = name("fn", rest)
            elif key == "cfn":
                cfn = name("fn", rest)
            elif key == "calls":
                pending = (cfn, int(rest.split()[0]))
            elif key in ("fl", "fi", "fe", "cfl", "cfi"):
                name("fl", rest)
            elif key in ("ob", "cob"):
                name("ob", rest)
            elif key == "totals" or line.startswith("totals:"):
                totals = int(line.split()[1])
            elif line.startswith("summary:"):
                totals = totals or int(line.split()[1])
    return totals, self_cost, calls


def inclusive(self_cost, calls):
    inc = collections.Counter(self_cost)
    for (caller, callee), (_, cost) in calls.items():
        if caller != callee:
            inc[caller] += cost
    return inc


def short(fn, width=150):
    fn = re.sub(r"\[[^\]]*\]$", "", fn).strip()
    return fn if len(fn) <= width else fn[: width - 1] + "…"


def default_requests(path):
    req = re.sub(r"\.out$", "", path) + ".requests"
    if os.path.exists(req):
        return int(open(req).read().split()[0])
    return 1


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("file")
    ap.add_argument("--requests", type=int)
    ap.add_argument("--top", type=int, default=40)
    ap.add_argument("--grep")
    ap.add_argument("--callees")
    ap.add_argument("--callers")
    ap.add_argument("--depth", type=int, default=1)
    ap.add_argument("--min", type=float, default=20, help="hide rows under this many per request")
    ap.add_argument("--diff")
    ap.add_argument("--base-requests", type=int)
    a = ap.parse_args()
    n = a.requests or default_requests(a.file)
    totals, self_cost, calls = parse(a.file)
    total = totals or sum(self_cost.values())
    print(f"{a.file}: {total:,} instructions, {n:,} requests, {total / n:,.0f} per request\n")

    if a.diff:
        bn = a.base_requests or default_requests(a.diff)
        btot, bself, _ = parse(a.diff)
        print(f"base {a.diff}: {btot:,} instructions, {bn:,} requests, {btot / bn:,.0f} per request\n")
        rows = []
        for f in set(self_cost) | set(bself):
            d = self_cost.get(f, 0) / n - bself.get(f, 0) / bn
            rows.append((d, f))
        rows.sort(key=lambda r: -abs(r[0]))
        print("| self per request, FILE − BASE | function |\n|---:|---|")
        for d, f in rows[: a.top]:
            print(f"| {d:+,.0f} | `{short(f)}` |")
        return

    inc = inclusive(self_cost, calls)
    if a.callees or a.callers:
        rx = re.compile(a.callees or a.callers)
        roots = [f for f in inc if f and rx.search(f)]
        if a.callers:
            for r in sorted(roots, key=lambda f: -inc[f]):
                print(f"### {short(r)}: inclusive {inc[r] / n:,.0f}, self {self_cost[r] / n:,.0f} per request\n")
                rows = [(cost, cnt, caller) for (caller, callee), (cnt, cost) in calls.items() if callee == r]
                for cost, cnt, caller in sorted(rows, reverse=True):
                    if cost / n >= a.min:
                        print(f"  {cost / n:>10,.0f}  {cnt / n:>6.2f} calls/req  from {short(caller)}")
                print()
            return
        children = collections.defaultdict(list)
        for (caller, callee), (cnt, cost) in calls.items():
            if caller != callee:
                children[caller].append((cost, cnt, callee))

        def walk(f, depth, indent, share):
            for cost, cnt, callee in sorted(children.get(f, []), reverse=True):
                cost, cnt = cost * share, cnt * share
                if cost / n < a.min:
                    continue
                print(f"{indent}{cost / n:>10,.0f}  {cnt / n:>6.2f}/req  {short(callee)}")
                if depth > 1 and inc[callee]:
                    walk(callee, depth - 1, indent + "    ", min(1.0, cost / inc[callee]))

        for r in sorted(roots, key=lambda f: -inc[f]):
            print(f"### {short(r)}: inclusive {inc[r] / n:,.0f}, self {self_cost[r] / n:,.0f} per request\n")
            walk(r, a.depth, "  ", 1.0)
            print()
        return

    rx = re.compile(a.grep) if a.grep else None
    for title, table, other, oname in (("inclusive", inc, self_cost, "self"),
                                       ("self", self_cost, inc, "inclusive")):
        print(f"Top {a.top} by {title} cost (instructions per request):\n")
        print(f"| {title} | {oname} | function |\n|---:|---:|---|")
        shown = 0
        for f, v in table.most_common():
            if rx and not rx.search(f or ""):
                continue
            print(f"| {v / n:,.0f} | {other[f] / n:,.0f} | `{short(f or '?')}` |")
            shown += 1
            if shown >= a.top:
                break
        print()


if __name__ == "__main__":
    sys.exit(main())
