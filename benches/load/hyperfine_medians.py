#!/usr/bin/env python3
"""Median, min and max of each command of a `hyperfine --export-json` file, as a Markdown table.

usage: hyperfine_medians.py HYPERFINE_JSON
"""
import json
import sys

print("| command | median ms | min ms | max ms |")
print("|---|---:|---:|---:|")
for r in json.load(open(sys.argv[1]))["results"]:
    cmd = r["command"]
    print(f"| `{cmd}` | {r['median'] * 1000:.0f} | {r['min'] * 1000:.0f} | {r['max'] * 1000:.0f} |")
