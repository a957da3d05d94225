"""One training process per run folder; torchrun workers do not outlive their launcher."""

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from cliplab.cli.main import main
from tests.integration.helpers import COMMON

pytestmark = pytest.mark.integration


def test_a_second_run_on_a_running_folder_is_refused(tmp_path, capsys):
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "cliplab", "train", *COMMON, "--steps", "400", "--save-every", "2",
           "--output", str(run)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 120
        while time.time() < deadline and not list((run / "checkpoints").glob("step-*")):
            time.sleep(0.2)
        assert main(["train", *COMMON, "--steps", "400", "--output", str(run), "--resume", "latest"]) == 2
        err = capsys.readouterr().err.strip()
        assert f"another training process (pid {proc.pid}) is writing this run" in err and "\n" not in err
    finally:
        proc.kill()
        proc.wait()
    assert main(["train", *COMMON, "--steps", "400", "--output", str(run), "--resume", "latest",
                 "--stop-after", "1"]) == 0  # the kernel dropped the killed run's lock


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_a_worker_dies_with_its_launcher(tmp_path):
    worker = textwrap.dedent(f"""
        import os, time
        from cliplab.train.guard import die_with_launcher
        die_with_launcher()
        open({str(tmp_path / 'ready')!r}, 'w').close()
        time.sleep(60)
    """)
    launcher = textwrap.dedent(f"""
        import os, subprocess, sys, time
        child = subprocess.Popen([sys.executable, '-c', {worker!r}], env={{**os.environ, 'LOCAL_RANK': '0'}},
                                 start_new_session=True)  # as torchrun starts its workers
        print(child.pid, flush=True)
        time.sleep(60)
    """)
    parent = subprocess.Popen([sys.executable, "-c", launcher], stdout=subprocess.PIPE, text=True)
    child = int(parent.stdout.readline())
    deadline = time.time() + 60
    while time.time() < deadline and not (tmp_path / "ready").exists():
        time.sleep(0.1)
    os.kill(parent.pid, signal.SIGKILL)
    parent.wait()
    deadline = time.time() + 10
    while time.time() < deadline:
        try:
            os.kill(child, 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)
        with open(f"/proc/{child}/stat") as fh:
            if fh.read().split(") ")[1].startswith("Z"):  # exited, waiting to be reaped by init
                return
    os.kill(child, signal.SIGKILL)
    pytest.fail("the worker outlived its launcher")
