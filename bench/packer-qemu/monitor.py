#!/usr/bin/env python3
"""monitor.py OUTDIR -- COMMAND [ARGS...]

Runs COMMAND once and measures it the same way whichever tool it is (packer or kiln):

* every stdout line is stamped with the wall-clock time it arrived
  (OUTDIR/stdout.tsv: "<epoch seconds>\t<line>"). Both tools write a line at a time
  and unbuffered, so this gives sub-second event times where Packer's own
  timestamps have 1 s resolution;
* every INTERVAL seconds (env MONITOR_INTERVAL, default 0.2) the whole process tree
  under COMMAND is sampled from /proc: per process the kernel's peak RSS (VmHWM,
  monotonic, so a sample taken any time before exit sees the true peak up to then)
  and utime+stime, so qemu can be told apart from the tool; for the tool's own
  processes also VmRSS over time (rss_timeline), to see which phase sets the peak;
* the tree's total user/sys CPU comes from wait4() on COMMAND, which includes every
  descendant that was reaped (the tools reap qemu and their plugins).

OUTDIR/monitor.json gets wall/cpu totals and one record per process seen. Stderr of
COMMAND goes to OUTDIR/stderr.log. Exit status is COMMAND's.
"""
import json
import os
import subprocess
import sys
import threading
import time

CLK_TCK = os.sysconf("SC_CLK_TCK")


def role(argv):
    exe = os.path.basename(argv[0]) if argv else "?"
    if exe.startswith("qemu-system"):
        return "qemu-system"
    if exe == "qemu-img":
        return "qemu-img"
    if exe == "packer":
        if len(argv) >= 3 and argv[1] == "plugin":
            return "packer plugin " + argv[2]
        return "packer"
    return exe


def read_stat(pid):
    """(ppid, utime+stime seconds) or None."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            s = f.read()
    except OSError:
        return None
    rest = s[s.rfind(")") + 2:].split()
    # fields after ")": state(0) ppid(1) ... utime(11) stime(12)
    try:
        return int(rest[1]), (int(rest[11]) + int(rest[12])) / CLK_TCK
    except (IndexError, ValueError):
        return None


def read_mem_kib(pid):
    """(VmHWM, VmRSS) in KiB, or None."""
    hwm = rss = None
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    hwm = int(line.split()[1])
                elif line.startswith("VmRSS:"):
                    rss = int(line.split()[1])
    except OSError:
        pass
    return (hwm, rss) if hwm is not None else None


def read_argv(pid):
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return [a.decode(errors="replace") for a in f.read().split(b"\0") if a]
    except OSError:
        return []


class Sampler(threading.Thread):
    def __init__(self, root, interval):
        super().__init__(daemon=True)
        self.root = root
        self.interval = interval
        self.procs = {}  # pid -> record
        self.stop = threading.Event()

    def sample(self):
        parents = {}
        cpu = {}
        for d in os.listdir("/proc"):
            if d.isdigit():
                st = read_stat(int(d))
                if st:
                    parents.setdefault(st[0], []).append(int(d))
                    cpu[int(d)] = st[1]
        stack = [self.root]
        while stack:
            pid = stack.pop()
            stack.extend(parents.get(pid, []))
            rec = self.procs.get(pid)
            if rec is None:
                argv = read_argv(pid)
                if not argv:
                    continue
                rec = self.procs[pid] = {
                    "pid": pid,
                    "role": role(argv),
                    "argv": argv,
                    "hwm_kib": 0,
                    "cpu_s": 0.0,
                    "first_seen": time.time(),
                    "rss_timeline": [],
                }
            mem = read_mem_kib(pid)
            if mem:
                rec["hwm_kib"] = max(rec["hwm_kib"], mem[0])
                # The tool's resident size over time (qemu's is the guest's RAM): kept
                # when it moves by 1 MiB or more, to tell which phase sets the peak.
                tl = rec["rss_timeline"]
                if mem[1] is not None and not rec["role"].startswith("qemu") and (
                    not tl or abs(tl[-1][1] - mem[1]) >= 1024
                ):
                    tl.append((round(time.time(), 2), mem[1]))
            if pid in cpu:
                rec["cpu_s"] = max(rec["cpu_s"], cpu[pid])
            rec["last_seen"] = time.time()

    def run(self):
        while not self.stop.is_set():
            self.sample()
            self.stop.wait(self.interval)


def main():
    if len(sys.argv) < 4 or sys.argv[2] != "--":
        sys.exit(__doc__)
    out = sys.argv[1]
    cmd = sys.argv[3:]
    os.makedirs(out, exist_ok=True)
    interval = float(os.environ.get("MONITOR_INTERVAL", "0.2"))
    with open(f"{out}/stderr.log", "wb") as err, open(f"{out}/stdout.tsv", "w") as lines:
        t0 = time.time()
        p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err, stdin=subprocess.DEVNULL)
        sampler = Sampler(p.pid, interval)
        sampler.start()
        for raw in p.stdout:
            lines.write(f"{time.time():.3f}\t{raw.decode(errors='replace').rstrip()}\n")
            lines.flush()
        # One last sample before reaping: the tool's own VmHWM/CPU as late as possible.
        sampler.sample()
        _, status, ru = os.wait4(p.pid, 0)
        t1 = time.time()
        sampler.stop.set()
        sampler.join()
    rc = os.waitstatus_to_exitcode(status)
    json.dump(
        {
            "cmd": cmd,
            "t0": t0,
            "t1": t1,
            "wall_s": t1 - t0,
            "rc": rc,
            "tree_user_s": ru.ru_utime,
            "tree_sys_s": ru.ru_stime,
            "interval_s": interval,
            "procs": sorted(sampler.procs.values(), key=lambda r: r["pid"]),
        },
        open(f"{out}/monitor.json", "w"),
        indent=1,
    )
    sys.exit(rc)


if __name__ == "__main__":
    main()
