"""runner.helper's child side: a helper process ends as soon as its main returns."""

from __future__ import annotations

import subprocess
import sys

from tests.faults import ROOT


def run_script(body: str) -> subprocess.CompletedProcess:
    script = "import threading, time\nfrom runner.helper import run_child\n" + body
    return subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=30)


def test_run_child_ends_the_process_once_main_returns_with_a_thread_still_running_and_output_flushed():
    done = run_script(
        "def main():\n"
        "    threading.Thread(target=time.sleep, args=(60,)).start()  # not a daemon: it would hold the exit\n"
        "    print('answered')  # a pipe: block-buffered, so lost unless flushed\n"
        "run_child(main)\n")
    assert done.returncode == 0
    assert done.stdout == "answered\n"


def test_run_child_lets_an_error_of_main_end_the_process_with_its_traceback():
    done = run_script("def main():\n    raise ValueError('the disk is gone')\nrun_child(main)\n")
    assert done.returncode == 1
    assert "ValueError: the disk is gone" in done.stderr
