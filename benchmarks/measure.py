"""Run one command and measure it: wall time, its own peak RSS and CPU time (through launch.py,
so that the driver's memory is not charged to it), the load average before / during / after, how
many cores other processes used meanwhile, and (with a GPU) its peak GPU memory as nvidia-smi sees
it. Standard library only."""

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

SAMPLE_EVERY_S = 1.0
LAUNCHER = Path(__file__).with_name("launch.py")
CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


class RunFailed(Exception):
    pass


def _busy_cpu_seconds():
    """CPU seconds spent busy by the whole machine since boot (/proc/stat), or None off Linux."""
    try:
        with open("/proc/stat") as f:
            fields = f.readline().split()[1:]
    except OSError:
        return None
    v = [int(x) for x in fields]
    # user nice system idle iowait irq softirq steal ...: everything but idle and iowait is busy.
    busy = v[0] + v[1] + v[2] + sum(v[5:8])
    return busy / CLOCK_TICKS


def _children(pid):
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(x) for x in f.read().split()]
    except OSError:
        return []


def _gpu_memory_mb(pids):
    """GPU memory nvidia-smi attributes to these processes (MiB), or None."""
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-compute-apps=pid,used_memory", "--format=csv,noheader,nounits"],
            capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.TimeoutExpired):
        return None
    total = None
    for line in out.splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) == 2 and parts[0].isdigit() and int(parts[0]) in pids and parts[1].isdigit():
            total = (total or 0) + int(parts[1])
    return total


class _Sampler(threading.Thread):
    def __init__(self, pid, gpu):
        super().__init__(daemon=True)
        self.pid, self.gpu = pid, gpu
        self.load1 = []
        self.gpu_peak_mb = None
        self.stop = threading.Event()

    def run(self):
        while not self.stop.is_set():
            self.load1.append(os.getloadavg()[0])
            if self.gpu:
                m = _gpu_memory_mb({self.pid, *_children(self.pid)})
                if m is not None:
                    self.gpu_peak_mb = max(self.gpu_peak_mb or 0, m)
            self.stop.wait(SAMPLE_EVERY_S)


def run_measured(cmd, env, stdout_path: Path, stderr_path: Path, gpu=False):
    """Runs cmd to completion; raises RunFailed (with the end of its stderr) on a non-zero exit."""
    cmd = [str(c) for c in cmd]
    usage_path = Path(str(stderr_path) + ".usage.json")
    load_before = os.getloadavg()
    busy0 = _busy_cpu_seconds()
    with open(stdout_path, "w") as out, open(stderr_path, "w") as err:
        proc = subprocess.Popen([sys.executable, "-S", "-E", str(LAUNCHER), str(usage_path), *cmd],
                                env=env, stdout=out, stderr=err)
        sampler = _Sampler(proc.pid, gpu)
        sampler.start()
        try:
            proc.wait()
        except BaseException:
            proc.terminate()  # the launcher passes it on to the command
            proc.wait()
            raise
        finally:
            sampler.stop.set()
            sampler.join()
    busy1 = _busy_cpu_seconds()
    if proc.returncode != 0 or not usage_path.exists():
        tail = Path(stderr_path).read_text(errors="replace").strip().splitlines()[-25:]
        raise RunFailed(f"{' '.join(cmd)}\n  exited with status {proc.returncode}; "
                        f"the end of {stderr_path}:\n    " + "\n    ".join(tail))
    usage = json.loads(usage_path.read_text())
    wall, cpu_s = usage["wall_s"], usage["cpu_s"]
    during = sampler.load1 or [load_before[0]]
    others = None
    if busy0 is not None and busy1 is not None and wall > 0:
        others = max(0.0, (busy1 - busy0 - cpu_s) / wall)
    return {
        "command": cmd,
        "wall_s": wall,
        "cpu_s": cpu_s,
        "peak_rss_mb": usage["peak_rss_kib"] / 1024.0,  # ru_maxrss is in KiB on Linux
        "gpu_peak_mb_nvidia_smi": sampler.gpu_peak_mb,
        "load_before": list(load_before),
        "load1_during_mean": sum(during) / len(during),
        "load1_during_max": max(during),
        "load1_samples": [round(x, 2) for x in during],
        "load_after": list(os.getloadavg()),
        "other_processes_cores": others,
    }


def thread_env(threads):
    """The environment both tools run in: every thread-count variable set to the same number, so
    that neither PyTorch's OpenMP / MKL pools nor a BLAS start a thread per core behind our back."""
    env = dict(os.environ)
    for k in ["OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"]:
        env[k] = str(threads)
    return env
