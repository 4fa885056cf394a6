"""How busy the machine's cores were over a timed step: the user's share, the kernel's, and the host's.

Read from ``/proc/stat`` (every process, the kernel's own threads included),
so a step that spans several processes (a web worker, the store worker, its
SST helpers, a peer) is counted whole. A step near 100 % busy is limited by
the CPU it needs, not by waiting; its kernel share is time spent moving
bytes (socket and pipe copies, page-cache writes and reads, page faults,
writeback), which the one-core floors the benchmarks compare against
(AES-GCM, SHA-256 over bytes already in memory) do not pay. On a virtual
machine, *stolen* is time a core wanted to run and the host ran something
else: it counts as busy (the step was waiting for a CPU), and it is the
host's, not this machine's kernel's.

    with CpuWindow() as cpu:
        step()
    print(cpu.summary())   # "2 cores 93% busy (user 51%, kernel 40%, stolen 2%), iowait 3%"

or ``cpu = CpuWindow().start()`` ... ``cpu.stop()`` where a step spans a function.
"""

from __future__ import annotations

import os
from dataclasses import astuple, dataclass

_PROC_STAT = "/proc/stat"


@dataclass(frozen=True)
class CpuTimes:
    """Cumulative ticks of all cores, by kind."""

    user: int
    kernel: int
    stolen: int
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
        # user nice system idle iowait irq softirq steal ...; older kernels give fewer
        ticks = ([int(value) for value in fields[1:9]] + [0] * 8)[:8]
        user, nice, system, idle, iowait, irq, softirq, steal = ticks
        return cls(user=user + nice, kernel=system + irq + softirq, stolen=steal, iowait=iowait, idle=idle)

    def __add__(self, other: CpuTimes) -> CpuTimes:
        return CpuTimes(*(a + b for a, b in zip(astuple(self), astuple(other), strict=True)))

    def __sub__(self, other: CpuTimes) -> CpuTimes:
        return CpuTimes(*(a - b for a, b in zip(astuple(self), astuple(other), strict=True)))


class CpuWindow:
    """The cores' use between :meth:`start` and :meth:`stop` (or a ``with`` block); nothing without /proc."""

    def __init__(self) -> None:
        self._start: CpuTimes | None = None
        self.used: CpuTimes | None = None

    def start(self) -> CpuWindow:
        self._start = CpuTimes.now()
        return self

    def stop(self) -> None:
        end = CpuTimes.now()
        if self._start is not None and end is not None:
            self.used = end - self._start

    @classmethod
    def combined(cls, windows: list[CpuWindow]) -> CpuWindow:
        """One window for several timed steps: their ticks added up."""
        whole = cls()
        for window in windows:
            if window.used is not None:
                whole.used = window.used if whole.used is None else whole.used + window.used
        return whole

    def __enter__(self) -> CpuWindow:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def shares(self) -> dict[str, float] | None:
        """Fractions of all cores' time: ``busy`` (user, kernel and stolen), ``user``, ``kernel``, ``stolen``,
        ``iowait``."""
        used = self.used
        if used is None:
            return None
        total = used.user + used.kernel + used.stolen + used.iowait + used.idle
        if total <= 0:
            return None
        return {
            "busy": (used.user + used.kernel + used.stolen) / total,
            "user": used.user / total,
            "kernel": used.kernel / total,
            "stolen": used.stolen / total,
            "iowait": used.iowait / total,
        }

    def summary(self) -> str:
        shares = self.shares()
        if shares is None:
            return "CPU use not measured (no /proc/stat)"
        return (
            f"{os.cpu_count()} cores {shares['busy']:.0%} busy (user {shares['user']:.0%}, "
            f"kernel {shares['kernel']:.0%}, stolen {shares['stolen']:.0%}), iowait {shares['iowait']:.0%}"
        )
