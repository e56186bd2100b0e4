"""`chimuffin dashboard` (`make dashboard`): the 3LC Object Service on this repository's tables
and runs, bound to 127.0.0.1, until Ctrl-C.

The Dashboard itself is a hosted web page (https://dashboard.3lc.ai) that the browser loads from
the internet and points at this service; offline, use chimuffin's own review page instead.
"""

from __future__ import annotations

import signal
import subprocess

from chimuffin import tlcio


def register(sub) -> None:
    p = sub.add_parser("dashboard", help="serve the 3LC tables and runs to the 3LC Dashboard",
                       description=__doc__)
    p.add_argument("--host", default="127.0.0.1",
                   help="address to bind (default %(default)s: this machine only)")
    p.add_argument("--port", type=int, default=5015,
                   help="port of the Object Service (default %(default)s, the Dashboard's)")
    p.add_argument("--tlc-config", default=tlcio.CONFIG,
                   help="3LC config naming the tables and runs (default %(default)s)")
    p.set_defaults(func=run)


def run(args) -> int:
    cmd, env = tlcio.service_command(args.host, args.port, args.tlc_config)
    print(f"dashboard: starting the 3LC Object Service on http://{args.host}:{args.port} "
          "(Ctrl-C stops it)", flush=True)
    proc = subprocess.Popen(cmd, env=env)
    try:
        rc = proc.wait()
    except KeyboardInterrupt:
        # Ctrl-C reached the service too (same process group); give it time to shut down.
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.terminate()
            proc.wait(timeout=10)
        print("dashboard: 3LC Object Service stopped")
        return 0
    if rc != 0:
        print(f"dashboard: the 3LC Object Service exited with status {rc} (see .tlc/3lc.log)")
    return rc
