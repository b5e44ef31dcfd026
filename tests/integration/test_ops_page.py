"""The `/ops` page of a real worker, rendered by headless Chromium.

A malformed payment gives the worker a dead letter, and an account opened over HTTP goes through
the outbox and the relay; `/ops/status.json` (open, no key) must show both, and the page, run by
a real browser, must draw the partition rows and the dead-letter count from it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import uuid
from collections.abc import Callable
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer

from streams import topics
from tests.integration.processes import WorkerProcess, http, wait_until
from tests.tools import require

pytestmark = pytest.mark.integration

PARTITIONS = 4  # ATLAS_TOPIC_PARTITIONS in base_env
SOURCE_TOPICS = (topics.PAYMENTS, topics.COMMANDS, topics.LEGS, topics.TRANSFER_EVENTS)
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def chromium_binary() -> str:
    return require("chromium", "chromium")


def run_chromium(binary: str, profile: Path, *args: str, timeout: float = 90) -> str:
    """Run headless Chromium in its own process group with its own profile; return stdout."""
    proc = subprocess.Popen(
        [
            binary,
            "--headless=new",
            "--disable-gpu",
            "--no-sandbox",
            "--disable-dev-shm-usage",
            "--no-first-run",
            "--disable-extensions",
            "--disable-background-networking",
            f"--user-data-dir={profile}",
            *args,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        raise AssertionError(f"chromium did not finish within {timeout}s") from None
    finally:
        # Helpers Chromium left in its group (crashpad, zygote) go with it.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 0, f"chromium exited with {proc.returncode}:\n{err[-3000:]}"
    return out


class OpsDom(HTMLParser):
    """The elements of the rendered page the test reads, by id and by row class."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: dict[str, list[dict[str, str]]] = {}
        self.by_id: dict[str, dict[str, str]] = {}
        self.text: dict[str, str] = {}
        self.body: dict[str, str] = {}
        self._open: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = {k: v or "" for k, v in attrs}
        if tag == "body":
            self.body = values
        if tag == "tr" and values.get("class"):
            self.rows.setdefault(values["class"], []).append(values)
        if "id" in values:
            self.by_id[values["id"]] = values
            self.text[values["id"]] = ""
            self._open.append(values["id"])
        elif self._open:
            self._open.append("")

    def handle_endtag(self, tag: str) -> None:
        if self._open:
            self._open.pop()

    def handle_data(self, data: str) -> None:
        for element in self._open:
            if element:
                self.text[element] += data


def publish_malformed_payment(bootstrap: str, topic: str) -> None:
    async def send() -> None:
        producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
        await producer.start()
        try:
            await producer.send_and_wait(topic, b"{not json", key=b"acc-ops-page")
        finally:
            await producer.stop()

    asyncio.run(send())


def test_the_ops_page_shows_live_numbers_in_a_browser(
    spawn_worker: Callable[..., WorkerProcess],
    base_env: dict[str, str],
    api_key: str,
    tmp_path: Path,
) -> None:
    chromium = chromium_binary()
    prefix = base_env["ATLAS_TOPIC_PREFIX"]
    payments = prefix + topics.PAYMENTS
    worker = spawn_worker(ATLAS_LAG_POLL_S="0.5", ATLAS_OUTBOX_BACKLOG_POLL_S="0.5")
    worker.wait_ready()

    publish_malformed_payment(base_env["KAFKA_BOOTSTRAP_SERVERS"], payments)
    opened = http(
        "POST",
        worker.url + "/v1/accounts",
        data=json.dumps({"owner_email": "ops@example.com", "currency": "EUR"}).encode(),
        headers={
            "Authorization": f"Bearer {api_key}",
            "Idempotency-Key": str(uuid.uuid4()),
            "Content-Type": "application/json",
        },
    )
    assert opened.status == 202, opened.body

    def live_status() -> dict[str, Any] | None:
        response = http("GET", worker.url + "/ops/status.json")  # no key: the route is open
        assert response.status == 200, response.body
        doc: dict[str, Any] = response.json()
        lag = doc["lag"]
        ready = (
            doc["dead_letters"]["by_topic"].get(payments, 0) >= 1
            and doc["relay"]["leader"]
            and lag is not None
            and lag["status"] != "ERR"
            and len(lag["partitions"]) == PARTITIONS * len(SOURCE_TOPICS)
            and any(p["end"] > 0 for p in lag["partitions"] if p["topic"] == payments)
            and doc["backlog"]["reading_age_s"] is not None
        )
        return doc if ready else None

    doc = wait_until(live_status, 60, what="a dead letter, a lag reading and a relay leader")
    assert doc["dead_letters"] == {"total": 1, "by_topic": {payments: 1}}
    assert doc["breakers"] == {"postgres": "closed", "redis": "closed", "kafka": "closed"}
    assert set(doc["backlog"]) == {
        "rows",
        "oldest_s",
        "failed",
        "limit",
        "shedding",
        "reading_age_s",
    }
    assert worker.api_key and worker.api_key not in json.dumps(doc)

    page = http("GET", worker.url + "/ops")
    assert page.status == 200 and b'<script src="/ops/ops.js">' in page.body

    dom_html = run_chromium(
        chromium,
        tmp_path / "chromium-dom",
        "--virtual-time-budget=8000",
        "--dump-dom",
        worker.url + "/ops",
    )
    (tmp_path / "ops.html").write_text(dom_html)
    dom = OpsDom()
    dom.feed(dom_html)

    assert dom.body.get("data-state") == "live", dom_html[:3000]
    assert "hidden" in dom.by_id["error"]  # no failed fetch
    assert dom.text["updated"] != "never"
    assert dom.text["lag-group"] == base_env["ATLAS_APP_NAME"]
    partitions = dom.rows["partition"]
    assert {(r["data-topic"], int(r["data-partition"])) for r in partitions} == {
        (prefix + name, p) for name in SOURCE_TOPICS for p in range(PARTITIONS)
    }
    assert all(r["data-status"] in {"OK", "WARN", "STOP", "STALL", "REWIND"} for r in partitions)
    letters = {r["data-topic"]: r["data-count"] for r in dom.rows["dead-letter"]}
    assert letters == {payments: "1"}
    assert dom.text["dead-letters-total"] == "1"
    assert {r["data-dependency"]: r["data-state"] for r in dom.rows["breaker"]} == {
        "postgres": "closed",
        "redis": "closed",
        "kafka": "closed",
    }
    assert dom.by_id["relay-leader"].get("data-leader") == "true"
    assert dom.text["backlog-rows"].isdigit()
    assert dom.text["backlog-failed"] == "0"

    screenshot = tmp_path / "ops.png"
    run_chromium(
        chromium,
        tmp_path / "chromium-shot",
        "--virtual-time-budget=8000",
        "--hide-scrollbars",
        f"--screenshot={screenshot}",
        "--window-size=1280,900",
        worker.url + "/ops",
    )
    image = screenshot.read_bytes()
    assert image.startswith(PNG_SIGNATURE)
    assert len(image) > 20_000, f"a {len(image)}-byte screenshot is too small for the page"
