"""The load guard every benchmark script shares: was the machine quiet while we measured?

The load average cannot answer that alone: it counts our own benchmark threads too (a quiet
2-core machine running a 2-thread benchmark shows ~2). So each round also measures the CPU time
*others* used: the machine's busy jiffies from /proc/stat (steal included: a hypervisor taking
our cores is noise as well) minus the CPU time of our own processes, over the round's wall time.
A round is noisy when that foreign load exceeds `max_foreign_cores`; a result with a noisy
round is refused unless the caller allows it, and then it is written with `"noisy": true`
(scripts/readme_tables.py marks such tables). The JSON also gets the machine, library
versions, the command and the load average before and after every round.
"""
from __future__ import annotations

import os
import platform
import shlex
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

DEFAULT_MAX_FOREIGN_CORES = 0.25
_HZ = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


class MachineBusy(RuntimeError):
    """Raised by `LoadGuard.check` when a round was noisy and noisy results are not allowed."""


def machine() -> dict:
    cpu = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                mem = round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "memory_gib": mem, "platform": platform.platform()}


def versions() -> dict:
    from exporter.build import versions as library_versions

    return library_versions()


def command(script: str, argv: Iterable[str] | None = None) -> str:
    return shlex.join(["python", script, *(sys.argv[1:] if argv is None else list(argv))])


def _busy_jiffies() -> int:
    """All CPUs' non-idle jiffies (user, nice, system, irq, softirq, steal)."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq = fields[:7]
    steal = fields[7] if len(fields) > 7 else 0
    return user + nice + system + irq + softirq + steal


def _process_jiffies(pid: int) -> int:
    """utime + stime of a live process (all its threads), 0 when it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            text = f.read()
    except OSError:
        return 0
    rest = text[text.rindex(")") + 2:].split()
    return int(rest[11]) + int(rest[12])  # fields 14 and 15 of proc(5)


def _own_jiffies(pids: Iterable[int]) -> int:
    return sum(_process_jiffies(p) for p in pids)


def load_average() -> list[float]:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return []


@dataclass
class LoadGuard:
    """Wrap every measured round in `with guard.round(pids):` (`pids`: our worker processes;
    this process is always counted as ours)."""

    max_foreign_cores: float = DEFAULT_MAX_FOREIGN_CORES
    allow_noisy: bool = False
    rounds: list[dict] = field(default_factory=list)

    def sample_idle(self, seconds: float = 3.0) -> float:
        """Foreign load while we do nothing (before the first round), in cores."""
        start = self._snapshot([])
        time.sleep(seconds)
        return self._foreign(start, self._snapshot([]))

    def _snapshot(self, pids) -> tuple[float, int, int, list[int]]:
        pids = [os.getpid(), *pids]
        return time.monotonic(), _busy_jiffies(), _own_jiffies(pids), pids

    @staticmethod
    def _foreign(start, end) -> float:
        wall = max(end[0] - start[0], 1e-6) * _HZ
        return max(0.0, ((end[1] - start[1]) - (end[2] - start[2])) / wall)

    def round(self, pids: Iterable[int] = (), label: str | None = None):
        return _Round(self, list(pids), label)

    @property
    def noisy_rounds(self) -> list[int]:
        return [r["round"] for r in self.rounds if r["noisy"]]

    @property
    def noisy(self) -> bool:
        return bool(self.noisy_rounds)

    def summary(self) -> dict:
        foreign = [r["foreign_cores"] for r in self.rounds]
        return {
            "max_foreign_cores": self.max_foreign_cores,
            "rule": "a round is noisy when other processes used more than max_foreign_cores CPUs on average "
                    "(/proc/stat busy+steal jiffies minus our own processes' CPU time, over the round's wall time)",
            "foreign_cores_max": max(foreign, default=None),
            "noisy": self.noisy,
            "noisy_rounds": self.noisy_rounds,
            "rounds": self.rounds,
        }

    def check(self) -> None:
        """Raise MachineBusy when a round was noisy and noisy results are not allowed."""
        if self.noisy and not self.allow_noisy:
            worst = max(r["foreign_cores"] for r in self.rounds)
            raise MachineBusy(
                f"the machine was busy during round(s) {', '.join(map(str, self.noisy_rounds))} (other processes "
                f"used up to {worst:.2f} CPUs, limit {self.max_foreign_cores}); no result written. Rerun on a quiet "
                "machine, or pass --allow-noisy to write it marked noisy")

    def refusal(self) -> str | None:
        """None, or why the result must not be written (check()'s message): what a script prints
        as its one `error:` line before exiting with 3."""
        try:
            self.check()
        except MachineBusy as exc:
            return str(exc)
        return None

    def stamp(self, report: dict, script: str, argv=None) -> dict:
        """Adds machine, versions, command, load and `noisy` to a result dict (in place)."""
        report.setdefault("machine", machine())
        report.setdefault("versions", versions())
        report.setdefault("command", command(script, argv))
        report["load"] = self.summary()
        report["noisy"] = self.noisy
        return report


class _Round:
    def __init__(self, guard: LoadGuard, pids: list[int], label: str | None):
        self.guard, self.pids, self.label = guard, pids, label

    def __enter__(self):
        self.load_before = load_average()
        self.start = self.guard._snapshot(self.pids)
        return self

    def __exit__(self, exc_type, exc, tb):
        end = self.guard._snapshot(self.pids)
        foreign = self.guard._foreign(self.start, end)
        entry = {"round": len(self.guard.rounds), "wall_s": round(end[0] - self.start[0], 3),
                 "load_before": self.load_before, "load_after": load_average(),
                 "foreign_cores": round(foreign, 3), "noisy": foreign > self.guard.max_foreign_cores}
        if self.label:
            entry["label"] = self.label
        self.guard.rounds.append(entry)
        return False


def add_arguments(parser) -> None:
    """The guard's command-line flags, the same in every benchmark script."""
    parser.add_argument("--allow-noisy", action="store_true",
                        help="write the result even if other processes loaded the machine (marked noisy)")
    parser.add_argument("--max-foreign-cores", type=float, default=DEFAULT_MAX_FOREIGN_CORES,
                        help="CPUs other processes may use on average during a round before it counts as noisy "
                             f"(default {DEFAULT_MAX_FOREIGN_CORES})")


def from_args(args) -> LoadGuard:
    return LoadGuard(max_foreign_cores=args.max_foreign_cores, allow_noisy=args.allow_noisy)
