"""Serving the dashboard: `stepmap dashboard`, and the dashboard a `stepmap run --dashboard`
starts beside its run (a child process, stopped by its PID when the run ends)."""

from __future__ import annotations

import argparse
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from typing import IO

from ..errors import UsageError
from ..results import check_run_id

DEFAULT_PORT = 8787
#: `run --dashboard` serves this long after the run, so an open page shows how it ended
FINAL_LOOK_SECONDS = 3.0
LOOPBACK = ("127.0.0.1", "localhost")
EXTRA_HINT = "the dashboard needs the dashboard extra: pip install 'stepmap[dashboard]'"
_URL = re.compile(r"^(http://\S+)$")


def register(sub, *, engine_options, output_options) -> None:
    parser = sub.add_parser("dashboard", allow_abbrev=False,
                            help="a live web page of the runs (local, dask and AWS)")
    parser.add_argument("--results", "--runs", dest="results",
                        default=None, metavar="DIR|s3://BUCKET/PREFIX",
                        help="runs directory or s3:// (default ./stepmap-runs or "
                             "$STEPMAP_RESULTS)")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to listen on (127.0.0.1: this machine only)")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT,
                        help=f"port (default {DEFAULT_PORT}; 0 picks a free one)")
    parser.add_argument("--run", metavar="RUN_ID", help="open on this run's page")
    parser.add_argument("--parent-pid", type=int, help=argparse.SUPPRESS)
    parser.set_defaults(func=cmd_dashboard)


def cmd_dashboard(args, extra: list[str]) -> int:
    from ..cli_common import runs_location
    location = runs_location(args.results)
    if args.run is not None:
        check_run_id(args.run)
    if not 0 <= args.port <= 65535:
        raise UsageError(f"--port must be 0 to 65535, got {args.port}")
    if args.parent_pid:  # `run --dashboard`: stop when the run's process is gone
        threading.Thread(target=_stop_when_orphaned, args=(args.parent_pid,),
                         daemon=True).start()
    serve(location, host=args.host, port=args.port, one_run=args.run)
    return 0


def _stop_when_orphaned(parent: int) -> None:
    """Once the parent has gone (killed: it could not stop us), we are re-parented."""
    while os.getppid() == parent:
        time.sleep(0.5)
    os.kill(os.getpid(), signal.SIGTERM)  # uvicorn shuts down cleanly on SIGTERM


def serve(location: str, *, host: str = "127.0.0.1", port: int = DEFAULT_PORT,
          one_run: str | None = None, out: IO[str] | None = None) -> None:
    """Listen, print the URL (alone on a line of stdout), serve until interrupted."""
    try:
        import uvicorn
        from .app import create_app
        from .model import RunsReader
    except ImportError:
        raise UsageError(EXTRA_HINT) from None
    sock = listen(host, port)
    bound = sock.getsockname()[1]
    app = create_app(RunsReader(location), allowed_hosts=allowed_hosts(host), one_run=one_run)
    shown = "127.0.0.1" if host in ("0.0.0.0", "") else host
    out = out or sys.stdout
    out.write(f"http://{shown}:{bound}/{f'runs/{one_run}' if one_run else ''}\n")
    out.flush()
    print(f"stepmap: dashboard of {location}; Ctrl-C stops it", file=sys.stderr)
    if host not in LOOPBACK:
        print(f"stepmap: note: listening on {host}: other machines can read these runs (the "
              "dashboard has no login)", file=sys.stderr)
    config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off")
    uvicorn.Server(config).run(sockets=[sock])


def listen(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise UsageError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    sock.listen(128)
    return sock


def allowed_hosts(host: str) -> list[str]:
    """Host headers accepted: on loopback only the loopback names (a web page elsewhere
    cannot rebind a name of its own to 127.0.0.1 and read the runs)."""
    if host in LOOPBACK:
        return list(LOOPBACK)
    return ["*"]


# ---------------------------------------------------------------- beside a run

class RunDashboard:
    """`stepmap run --dashboard`: the dashboard of one run in a child process. Its URL is
    printed; the child is stopped by its PID when the run ends, however it ends."""

    def __init__(self, location: str, run_id: str, port: int = DEFAULT_PORT):
        self.location, self.run_id, self.port = location, run_id, port
        self.process: subprocess.Popen | None = None
        self.url: str | None = None

    @classmethod
    def for_run(cls, config, workload_ref: str):
        """(the config with its run id fixed now, the dashboard of that run): the URL must
        name the run before the run starts."""
        from ..records import replace
        from ..results import new_run_id
        config = replace(config, run_id=config.run_id or new_run_id(workload_ref))
        return config, cls(config.runs, config.run_id)

    def __enter__(self) -> "RunDashboard":
        try:
            import starlette  # noqa: F401
            import uvicorn  # noqa: F401
        except ImportError:
            raise UsageError(EXTRA_HINT) from None
        port = self.port if _free(self.port) else 0
        self.process = subprocess.Popen(
            [sys.executable, "-m", "stepmap", "dashboard", "--results", self.location,
             "--run", self.run_id, "--port", str(port), "--parent-pid", str(os.getpid())],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
            text=True)
        self.url = _read_url(self.process, timeout=30)
        if self.url is None:
            self.stop()
            raise UsageError("the dashboard did not start (run `stepmap dashboard` to see why)")
        print(f"stepmap: dashboard of this run: {self.url}", file=sys.stderr)
        if _graphical() and sys.stderr.isatty():
            import webbrowser
            webbrowser.open(self.url)
        return self

    def __exit__(self, exc_type, *exc_info) -> None:
        if exc_type is None:  # let the page read the run's final state before we go
            time.sleep(FINAL_LOOK_SECONDS)
        self.stop()
        print(f"stepmap: the run's dashboard stopped; see all runs with: stepmap dashboard "
              f"--results {self.location}", file=sys.stderr)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self.process is not None:
            if self.process.stdout is not None:
                self.process.stdout.close()


def _graphical() -> bool:
    """A desktop to open a browser on (without one, webbrowser would start a text browser
    in the terminal the run is printing to)."""
    return sys.platform in ("darwin", "win32") or bool(
        os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))


def _free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _read_url(process: subprocess.Popen, timeout: float) -> str | None:
    """The first stdout line of the child, if it is a URL and comes in time."""
    found: list[str] = []

    def read():
        line = process.stdout.readline() if process.stdout else ""
        match = _URL.match(line.strip())
        if match:
            found.append(match.group(1))

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    deadline = time.monotonic() + timeout
    while reader.is_alive() and time.monotonic() < deadline and process.poll() is None:
        reader.join(0.1)
    return found[0] if found else None
