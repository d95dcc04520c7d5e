"""`make up`: the three servers as local processes, with the ports and metrics ports of deploy/compose.yaml.

vision 50051 (metrics 9091), sequence 50052 (9092), attention 50053 (9093). Every other setting comes from
the NNPROBE_* environment as usual. Ctrl-C (or SIGTERM) stops all three gracefully and waits for them.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

SERVERS = {"vision": (50051, 9091), "sequence": (50052, 9092), "attention": (50053, 9093)}


def main() -> int:
    procs: dict[str, subprocess.Popen] = {}
    for name, (port, metrics) in SERVERS.items():
        env = {**os.environ, "NNPROBE_PORT": str(port), "NNPROBE_METRICS_PORT": str(metrics)}
        procs[name] = subprocess.Popen([sys.executable, "-m", f"nnprobe_services.{name}"], env=env)
    stopping = False

    def stop(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    while not stopping and all(p.poll() is None for p in procs.values()):
        time.sleep(0.5)
    for name, proc in procs.items():
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        elif not stopping:
            print(f"the {name} server exited with {proc.returncode}; stopping the others", file=sys.stderr)
    codes = [proc.wait() for proc in procs.values()]
    return 0 if stopping and all(code == 0 for code in codes) else 1


if __name__ == "__main__":
    sys.exit(main())
