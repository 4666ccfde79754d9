"""A dashboard server for tests: the real application on uvicorn, on 127.0.0.1, in a thread
of the test process (stopped and joined at the end: nothing is left behind)."""

from __future__ import annotations

import http.client
import threading
import time

import uvicorn

from stepmap.dashboard.app import create_app
from stepmap.dashboard.model import RunsReader
from stepmap.dashboard.server import allowed_hosts, listen


class ServerThread:
    def __init__(self, location: str, reader: RunsReader | None = None, one_run=None):
        self.sock = listen("127.0.0.1", 0)
        self.port = self.sock.getsockname()[1]
        self.reader = reader or RunsReader(location)
        app = create_app(self.reader, allowed_hosts=allowed_hosts("127.0.0.1"),
                         one_run=one_run)
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning",
                                                    access_log=False, lifespan="off"))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]},
                                       daemon=True)

    def __enter__(self) -> "ServerThread":
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("the dashboard did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc_info) -> None:
        self.server.should_exit = True
        self.thread.join(30)
        self.sock.close()
        assert not self.thread.is_alive()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"

    def request(self, path: str, method: str = "GET", headers: dict | None = None
                ) -> tuple[int, dict, bytes]:
        """The path exactly as given (http.client does not normalise '..' or '%2e')."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        try:
            conn.request(method, path, headers=headers or {})
            response = conn.getresponse()
            return response.status, {k.lower(): v for k, v in response.getheaders()}, \
                response.read()
        finally:
            conn.close()
