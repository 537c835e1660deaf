"""What the benches read of a process and the machine: CPU seconds, resident memory, busy
time, a py-spy profile, and this machine's ceiling for two CPU-bound processes."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

SPIN = """
import time
n, end = 0, time.perf_counter() + {seconds}
while time.perf_counter() < end:
    for _ in range(10_000):
        n += 1
print(n)
"""


async def spin(cpu: int, seconds: float) -> int:
    """Iterations of a bare Python loop on one CPU, in a process of its own."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        SPIN.format(seconds=seconds),
        stdout=asyncio.subprocess.PIPE,
        preexec_fn=lambda: os.sched_setaffinity(0, {cpu}),
    )
    out, _ = await process.communicate()
    return int(out)


async def cpu_scaleout(seconds: float = 3.0) -> float:
    """Two CPU-bound processes on a core each ÷ one: the most any two workers can scale here."""
    alone = await spin(0, seconds)
    pair = await asyncio.gather(spin(0, seconds), spin(1 % (os.cpu_count() or 1), seconds))
    return sum(pair) / alone


def machine_times() -> tuple[int, int]:
    """(busy, total) jiffies of all cores, from /proc/stat."""
    values = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = values[3] + values[4]  # idle + iowait
    return sum(values) - idle, sum(values)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process, all its threads, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclass
class Profiler:
    process: subprocess.Popen[bytes]
    output: Path


def start_profiler(pid: int) -> Profiler:
    """py-spy sampling a worker (with its native frames) until `print_profile` stops it."""
    output = Path(tempfile.mkdtemp(prefix="canarywatch-profile-")) / f"worker-{pid}.txt"
    command = [str(Path(sys.executable).parent / "py-spy"), "record", "--pid", str(pid)]
    command += ["--format", "raw", "--native", "--threads", "--output", str(output)]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return Profiler(process, output)


def print_profile(profiler: Profiler, top: int = 15) -> None:
    """Stop py-spy; print the functions where the worker's samples were, by self time."""
    profiler.process.send_signal(signal.SIGINT)
    profiler.process.wait(timeout=60)
    own: dict[str, int] = {}
    total = 0
    for line in profiler.output.read_text().splitlines():
        stack, _, samples = line.rpartition(" ")
        frame = stack.rsplit(";", 1)[-1]
        own[frame] = own.get(frame, 0) + int(samples)
        total += int(samples)
    print(f"  profile ({total} samples, self time), collapsed stacks in {profiler.output}:")
    for frame, n in sorted(own.items(), key=lambda x: -x[1])[:top]:
        print(f"    {n / max(total, 1):6.1%}  {frame[:110]}")


def status_bytes(pid: int, key: str) -> int:
    """A kB figure of /proc/<pid>/status (VmRSS, VmHWM), in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{key}:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {key} in /proc/{pid}/status")


def rss_bytes(pid: int) -> int:
    return status_bytes(pid, "VmRSS")


def peak_rss_bytes(pid: int) -> int:
    return status_bytes(pid, "VmHWM")
