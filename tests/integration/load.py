"""A steady write load for outage tests: one thread POSTing new accounts until stopped.

Every request has its own Idempotency-Key; every answer is kept (status, body, how long it
took), so a test can check what was accepted against what PostgreSQL and the ledger hold.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from dataclasses import dataclass, field

from tests.integration.processes import Response, WorkerProcess, http


@dataclass(frozen=True)
class Answer:
    idempotency_key: str
    account_id: str
    status: int
    elapsed_s: float
    started_at: float  # monotonic
    response: Response | None  # None when the client itself gave up (no answer at all)


@dataclass
class WriteLoad:
    worker: WorkerProcess
    api_key: str
    interval_s: float = 0.02
    client_timeout_s: float = 15.0
    answers: list[Answer] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._tag = uuid.uuid4().hex[:8]

    def __enter__(self) -> WriteLoad:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=self.client_timeout_s + 5)

    def _run(self) -> None:
        n = 0
        while not self._stop.is_set():
            n += 1
            account_id = f"load-{self._tag}-{n}"
            key = f"load-{self._tag}-{n}"
            body = {"owner_email": f"{account_id}@example.com", "currency": "EUR"}
            body["account_id"] = account_id
            headers = {
                "Content-Type": "application/json",
                "Authorization": f"Bearer {self.api_key}",
                "Idempotency-Key": key,
            }
            started = time.monotonic()
            response: Response | None
            try:
                response = http(
                    "POST",
                    self.worker.url + "/v1/accounts",
                    data=json.dumps(body).encode(),
                    headers=headers,
                    timeout=self.client_timeout_s,
                )
                status = response.status
            except OSError:
                response, status = None, 0
            self.answers.append(
                Answer(key, account_id, status, time.monotonic() - started, started, response)
            )
            self._stop.wait(self.interval_s)

    def since(self, moment: float) -> list[Answer]:
        return [a for a in list(self.answers) if a.started_at >= moment]

    def accepted(self) -> list[Answer]:
        return [a for a in list(self.answers) if a.status == 202]
