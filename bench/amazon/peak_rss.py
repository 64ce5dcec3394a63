#!/usr/bin/env python3
"""peak_rss.py OUTFILE -- COMMAND...

Runs COMMAND and samples /proc every 20 ms for the sum of VmRSS over it and every
descendant (Packer runs its builder as a plugin subprocess; kiln is one process), writing
the peak in KiB to OUTFILE. Exits with COMMAND's status.
"""
import os
import subprocess
import sys
import time


def tree(root):
    kids = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                s = f.read()
            ppid = int(s[s.rfind(")") + 2:].split()[1])
            kids.setdefault(ppid, []).append(int(d))
        except (OSError, ValueError, IndexError):
            pass
    out, todo = [], [root]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(kids.get(p, []))
    return out


def rss(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def main():
    outfile = sys.argv[1]
    cmd = sys.argv[3:] if sys.argv[2] == "--" else sys.argv[2:]
    proc = subprocess.Popen(cmd)
    peak = 0
    while proc.poll() is None:
        peak = max(peak, sum(rss(p) for p in tree(proc.pid)))
        time.sleep(0.02)
    with open(outfile, "w") as f:
        f.write(f"{peak}\n")
    sys.exit(proc.returncode)


if __name__ == "__main__":
    main()
