#!/usr/bin/env python3
"""report.py RESULTS_DIR RUNS

Turns run.sh's raw results (packer-<i>/ and kiln-<i>/ from monitor.py, scp.tsv) into
the markdown summary: medians per tool, kiln/Packer ratios, the goals, and a phase
breakdown. Times come from when each tool's stdout line arrived (same clock and method
for both tools); CPU from wait4() minus the sampled qemu processes; RSS from VmHWM.
"""
import json
import os
import re
import statistics
import sys

UPLOAD_MB = 209715200 / 1e6
MIB = 1024.0

# Markers in each tool's output, as (phase name, regex on the message text). A phase
# runs from its marker to the next phase's marker (the last one to the end of the run).
MARKERS = {
    "packer": [
        ("start→VM started", r"^Retrieving ISO"),
        ("boot→SSH", r"^Starting VM"),
        ("shell step 1", r"^Connected to SSH!"),
        ("upload", r"^Uploading .* => /root/upload-200M\.bin"),
        ("shell step 2 + halt", r"^Provisioning with shell script"),
        ("convert", r"^Converting hard drive"),
        ("manifest + checksum", r"^Running post-processor: manifest"),
        ("compress", r"^Running post-processor: compress"),
    ],
    "kiln": [
        ("start→VM started", r"^Starting build with"),
        ("boot→SSH", r"^Started qemu"),
        ("shell step 1", r"^Connected to SSH!"),
        ("upload", r"^Uploading .* => /root/upload-200M\.bin"),
        ("shell step 2 + halt", r"^Provisioning with shell"),
        ("convert", r"^Converting the disk"),
        ("manifest + checksum", r"^Running post-processor: manifest"),
        ("compress", r"^Running post-processor: compress"),
    ],
}
MARKERS["kiln-ssh"] = MARKERS["kiln"]  # the same kiln build with file_transfer "ssh"


def messages(tool, d):
    """[(arrival time, message)] of the tool's progress lines."""
    out = []
    for line in open(f"{d}/stdout.tsv", errors="replace"):
        t, _, text = line.rstrip("\n").partition("\t")
        t = float(t)
        if tool == "packer":
            m = re.match(r"^==> bench(?: \([\w-]+\))?: (.*)$", text)
            if m:
                out.append((t, m.group(1)))
        else:
            try:
                ev = json.loads(text)
            except ValueError:
                continue
            if ev.get("type") in ("say", "message") and ev.get("build"):
                out.append((t, ev["message"]))
            elif ev.get("type") == "step-end":
                out.append((t, f"<step-end {ev.get('kind')} {ev.get('seconds')}>"))
    return out


def first(msgs, pattern, after=0.0):
    for t, m in msgs:
        if t >= after and re.search(pattern, m):
            return t
    return None


def one_run(tool, d):
    mon = json.load(open(f"{d}/monitor.json"))
    t0, t1 = mon["t0"], mon["t1"]
    msgs = messages(tool, d)
    r = {"wall_s": mon["wall_s"]}

    # Phases: marker to next marker.
    marks = []
    for name, pat in MARKERS[tool]:
        t = first(msgs, pat, marks[-1][1] if marks else 0.0)
        if t is None:
            raise SystemExit(f"{d}: no line matching {pat!r}: the tool's output changed; update MARKERS")
        marks.append((name, t))
    marks[0] = (marks[0][0], t0)
    windows = []
    for (name, t), nxt in zip(marks, marks[1:] + [("end", t1)]):
        r[f"phase {name}"] = nxt[1] - t
        windows.append((name, t, nxt[1]))
    r["t_ssh_s"] = dict(marks)["shell step 1"] - t0
    r["upload_s"] = r["phase upload"]
    r["upload_MBps"] = UPLOAD_MB / r["upload_s"]
    if tool.startswith("kiln"):
        m = first(msgs, r"^Using (kvm|tcg) acceleration")
        r["kiln accelerator probe s"] = m - dict(marks)["start→VM started"]
        up = [m for _, m in msgs if m.startswith("<step-end file ")]
        if up:
            r["kiln file step (its own clock) MB/s"] = UPLOAD_MB / float(up[0].split()[2].rstrip(">"))

    tree_cpu = mon["tree_user_s"] + mon["tree_sys_s"]
    procs = mon["procs"]
    is_probe = lambda p: "kiln-kvm-probe" in " ".join(p["argv"])
    vm = [p for p in procs if p["role"] == "qemu-system" and not is_probe(p)]
    probe = [p for p in procs if p["role"] == "qemu-system" and is_probe(p)]
    tool_procs = [p for p in procs if not p["role"].startswith("qemu")]
    r["tree_cpu_s"] = tree_cpu
    r["qemu_vm_cpu_s"] = sum(p["cpu_s"] for p in vm)
    r["probe_cpu_s"] = sum(p["cpu_s"] for p in probe)
    r["tool_cpu_s"] = tree_cpu - r["qemu_vm_cpu_s"] - r["probe_cpu_s"]
    r["tool_rss_sum_mib"] = sum(p["hwm_kib"] for p in tool_procs) / MIB
    r["tool_rss_max_mib"] = max((p["hwm_kib"] for p in tool_procs), default=0) / MIB
    r["tool_procs"] = len(tool_procs)
    r["qemu_vm_rss_mib"] = max((p["hwm_kib"] for p in vm), default=0) / MIB
    r["qemu_img_rss_mib"] = max((p["hwm_kib"] for p in procs if p["role"] == "qemu-img"), default=0) / MIB
    r["per_process_rss"] = [(p["role"], p["hwm_kib"] / MIB) for p in tool_procs]
    # Resident size of the tool's processes, summed, at its highest within each phase.
    events = sorted(
        (t, i, kib) for i, p in enumerate(tool_procs) for t, kib in p.get("rss_timeline", [])
    )
    if events:
        # The timeline only has changes: a phase also sees the size in force when it began.
        totals, cur = [], {}
        for t, i, kib in events:
            cur[i] = kib
            totals.append((t, sum(cur.values()) / MIB))
        peak_in = {}
        for name, a, b in windows:
            before = [v for t, v in totals if t < a]
            inside = [v for t, v in totals if a <= t < b]
            vals = inside + before[-1:]
            if vals:
                peak_in[name] = max(vals)
        r["rss_by_phase"] = peak_in
    sizes = dict(l.split() for l in open(f"{d}/outputs.txt"))
    for path, size in sizes.items():
        key = "tar_gz_mib" if path.endswith(".tar.gz") else "qcow2_mib"
        r[key] = int(size) / 1048576
    return r


def med(xs):
    return statistics.median(xs) if xs else float("nan")


def fmt(xs, digits=1):
    if not xs:
        return "–"
    if len(xs) == 1:
        return f"{xs[0]:.{digits}f}"
    return f"{med(xs):.{digits}f} ({min(xs):.{digits}f}–{max(xs):.{digits}f})"


def main():
    res, runs = sys.argv[1], int(sys.argv[2])
    data = {"packer": [], "kiln": [], "kiln-ssh": []}
    for i in range(1, runs + 1):
        for tool in data:
            d = f"{res}/{tool}-{i}"
            if os.path.exists(f"{d}/monitor.json"):
                data[tool].append(one_run(tool, d))
    scp = {}
    if os.path.exists(f"{res}/scp.tsv"):
        for line in open(f"{res}/scp.tsv"):
            k, v = line.split("\t")
            scp.setdefault(k, []).append(float(v))
    scp_sftp = [UPLOAD_MB / s for s in scp.get("scp_sftp_s", [])]
    scp_legacy = [UPLOAD_MB / s for s in scp.get("scp_legacy_s", [])]
    json.dump({"runs": data, "scp": scp}, open(f"{res}/values.json", "w"), indent=1)

    P, K, S = data["packer"], data["kiln"], data["kiln-ssh"]
    col = lambda rows, k: [r[k] for r in rows if k in r]

    def ratio_of(a, b):
        return med(a) / med(b) if a and b and med(b) else float("nan")

    def row(label, key, digits=1, goal="", invert=False):
        p, k, ss = col(P, key), col(K, key), col(S, key)
        ratio = ratio_of(k, p)
        extra = f" {fmt(ss, digits)} | {ratio_of(ss, p):.2f}× |" if S else ""
        print(f"| {label} | {fmt(p, digits)} | {fmt(k, digits)} | **{ratio:.2f}×** |{extra} {goal} |")
        return ratio

    print("```")
    print(open(f"{res}/versions.txt").read().rstrip())
    print("```\n")
    print(f"Runs per tool: Packer {len(P)}, kiln {len(K)} (alternating; median (min–max)).\n")
    if S:
        print("| metric | Packer 1.6.6 | kiln | kiln / Packer | kiln, uploads over SSH | that / Packer | goal |")
        print("|---|---|---|---|---|---|---|")
    else:
        print("| metric | Packer 1.6.6 | kiln | kiln / Packer | goal |")
        print("|---|---|---|---|---|")
    wall = row("whole build, wall s", "wall_s", goal="≤ 0.60×")
    row("start → SSH connected, s", "t_ssh_s")
    row("upload 200 MiB, MB/s (10⁶ B/s)", "upload_MBps")
    row("tool CPU user+sys, s (tree minus qemu-system)", "tool_cpu_s")
    row("qemu (build VM) CPU, s", "qemu_vm_cpu_s")
    rss = row("tool peak RSS, summed over its processes, MiB", "tool_rss_sum_mib", goal="kiln ≤ 60 MiB")
    row("tool processes (excl. qemu, qemu-img)", "tool_procs", digits=0)
    row("qemu (build VM) peak RSS, MiB", "qemu_vm_rss_mib")
    row("output qcow2, MiB", "qcow2_mib")
    row("output .tar.gz, MiB", "tar_gz_mib")

    for name, rows in (("kiln", K), ("kiln (uploads over SSH)", S)):
        pairs = [k["wall_s"] / p["wall_s"] for p, k in zip(P, rows)]
        if pairs:
            print(f"\n{name} / Packer wall time per round (paired, same round): "
                  + ", ".join(f"{x:.2f}×" for x in pairs) + f"; median {med(pairs):.2f}×.")

    print("\nUpload against plain OpenSSH `scp` of the same file into a VM booted the same way:\n")
    # The SSH variant is the like-for-like comparison with scp; kiln's default is shown too.
    ssh_rows = S or K
    k_up = med(col(ssh_rows, "upload_MBps"))
    print("| | MB/s | kiln over SSH / this |")
    print("|---|---|---|")
    for label, xs in (("`scp` (OpenSSH 9.2 default: SFTP protocol, chacha20-poly1305)", scp_sftp),
                      ("`scp -O` (legacy SCP protocol, which Packer speaks)", scp_legacy),
                      ("Packer `file` provisioner", col(P, "upload_MBps")),
                      ("kiln `file` step over SSH", col(S, "upload_MBps")),
                      ("kiln `file` step, default (virtio disk)", col(K, "upload_MBps"))):
        print(f"| {label} | {fmt(xs)} | {k_up / med(xs):.2f}× |" if xs else f"| {label} | – | – |")
    per_round = len(scp_sftp) // max(len(ssh_rows), 1)
    if per_round and len(scp_sftp) == per_round * len(ssh_rows) and len(scp.get("scp_vm_boot_to_ssh_s", [])) == len(ssh_rows):
        # run.sh boots one scp VM per round: pair each kiln build with its round's scp.
        paired = [k["upload_MBps"] / med(scp_sftp[i * per_round:(i + 1) * per_round]) for i, k in enumerate(ssh_rows)]
        print("\nkiln upload over SSH / `scp` per round (same round): "
              + ", ".join(f"{x:.2f}×" for x in paired) + f"; median {med(paired):.2f}×.")
    if "scp_vm_boot_to_ssh_s" in scp:
        print(f"\nPlain qemu boot → first `ssh true` (0.1 s polling, same VM): {fmt(scp['scp_vm_boot_to_ssh_s'])} s.")

    print("\nPhases (s, median; from when each tool's progress line arrived):\n")
    print("| phase | Packer | kiln | kiln, uploads over SSH |")
    print("|---|---|---|---|")
    for name, _ in MARKERS["packer"]:
        print(f"| {name} | {fmt(col(P, 'phase ' + name))} | {fmt(col(K, 'phase ' + name))} "
              f"| {fmt(col(S, 'phase ' + name))} |")
    print(f"| (kiln: accelerator probe, part of start→VM started) | | {fmt(col(K, 'kiln accelerator probe s'))} |")
    print(f"| (kiln: probe qemu's CPU, not in tool CPU above) | | {fmt(col(K, 'probe_cpu_s'))} |")

    print("\nPer-process peak RSS (MiB) of the last round:\n")
    for tool, rows in data.items():
        if rows:
            parts = ", ".join(f"{r} {m:.1f}" for r, m in rows[-1]["per_process_rss"])
            print(f"* {tool}: {parts}; qemu-img {rows[-1]['qemu_img_rss_mib']:.1f} (not counted)")

    print("\nTool resident size (VmRSS, summed over its processes), highest sample per phase, "
          "last round, MiB:\n")
    print("| phase | Packer | kiln |")
    print("|---|---|---|")
    byp = {t: (rows[-1].get("rss_by_phase", {}) if rows else {}) for t, rows in data.items()}
    for name, _ in MARKERS["packer"]:
        cell = lambda t: f"{byp[t][name]:.1f}" if name in byp[t] else "–"
        print(f"| {name} | {cell('packer')} | {cell('kiln')} |")

    print("\nGoals:\n")
    up_ratio = k_up / med(scp_sftp) if scp_sftp else float("nan")
    k_rss = med(col(K, "tool_rss_sum_mib"))
    ok = lambda b: "met" if b else "**missed**"
    print(f"* whole build ≤ 0.60× Packer: {wall:.2f}× — {ok(wall <= 0.60)}")
    print(f"* upload ≥ 1.0× plain scp into the same VM ({'over SSH' if S else 'default'}): "
          f"{up_ratio:.2f}× — {ok(up_ratio >= 1.0)}")
    print(f"* kiln RSS ≤ 60 MiB in total: {k_rss:.1f} MiB ({rss:.2f}× Packer's) — {ok(k_rss <= 60)}")


if __name__ == "__main__":
    main()
