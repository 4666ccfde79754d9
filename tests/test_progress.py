"""The progress bar: drawn on a terminal, silent otherwise."""

import io
import os
import pty
import subprocess
import sys

from stepmap.progress import ProgressBar


def test_render_shows_counts_rate_and_eta():
    bar = ProgressBar(1000, enabled=True, stream=io.StringIO())
    text = bar.render(250, 3, elapsed=5.0)
    assert "250/1,000 items" in text and "50.0/s" in text and "ETA 00:15" in text
    assert "3 failed" in text and text.count("#") == 7


def test_silent_when_not_a_terminal():
    stream = io.StringIO()
    bar = ProgressBar(10, stream=stream)
    bar.update(5, force=True)
    bar.close()
    assert stream.getvalue() == ""


def test_cli_draws_the_bar_on_a_terminal(tmp_path):
    controller, terminal = pty.openpty()
    proc = subprocess.run([sys.executable, "-m", "stepmap", "run", "chaos", "--items", "40",
                           "--sleep", "0.02", "--batch-size", "1", "--results", str(tmp_path)],
                          stdout=subprocess.PIPE, stderr=terminal, text=True)
    os.close(terminal)
    chunks = []
    while True:
        try:
            data = os.read(controller, 65536)
        except OSError:
            break
        if not data:
            break
        chunks.append(data)
    os.close(controller)
    shown = b"".join(chunks).decode()
    assert proc.returncode == 0
    assert "\r[" in shown and "40/40 items" in shown
    assert proc.stdout.strip() == str(sum(i * i for i in range(40)))
