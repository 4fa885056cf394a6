"""How busy the machine's cores were over a timed step, and how much of that was the kernel's.

Read from ``/proc/stat`` (every process, the kernel's own threads included),
so a step that spans several processes (a web worker, the store worker, its
SST helpers, a peer) is counted whole. A step near 100 % busy is limited by
the CPU it needs, not by waiting; its kernel share is time spent moving
bytes (socket and pipe copies, page-cache writes and reads, page faults,
writeback), which the one-core floors the benchmarks compare against
(AES-GCM, SHA-256 over bytes already in memory) do not pay.

    with CpuWindow() as cpu:
        step()
    print(cpu.summary())   # "2 cores 93% busy (user 51%, kernel 42%), iowait 3%"

or ``cpu = CpuWindow().start()`` ... ``cpu.stop()`` where a step spans a function.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

_PROC_STAT = "/proc/stat"


@dataclass(frozen=True)
class CpuTimes:
    """Cumulative ticks of all cores, by kind."""

    user: int
    kernel: int
    iowait: int
    idle: int

    @classmethod
    def now(cls) -> CpuTimes | None:
        try:
            with open(_PROC_STAT) as stat:
                fields = stat.readline().split()
        except OSError:
            return None
        if not fields or fields[0] != "cpu":
            return None
        # user nice system idle iowait irq softirq steal ...
        ticks = [int(value) for value in fields[1:9]] + [0] * max(0, 9 - len(fields))
        user, nice, system, idle, iowait, irq, softirq, steal = ticks[:8]
        return cls(user=user + nice, kernel=system + irq + softirq + steal, iowait=iowait, idle=idle)


class CpuWindow:
    """The cores' use between entering and leaving the ``with`` block (nothing on a system without /proc)."""

    def __init__(self) -> None:
        self._start: CpuTimes | None = None
        self.used: CpuTimes | None = None

    def start(self) -> CpuWindow:
        self._start = CpuTimes.now()
        return self

    def stop(self) -> None:
        end = CpuTimes.now()
        if self._start is None or end is None:
            return
        start = self._start
        self.used = CpuTimes(
            user=end.user - start.user,
            kernel=end.kernel - start.kernel,
            iowait=end.iowait - start.iowait,
            idle=end.idle - start.idle,
        )

    @classmethod
    def combined(cls, windows: list[CpuWindow]) -> CpuWindow:
        """One window for several timed steps: their ticks added up."""
        whole = cls()
        measured = [window.used for window in windows if window.used is not None]
        if measured:
            whole.used = CpuTimes(
                user=sum(used.user for used in measured),
                kernel=sum(used.kernel for used in measured),
                iowait=sum(used.iowait for used in measured),
                idle=sum(used.idle for used in measured),
            )
        return whole

    def __enter__(self) -> CpuWindow:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def shares(self) -> dict[str, float] | None:
        """Fractions of all cores' time: ``busy``, ``user``, ``kernel``, ``iowait``."""
        used = self.used
        if used is None:
            return None
        total = used.user + used.kernel + used.iowait + used.idle
        if total <= 0:
            return None
        return {
            "busy": (used.user + used.kernel) / total,
            "user": used.user / total,
            "kernel": used.kernel / total,
            "iowait": used.iowait / total,
        }

    def summary(self) -> str:
        shares = self.shares()
        if shares is None:
            return "CPU use not measured (no /proc/stat)"
        return (
            f"{os.cpu_count()} cores {shares['busy']:.0%} busy (user {shares['user']:.0%}, "
            f"kernel {shares['kernel']:.0%}), iowait {shares['iowait']:.0%}"
        )
