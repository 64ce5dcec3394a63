#!/usr/bin/env python3
"""incr_report.py RESULTS_DIR RUNS

Turns incremental.sh's results (<variant>-<round>/monitor.json from monitor.py,
cache.txt, load.tsv) into summary.md: wall time per variant as median (min-max), its
ratio to Packer's full build and to kiln's own full build (--no-cache), per round and
of the medians, the cache's cost on a cold build and the three goals of issue 14.
"""
import json
import os
import statistics
import sys

VARIANTS = [
    ("packer", "Packer full build (= its rebuild after any change: no step cache)"),
    ("kiln-nocache", "kiln full build, `--no-cache`"),
    ("kiln-cold", "kiln full build, cache on, empty cache (records every step)"),
    ("kiln-mem", "kiln rebuild, last step changed (memory restore, no boot)"),
    ("kiln-disk", "kiln rebuild, last step changed, `KILN_CACHE_MEMORY=0` (boots the cached disk)"),
    ("kiln-same", "kiln rebuild, nothing changed"),
]


def walls(res, runs, v):
    out = []
    for i in range(1, runs + 1):
        p = f"{res}/{v}-{i}/monitor.json"
        out.append(json.load(open(p))["wall_s"] if os.path.exists(p) else None)
    return out


def split(res, runs, v):
    """Per round: seconds from spawn to the "Gracefully halting" line (boot or restore,
    the steps, recording their state) and from it to the end (shutdown, convert,
    post-processors: the same work in every variant)."""
    vm, tail = [], []
    for i in range(1, runs + 1):
        d = f"{res}/{v}-{i}"
        if not os.path.exists(f"{d}/monitor.json"):
            continue
        mon = json.load(open(f"{d}/monitor.json"))
        for line in open(f"{d}/stdout.tsv", errors="replace"):
            t, _, text = line.partition("\t")
            if "Gracefully halting" in text:
                vm.append(float(t) - mon["t0"])
                tail.append(mon["t1"] - float(t))
                break
    return vm, tail


def recording(res, runs, v):
    """Per round: seconds kiln spent between a step's end and its next progress line,
    summed over the steps that ran: recording the step's state (fsfreeze, disk layer,
    savevm) when the cache is on, a few ms without it."""
    out = []
    for i in range(1, runs + 1):
        p = f"{res}/{v}-{i}/stdout.tsv"
        if not os.path.exists(p):
            continue
        total, ended = 0.0, None
        for line in open(p, errors="replace"):
            t, _, text = line.partition("\t")
            try:
                ev = json.loads(text)
            except ValueError:
                continue
            if ev.get("type") == "step-end" and not ev.get("cached"):
                ended = float(t)
            elif ev.get("type") == "say" and ended is not None:
                total += float(t) - ended
                ended = None
        out.append(total)
    return out


def cache_note(res, runs, v):
    seen = set()
    for i in range(1, runs + 1):
        p = f"{res}/{v}-{i}/cache.txt"
        if os.path.exists(p):
            lines = [l.strip() for l in open(p) if l.strip()]
            seen.add("; ".join(dict.fromkeys(lines)) or "none")
    return " / ".join(sorted(seen))


def mmm(xs):
    xs = [x for x in xs if x is not None]
    if not xs:
        return "-", None
    m = statistics.median(xs)
    return f"{m:.1f} ({min(xs):.1f}–{max(xs):.1f})", m


def main():
    res, runs = sys.argv[1], int(sys.argv[2])
    w = {v: walls(res, runs, v) for v, _ in VARIANTS}
    med = {v: mmm(w[v])[1] for v, _ in VARIANTS}
    print(f"RUNS={runs}; wall time in s, median (min–max); ratios of the medians, then per round.\n")
    print("| build | wall s | / Packer full | / kiln full (--no-cache) | start → halt s | of which after steps s | halt → end s | what the cache did |")
    print("|---|---|---|---|---|---|---|---|")
    for v, label in VARIANTS:
        s, m = mmm(w[v])
        def ratio(base):
            if m is None or med[base] is None:
                return "-"
            per = [f"{a / b:.2f}" for a, b in zip(w[v], w[base]) if a and b]
            return f"**{m / med[base]:.2f}×** ({', '.join(per)})"
        vm, tail = split(res, runs, v)
        rec = mmm(recording(res, runs, v))[0] if v != "packer" else "-"
        print(f"| {label} | {s} | {ratio('packer')} | {ratio('kiln-nocache')} | {mmm(vm)[0]} | {rec} | {mmm(tail)[0]} | {cache_note(res, runs, v)} |")
    print("\nstart → halt: boot or restore, the steps, recording their state (\"of which after steps\": from each step's end to kiln's next line, i.e. recording the state); halt → end: shutdown,"
          " qcow2 convert, manifest, checksum, compress (the same work in every variant).\n")
    cost = [c / n - 1 for c, n in zip(w["kiln-cold"], w["kiln-nocache"]) if c and n]
    if cost:
        print(f"Cache's cost on a cold full build (kiln-cold / kiln-nocache − 1): median of rounds "
              f"{statistics.median(cost) * 100:+.1f} % (per round {', '.join(f'{c * 100:+.1f} %' for c in cost)}); "
              f"of the medians {(med['kiln-cold'] / med['kiln-nocache'] - 1) * 100:+.1f} %.\n")
    print("Goals (issue 14): last-step rebuild ≤ 0.25× Packer's full build and ≤ 0.4× kiln's own; cold cost ≤ 10 %.\n")
    for v in ("kiln-mem", "kiln-disk"):
        if med[v] and med["packer"] and med["kiln-nocache"]:
            a, b = med[v] / med["packer"], med[v] / med["kiln-nocache"]
            print(f"- {v}: {a:.2f}× Packer ({'met' if a <= 0.25 else 'missed'}), "
                  f"{b:.2f}× kiln --no-cache ({'met' if b <= 0.4 else 'missed'})")
    if cost:
        c = statistics.median(cost)
        print(f"- cold cost: {c * 100:+.1f} % ({'met' if c <= 0.10 else 'missed'})")
    print()
    sizes = []
    for i in range(1, runs + 1):
        p = f"{res}/cache-mib-{i}.txt"
        if os.path.exists(p):
            sizes.append(open(p).read().strip())
    if sizes:
        print(f"Cache dir after each round's four cached builds: {', '.join(sizes)} MiB.\n")
    if os.path.exists(f"{res}/load.tsv"):
        print("| round | load average (1/5/15 min) before | after |")
        print("|---|---|---|")
        rows = {}
        for line in open(f"{res}/load.tsv"):
            i, when, la = line.rstrip("\n").split("\t")
            rows.setdefault(i, {})[when] = la
        for i, r in rows.items():
            print(f"| {i} | {r.get('before', '-')} | {r.get('after', '-')} |")


main()
