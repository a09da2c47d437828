"""Run a command as the child of this small process and write its own resource usage as JSON:

    python -S -E launch.py USAGE.json CMD ARGS...

Why a launcher: on Linux a process's peak RSS (ru_maxrss) includes the memory of the process it
was forked from, up to its exec (the old address space's high-water mark is carried over). A tool
forked straight from the driver, which holds anndata, scanpy and torch, would be charged the
driver's RSS. Forked from this launcher (no site packages, standard library only: about 10 MB), the
figure is the command's own whenever the command peaks above that, which every training does.

Exits with the command's status (128 + N when signal N ended it). SIGTERM is passed on to the
command; SIGINT is not, as a Ctrl-C reaches the command from the terminal already.
"""

import json
import os
import signal
import sys
import time


def main():
    if len(sys.argv) < 3:
        sys.exit("usage: launch.py USAGE.json CMD [ARGS...]")
    out, cmd = sys.argv[1], sys.argv[2:]
    t0 = time.perf_counter()
    pid = os.fork()
    if pid == 0:
        try:
            os.execvp(cmd[0], cmd)
        except OSError as e:
            os.write(2, f"launch.py: cannot run {cmd[0]}: {e}\n".encode())
            os._exit(127)
    signal.signal(signal.SIGTERM, lambda signum, frame: os.kill(pid, signum))
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _, status, usage = os.wait4(pid, 0)
    wall = time.perf_counter() - t0
    with open(out, "w") as f:
        json.dump({"pid": pid, "wall_s": wall, "peak_rss_kib": usage.ru_maxrss,
                   "cpu_s": usage.ru_utime + usage.ru_stime}, f)
    code = os.waitstatus_to_exitcode(status)
    sys.exit(code if code >= 0 else 128 - code)


if __name__ == "__main__":
    main()
