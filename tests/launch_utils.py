"""Helpers for the launcher tests (tests/test_multinode.py, tests/test_slurm_launch.py): ports, process trees."""

from __future__ import annotations

import os
import signal
import socket
import subprocess

import psutil


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def kill_tree(proc: subprocess.Popen) -> None:
    """SIGKILL a process and all its descendants (torchrun starts its workers in their own sessions, so
    killing the process group of a launcher is not enough)."""
    try:
        tree = [proc.pid] + [c.pid for c in psutil.Process(proc.pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        tree = []
    for pid in tree:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.wait(timeout=30)
