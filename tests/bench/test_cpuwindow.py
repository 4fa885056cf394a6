"""The benchmarks' CPU window: /proc/stat's columns, the host's stolen time kept apart from the kernel's."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

import cpuwindow  # bench/ is not a package: found through the path above


def _stat(path: Path, user, nice, system, idle, iowait, irq, softirq, steal) -> None:
    path.write_text(f"cpu  {user} {nice} {system} {idle} {iowait} {irq} {softirq} {steal} 0 0\ncpu0 1 2 3\n")


def test_stolen_time_is_busy_but_not_the_kernels(tmp_path, monkeypatch):
    stat = tmp_path / "stat"
    monkeypatch.setattr(cpuwindow, "_PROC_STAT", str(stat))
    _stat(stat, 1000, 0, 500, 9000, 100, 0, 0, 50)
    window = cpuwindow.CpuWindow().start()
    # over the step: user 50 (+10 nice), system 15 (+3 irq, +2 softirq), stolen 10, iowait 5, idle 5
    _stat(stat, 1050, 10, 515, 9005, 105, 3, 2, 60)
    window.stop()

    assert window.used == cpuwindow.CpuTimes(user=60, kernel=20, stolen=10, iowait=5, idle=5)
    shares = window.shares()
    assert shares == {"busy": 0.9, "user": 0.6, "kernel": 0.2, "stolen": 0.1, "iowait": 0.05}
    assert "(user 60%, kernel 20%, stolen 10%), iowait 5%" in window.summary()


def test_windows_add_up_and_a_missing_proc_measures_nothing(tmp_path, monkeypatch):
    one = cpuwindow.CpuWindow()
    one.used = cpuwindow.CpuTimes(user=1, kernel=2, stolen=3, iowait=4, idle=5)
    two = cpuwindow.CpuWindow()
    two.used = cpuwindow.CpuTimes(user=10, kernel=20, stolen=30, iowait=40, idle=50)
    assert cpuwindow.CpuWindow.combined([one, two, cpuwindow.CpuWindow()]).used == cpuwindow.CpuTimes(
        11, 22, 33, 44, 55
    )

    monkeypatch.setattr(cpuwindow, "_PROC_STAT", str(tmp_path / "absent"))
    with cpuwindow.CpuWindow() as window:
        pass
    assert window.shares() is None
    assert window.summary() == "CPU use not measured (no /proc/stat)"
