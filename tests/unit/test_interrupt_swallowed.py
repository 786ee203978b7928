"""Ctrl-C is not lost when a library both swallows the KeyboardInterrupt and replaces the
signal wakeup fd (event loops that add signal handlers do the latter): trtflow's own
SIGINT handler tells the watcher directly, which exits 130 after the grace period. A
process started with SIGINT ignored (a background job) keeps ignoring it."""

from __future__ import annotations

import subprocess
import sys
import textwrap

from ..conftest import REPO

SCRIPT = textwrap.dedent("""
    import os, signal, sys, threading, time
    from flows.interrupt import Interrupt

    signal.signal(signal.SIGINT, signal.SIG_IGN if "--ignored" in sys.argv
                  else signal.default_int_handler)  # as started: background job or not
    Interrupt(lambda: print("watcher cleaned up", flush=True), grace=0.5)
    signal.set_wakeup_fd(-1)  # as an event loop that adds signal handlers does
    threading.Timer(0.3, lambda: os.kill(os.getpid(), signal.SIGINT)).start()
    deadline = time.monotonic() + 8
    while time.monotonic() < deadline:
        try:
            time.sleep(0.05)
        except KeyboardInterrupt:  # swallowed, as a task runner might
            pass
    print("finished", flush=True)
""")


def test_a_swallowed_ctrl_c_still_exits_130() -> None:
    res = subprocess.run([sys.executable, "-c", SCRIPT], cwd=REPO, capture_output=True,
                         text=True, timeout=60, check=False)
    assert res.returncode == 130, res.stdout + res.stderr
    assert "watcher cleaned up" in res.stdout and "finished" not in res.stdout


def test_a_background_job_keeps_ignoring_ctrl_c() -> None:
    res = subprocess.run([sys.executable, "-c", SCRIPT, "--ignored"], cwd=REPO,
                         capture_output=True, text=True, timeout=60, check=False)
    assert res.returncode == 0 and "finished" in res.stdout, res.stdout + res.stderr
