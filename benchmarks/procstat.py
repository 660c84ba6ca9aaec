"""CPU time and memory of a process tree, read from /proc (Linux only).

CPU is user + system of every live process in the tree plus the time of children they have
already reaped (cutime + cstime), so a worker that exits inside a measurement window is still
counted. RSS is the sum of VmRSS over the tree.
"""

from __future__ import annotations

import os

_CLK_TCK = os.sysconf("SC_CLK_TCK")


def _stat_fields(pid: int) -> list[str] | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            raw = f.read().decode("ascii", "replace")
    except OSError:
        return None
    # The command name (field 2) is in parentheses and may contain spaces or ')'.
    rest = raw[raw.rindex(")") + 2 :].split()
    return rest  # rest[0] is field 3 (state)


def tree_pids(root: int) -> list[int]:
    """``root`` and all its descendants (one scan of /proc)."""
    children: dict[int, list[int]] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        fields = _stat_fields(int(name))
        if fields is None:
            continue
        children.setdefault(int(fields[1]), []).append(int(name))
    out = []
    stack = [root]
    while stack:
        pid = stack.pop()
        out.append(pid)
        stack.extend(children.get(pid, ()))
    return out


def tree_cpu_seconds(root: int) -> float:
    """user + system seconds of the tree rooted at ``root``, reaped children included."""
    ticks = 0
    for pid in tree_pids(root):
        fields = _stat_fields(pid)
        if fields is None:
            continue
        # fields[11..14] are stat fields 14..17: utime, stime, cutime, cstime.
        ticks += int(fields[11]) + int(fields[12]) + int(fields[13]) + int(fields[14])
    return ticks / _CLK_TCK


def tree_rss_kib(root: int) -> int:
    """Sum of VmRSS (KiB) over the tree rooted at ``root``."""
    total = 0
    for pid in tree_pids(root):
        try:
            with open(f"/proc/{pid}/status", "rb") as f:
                for line in f:
                    if line.startswith(b"VmRSS:"):
                        total += int(line.split()[1])
                        break
        except OSError:
            continue
    return total


def machine_busy_seconds() -> float:
    """CPU seconds all cores spent not idle since boot (from /proc/stat)."""
    with open("/proc/stat", "rb") as f:
        parts = f.readline().split()
    values = [int(v) for v in parts[1:]]
    # user nice system idle iowait irq softirq steal guest guest_nice; guest is already in user.
    idle = values[3] + (values[4] if len(values) > 4 else 0)
    total = sum(values[:8])
    return (total - idle) / _CLK_TCK


def self_cpu_seconds() -> float:
    t = os.times()
    return t.user + t.system
