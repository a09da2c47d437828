"""Run one child process and measure it: wall time, its own peak RSS (from wait4, so it is the
child's and not the driver's), its CPU time, the load average before / during / after, how many
cores other processes used meanwhile, and (with a GPU) its peak GPU memory as nvidia-smi sees it.

Standard library only."""

import os
import subprocess
import threading
import time
from pathlib import Path

SAMPLE_EVERY_S = 1.0
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


def _gpu_memory_mb(pid):
    """GPU memory nvidia-smi attributes to pid (MiB), or None."""
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-compute-apps=pid,used_memory", "--format=csv,noheader,nounits"],
            capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.TimeoutExpired):
        return None
    total = None
    for line in out.splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) == 2 and parts[0] == str(pid) and parts[1].isdigit():
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
                m = _gpu_memory_mb(self.pid)
                if m is not None:
                    self.gpu_peak_mb = max(self.gpu_peak_mb or 0, m)
            self.stop.wait(SAMPLE_EVERY_S)


def run_measured(cmd, env, stdout_path: Path, stderr_path: Path, gpu=False):
    """Runs cmd to completion; raises RunFailed (with the end of its stderr) on a non-zero exit."""
    load_before = os.getloadavg()
    busy0 = _busy_cpu_seconds()
    t0 = time.perf_counter()
    with open(stdout_path, "w") as out, open(stderr_path, "w") as err:
        proc = subprocess.Popen([str(c) for c in cmd], env=env, stdout=out, stderr=err)
        sampler = _Sampler(proc.pid, gpu)
        sampler.start()
        try:
            # wait4 gives this child's own resource usage; ru_maxrss is in KiB on Linux.
            _, status, usage = os.wait4(proc.pid, 0)
        except BaseException:
            proc.kill()
            proc.wait()
            raise
        finally:
            sampler.stop.set()
            sampler.join()
    wall = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    busy1 = _busy_cpu_seconds()
    cpu_s = usage.ru_utime + usage.ru_stime
    if proc.returncode != 0:
        tail = Path(stderr_path).read_text(errors="replace").strip().splitlines()[-25:]
        raise RunFailed(f"{' '.join(str(c) for c in cmd)}\n  exited with status {proc.returncode}; "
                        f"the end of {stderr_path}:\n    " + "\n    ".join(tail))
    during = sampler.load1 or [load_before[0]]
    others = None
    if busy0 is not None and busy1 is not None and wall > 0:
        others = max(0.0, (busy1 - busy0 - cpu_s) / wall)
    return {
        "command": [str(c) for c in cmd],
        "wall_s": wall,
        "cpu_s": cpu_s,
        "peak_rss_mb": usage.ru_maxrss / 1024.0,
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
