"""A Kafka broker of a test's own: a brand-new cluster that the test may stop and start.

It runs through the stack's own script (`infra/services/kafka.sh`) with a state folder and
ports of the test, reusing the stack's jars, so that stopping it touches nothing the rest of
the suite relies on. It is stopped only through the pid that script recorded for it.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from pathlib import Path

from tests.integration.processes import free_port, run_service_script

REPO_ROOT = Path(__file__).resolve().parents[2]


def _stack_state_dir() -> Path:
    state = Path(os.environ.get("ATLAS_STATE_DIR", REPO_ROOT / ".local"))
    return state if state.is_absolute() else REPO_ROOT / state


class OwnKafka:
    def __init__(self, state_dir: Path) -> None:
        self.port = free_port()
        self.state_dir = state_dir
        self.env = {
            **os.environ,
            "ATLAS_STATE_DIR": str(state_dir),
            "KAFKA_PORT": str(self.port),
            "KAFKA_CONTROLLER_PORT": str(free_port()),
            "KAFKA_LIBS_DIR": str(_stack_state_dir() / "kafka" / "libs"),
            "KAFKA_HEAP": "384m",
        }

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def pid(self) -> int | None:
        with contextlib.suppress(OSError, ValueError):
            return int((self.state_dir / "run" / "kafka.pid").read_text())
        return None

    def start(self) -> None:
        """Start the broker and return once it answers a metadata request."""
        done = run_service_script("kafka", "start", self.env)
        assert done.returncode == 0, done.stdout + done.stderr

    def stop(self) -> None:
        done = run_service_script("kafka", "stop", self.env)
        assert done.returncode == 0, done.stdout + done.stderr

    def kill(self, sig: signal.Signals, timeout_s: float = 60) -> None:
        """Send `sig` to the broker's JVM (its recorded pid) and wait until it has exited."""
        pid = self.pid
        assert pid is not None, "the broker was not started by this test"
        os.kill(pid, sig)
        deadline = time.monotonic() + timeout_s
        while _alive(pid):
            if time.monotonic() > deadline:
                os.kill(pid, signal.SIGKILL)
                raise AssertionError(f"broker pid {pid} still running {timeout_s}s after {sig!r}")
            time.sleep(0.1)

    def log_tail(self, lines: int = 40) -> str:
        log = self.state_dir / "log" / "kafka.log"
        if not log.exists():
            return ""
        return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])


def _alive(pid: int) -> bool:
    # The JVM is setsid'd by the script, so it is not our child: poll /proc, not waitpid.
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"
