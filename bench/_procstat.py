"""Process CPU accounting, socket drop counters and latency percentiles for bench/.

CPU: /proc/<pid>/stat gives utime/stime in clock ticks (10 ms here), too coarse for a few
seconds at 1000 packets/s. The kernel derives those ticks from the precise runtime
(sum_exec_runtime, /proc/<pid>/task/*/schedstat, ns), split by sampled user/system ratio.
So the total comes from schedstat (ns) and the user/system split from the tick ratio; with
no schedstat the ticks are used as they are.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

CLK_TCK = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class CpuSample:
    utime_ticks: int
    stime_ticks: int
    exec_ns: int  # 0 when schedstat is unavailable


@dataclass(frozen=True)
class CpuDelta:
    total_s: float
    user_s: float
    sys_s: float
    ticks: int  # utime + stime ticks in the window: how much to trust the split


def _stat_fields(pid: int) -> list[str]:
    with open(f"/proc/{pid}/stat") as f:
        raw = f.read()
    # comm (field 2) may contain spaces and parentheses: split after the last ')'.
    return raw[raw.rindex(")") + 2 :].split()


def _exec_ns(pid: int) -> int:
    total = 0
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return 0
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                total += int(f.read().split()[0])
        except (OSError, ValueError, IndexError):
            continue  # thread exited between listdir and open
    return total


def read_cpu(pid: int) -> CpuSample:
    """CPU consumed so far by all threads of pid."""
    fields = _stat_fields(pid)
    # After comm: state is index 0, so utime (field 14) is 11 and stime (field 15) is 12.
    return CpuSample(int(fields[11]), int(fields[12]), _exec_ns(pid))


def cpu_delta(a: CpuSample, b: CpuSample) -> CpuDelta:
    ut = b.utime_ticks - a.utime_ticks
    st = b.stime_ticks - a.stime_ticks
    ticks = ut + st
    if b.exec_ns and a.exec_ns:
        total = (b.exec_ns - a.exec_ns) / 1e9
    else:
        total = ticks / CLK_TCK
    user_frac = ut / ticks if ticks > 0 else 0.5  # no sample: split unknown
    return CpuDelta(total, total * user_frac, total * (1.0 - user_frac), ticks)


def core_busy_s(cpu: int) -> float:
    """Non-idle time of one core so far (all processes), from /proc/stat, in seconds."""
    with open("/proc/stat") as f:
        for line in f:
            if line.startswith(f"cpu{cpu} "):
                v = [int(x) for x in line.split()[1:]]
                # user nice system idle iowait irq softirq steal ...: busy = all but idle, iowait
                return (sum(v[:8]) - v[3] - v[4]) / CLK_TCK
    return 0.0


def udp_drops(port: int) -> int:
    """Kernel receive drops of the IPv4 UDP socket(s) bound to port (rcvbuf overflow)."""
    total = 0
    with open("/proc/net/udp") as f:
        next(f)
        for line in f:
            cols = line.split()
            if int(cols[1].split(":")[1], 16) == port:
                total += int(cols[-1])
    return total


def pin(cpu: int, pid: int = 0) -> bool:
    """Pin pid (0 = this process) to one core; False if the machine lacks that core."""
    if cpu not in os.sched_getaffinity(0) and pid == 0:
        return False
    try:
        os.sched_setaffinity(pid, {cpu})
    except OSError:
        return False
    return True


HIST_US = 50000  # UdpSink.histogram(): 1 µs buckets below 50 ms, then 1 ms buckets


def percentiles_ms(hist: bytes, over: int, max_ns: int, qs: tuple[float, ...]) -> list[float]:
    """Percentiles (ms) of a UdpSink latency histogram; the upper bucket edge is used
    (conservative). Samples past the histogram count as the maximum seen."""
    h = np.frombuffer(hist, dtype=np.int64)
    n = int(h.sum()) + over
    if n == 0:
        return [float("nan")] * len(qs)
    cum = np.cumsum(h)
    out: list[float] = []
    for q in qs:
        rank = max(1, int(np.ceil(q * n)))
        if rank > cum[-1]:
            out.append(max_ns / 1e6)
            continue
        i = int(np.searchsorted(cum, rank))
        out.append((i + 1) / 1000.0 if i < HIST_US else float(50 + i - HIST_US + 1))
    return out
