"""Every process of a connected run, started and stopped by its PID.

Each process runs in a session of its own (`start_new_session`), so a Ctrl-C at the terminal
reaches only the runner, which then stops them in the reverse order of their start: SIGTERM,
a grace period, then SIGKILL, always by the PID this object started. `pids.json` in the run
directory lists what is running, for a person who needs to clean up after a crashed runner.
Output goes to `logs/<name>.log`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

log = logging.getLogger(__name__)


class ProcessError(RuntimeError):
    """A process did not start, or exited while it was needed; the message says which and why."""


@dataclass
class Managed:
    name: str
    argv: list[str]
    env: dict[str, str]
    log_path: Path
    cwd: Path | None
    popen: subprocess.Popen[bytes] | None = None
    started_at: float = 0.0
    starts: int = 0
    kills: int = 0
    expect_exit: bool = False  # a one-shot process (exits on its own when done)
    stopped: bool = False
    _log: IO[bytes] | None = field(default=None, repr=False)

    @property
    def pid(self) -> int | None:
        return self.popen.pid if self.popen is not None else None

    def running(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def tail(self, chars: int = 2000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""


class Supervisor:
    """Starts named processes, kills or restarts one on demand, stops all at the end."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = run_dir
        self.log_dir = run_dir / "logs"
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self._order: list[str] = []
        self.processes: dict[str, Managed] = {}

    def reap_leftovers(self) -> list[int]:
        """Stop what a previous runner of this run directory left running (it was killed
        before it could stop them): the PIDs in its `pids.json` whose command line still names
        this directory."""
        stopped: list[int] = []
        previous = self.run_dir / "pids.json"
        try:
            pids = json.loads(previous.read_text())
        except (OSError, ValueError):
            return stopped
        for pid in pids.values():
            try:
                command = Path(f"/proc/{int(pid)}/cmdline").read_bytes().replace(b"\0", b" ")
            except (OSError, ValueError):
                continue
            if str(self.run_dir).encode() in command:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(int(pid), signal.SIGTERM)
                    stopped.append(int(pid))
        return stopped

    def start(
        self,
        name: str,
        argv: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
        ready: Callable[[], bool] | None = None,
        ready_timeout_s: float = 60.0,
        expect_exit: bool = False,
    ) -> Managed:
        """Start `argv` as `name`; with `ready`, wait until it returns True (or fail)."""
        if name in self.processes and self.processes[name].running():
            raise ProcessError(f"{name} is already running (PID {self.processes[name].pid})")
        managed = Managed(
            name,
            list(argv),
            {**os.environ, **(env or {})},
            self.log_dir / f"{name}.log",
            cwd,
            expect_exit=expect_exit,
        )
        self.processes[name] = managed
        if name not in self._order:
            self._order.append(name)
        self._spawn(managed)
        if ready is not None:
            self.wait_ready(name, ready, ready_timeout_s)
        return managed

    def _spawn(self, managed: Managed) -> None:
        managed._log = managed.log_path.open("ab")
        # Fixed argv built by the runner (no shell); a session of its own, so the terminal's
        # Ctrl-C goes to the runner only and the runner stops the process in order.
        managed.popen = subprocess.Popen(  # noqa: S603
            managed.argv,
            stdout=managed._log,
            stderr=subprocess.STDOUT,
            env=managed.env,
            cwd=managed.cwd,
            start_new_session=True,
        )
        managed.started_at = time.monotonic()
        managed.starts += 1
        managed.stopped = False
        self._write_pids()

    def wait_ready(self, name: str, ready: Callable[[], bool], timeout_s: float) -> None:
        managed = self.processes[name]
        deadline = time.monotonic() + timeout_s
        while True:
            if not managed.running() and not managed.expect_exit:
                raise ProcessError(
                    f"{name} exited with {managed.popen.returncode if managed.popen else '?'} "
                    f"while starting; its log ({managed.log_path}) ends with:\n{managed.tail()}"
                )
            with contextlib.suppress(Exception):
                if ready():
                    return
            if time.monotonic() > deadline:
                raise ProcessError(
                    f"{name} was not ready within {timeout_s:.0f} s; its log "
                    f"({managed.log_path}) ends with:\n{managed.tail()}"
                )
            time.sleep(0.1)

    def kill(self, name: str) -> None:
        """SIGKILL the process (a crash, as far as it knows)."""
        managed = self.processes[name]
        if managed.running() and managed.popen is not None:
            managed.popen.send_signal(signal.SIGKILL)
            managed.popen.wait()
            managed.kills += 1
        self._close_log(managed)
        self._write_pids()

    def restart(self, name: str) -> None:
        managed = self.processes[name]
        if managed.running():
            raise ProcessError(f"{name} is still running; kill or stop it first")
        self._spawn(managed)

    def stop(self, name: str, *, grace_s: float = 15.0) -> int | None:
        """SIGTERM, then SIGKILL after `grace_s`; returns the exit code."""
        managed = self.processes.get(name)
        if managed is None or managed.popen is None:
            return None
        popen = managed.popen
        if popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                popen.send_signal(signal.SIGTERM)
            try:
                popen.wait(timeout=grace_s)
            except subprocess.TimeoutExpired:
                log.warning("process ignored SIGTERM; killing it", extra={"managed": name})
                with contextlib.suppress(ProcessLookupError):
                    popen.send_signal(signal.SIGKILL)
                popen.wait()
        managed.stopped = True
        self._close_log(managed)
        self._write_pids()
        return popen.returncode

    def stop_all(self, *, grace_s: float = 15.0) -> None:
        """Stop every process, the last started first."""
        for name in reversed(self._order):
            try:
                self.stop(name, grace_s=grace_s)
            except Exception:  # keep stopping the others
                log.exception("could not stop a process", extra={"managed": name})

    def check(self, names: Sequence[str] | None = None) -> None:
        """Fail when a process that should be running exited on its own."""
        for name in names or self._order:
            managed = self.processes[name]
            if managed.stopped or managed.expect_exit or managed.popen is None:
                continue
            if managed.popen.poll() is not None and managed.kills < managed.starts:
                raise ProcessError(
                    f"{name} (PID {managed.pid}) exited with {managed.popen.returncode}; its log "
                    f"({managed.log_path}) ends with:\n{managed.tail()}"
                )

    def summary(self) -> dict[str, Any]:
        return {
            name: {
                "argv0": Path(m.argv[0]).name,
                "starts": m.starts,
                "kills": m.kills,
                "exit_code": m.popen.returncode if m.popen is not None else None,
                "log": str(m.log_path),
            }
            for name, m in self.processes.items()
        }

    def _close_log(self, managed: Managed) -> None:
        if managed._log is not None and not managed.running():
            managed._log.close()
            managed._log = None

    def _write_pids(self) -> None:
        running = {m.name: m.pid for m in self.processes.values() if m.running()}
        with contextlib.suppress(OSError):
            (self.run_dir / "pids.json").write_text(json.dumps(running, indent=2) + "\n")
