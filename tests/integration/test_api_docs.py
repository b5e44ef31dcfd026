"""The API docs on a real worker: the pages and their assets, and the live API checked against
`/openapi.json` by schemathesis (property-based requests, every answer validated)."""

from __future__ import annotations

import asyncio
import re
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis.checks import (
    content_type_conformance,
    negative_data_rejection,
    not_a_server_error,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from schemathesis.generation import GenerationMode

from tests.integration.processes import WorkerProcess, free_port, http
from tests.integration.stack import tag
from web.auth import create_client

pytestmark = pytest.mark.integration

EXAMPLES_PER_OPERATION = 20
# A transfer that does not exist is long-polled for all of `wait`: keep the run short.
MAX_WAIT_S = 0.3
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    negative_data_rejection,
]
EXTERNAL_URL = re.compile(r"https?://", re.IGNORECASE)


@pytest.fixture(scope="module")
def docs_worker(
    base_env: dict[str, str], api_key: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[WorkerProcess]:
    """One worker for the module, with a rate high enough that no check meets a 429."""
    port = free_port()
    folder = tmp_path_factory.mktemp("api-docs")
    prefix = f"d{tag()}."
    env = {
        **base_env,
        "ATLAS_WEB_PORT": str(port),
        "ATLAS_DATA_DIR": str(folder / "worker"),
        "ATLAS_TOPIC_PREFIX": prefix,
        "ATLAS_APP_NAME": f"atlas-{prefix[:-1]}",
        "ATLAS_RATE_LIMIT_PER_S": "100000",
        "ATLAS_RATE_LIMIT_BURST": "100000",
    }
    worker = WorkerProcess(env, port, folder / "worker.log", api_key).start()
    try:
        worker.wait_ready()
        yield worker
    finally:
        worker.stop()


def test_docs_pages_and_their_assets_are_served_by_the_worker(docs_worker: WorkerProcess) -> None:
    spec = http("GET", docs_worker.url + "/openapi.json")
    assert spec.status == 200 and spec.headers["Content-Type"].startswith("application/json")
    assert spec.json()["openapi"] == "3.1.0"
    for page in ("/docs", "/redoc"):
        r = http("GET", docs_worker.url + page)  # no credentials
        assert r.status == 200, (page, r.body[:200])
        assert r.headers["Content-Type"].startswith("text/html")
        html = r.body.decode()
        assert not EXTERNAL_URL.search(html), html
        assets = re.findall(r'(?:src|href)="(/docs/assets/[^"]+)"', html)
        assert assets, html
        for asset in assets:
            a = http("GET", docs_worker.url + asset)
            assert a.status == 200, asset
            assert len(a.body) > 0
            expected = {".js": "text/javascript", ".css": "text/css", ".png": "image/png"}
            suffix = asset[asset.rindex(".") :]
            assert a.headers["Content-Type"].startswith(expected[suffix]), asset


def _new_client_key(database_url: str) -> str:
    async def make() -> str:
        conn = await asyncpg.connect(database_url, timeout=10)
        try:
            return (await create_client(conn, f"schemathesis-{uuid.uuid4().hex[:8]}"))[1]
        finally:
            await conn.close()

    return asyncio.run(make())


@dataclass
class Run:
    """What the schemathesis run did: statuses per operation, one API client per operation."""

    database_url: str
    statuses: dict[str, Counter[int]] = field(default_factory=lambda: defaultdict(Counter))
    keys: dict[str, str] = field(default_factory=dict)
    started: float = field(default_factory=time.monotonic)

    def key_for(self, operation: str) -> str:
        # Idempotency keys are scoped per client: a client per operation keeps a key generated
        # for one operation from being "reused for another request" by the next one.
        if operation not in self.keys:
            self.keys[operation] = _new_client_key(self.database_url)
        return self.keys[operation]

    def summary(self) -> str:
        operations = {label.rsplit(" [", 1)[0] for label in self.statuses}
        lines = [
            f"schemathesis: {len(operations)} operations ({len(self.statuses)} with their "
            f"generation modes), {sum(c.total() for c in self.statuses.values())} requests "
            f"in {time.monotonic() - self.started:.1f}s"
        ]
        lines += [f"  {op}: {dict(sorted(c.items()))}" for op, c in sorted(self.statuses.items())]
        return "\n".join(lines)


def _cap_wait(case: Any) -> Any:
    if isinstance((case.query or {}).get("wait"), int | float):
        # A transfer that does not exist is long-polled for all of `wait`: keep runs short.
        case.query["wait"] = min(case.query["wait"], MAX_WAIT_S)
    return case


def _fuzz(operation: Any, mode: GenerationMode, call: Callable[[Any], None]) -> None:
    """`EXAMPLES_PER_OPERATION` generated cases for one operation, the same ones every run."""

    @settings(
        max_examples=EXAMPLES_PER_OPERATION,
        derandomize=True,
        database=None,
        deadline=None,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(case=operation.as_strategy(generation_mode=mode).map(_cap_wait))
    def run(case: Any) -> None:
        call(case)

    run()


def test_the_live_api_conforms_to_its_document(
    docs_worker: WorkerProcess, database_url: str
) -> None:
    schema = schemathesis.openapi.from_url(docs_worker.url + "/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    document = http("GET", docs_worker.url + "/openapi.json").json()
    documented = {f"{m.upper()} {p}" for p, item in document["paths"].items() for m in item}
    # schemathesis leaves out the operation serving the schema it was loaded from.
    assert {op.label for op in operations} == documented - {"GET /openapi.json"}

    run = Run(database_url)
    session = requests.Session()
    failures: dict[str, BaseException] = {}
    for operation in operations:
        modes = [GenerationMode.POSITIVE]
        if operation.body or any(True for _ in operation.iter_parameters()):
            modes.append(GenerationMode.NEGATIVE)
        auth = {"Authorization": f"Bearer {run.key_for(operation.label)}"}
        for mode in modes:
            label = f"{operation.label} [{mode.value}]"
            seen = run.statuses[label]

            def call(case: Any, seen: Counter[int] = seen, auth: dict[str, str] = auth) -> None:
                response = case.call(session=session, headers=auth, timeout=15)
                seen[response.status_code] += 1
                case.validate_response(response, checks=CHECKS, headers=auth)

            try:
                _fuzz(operation, mode, call)
            except Exception as exc:  # one operation's failure must not hide the others'
                failures[label] = exc

    print("\n" + run.summary())
    report = "\n\n".join(
        f"== {label}\n{exc!r}\n" + "\n".join(getattr(exc, "__notes__", []))
        for label, exc in failures.items()
    )
    assert not failures, f"{run.summary()}\n{report}"


def test_inputs_that_once_broke_the_handlers_are_refused_cleanly(
    docs_worker: WorkerProcess, api_key: str
) -> None:
    def post(path: str, body: bytes, key: str) -> Any:
        headers = {
            "Authorization": f"Bearer {api_key}",
            "Idempotency-Key": key,
            "Content-Type": "application/json",
        }
        return http("POST", docs_worker.url + path, data=body, headers=headers)

    # U+0000 cannot be stored in the outbox's jsonb: it was a 500.
    r = post("/v1/accounts", b'{"owner_email": "a\\u0000b", "currency": "EUR"}', "nul")
    assert r.status == 422 and r.json()["type"] == "/problems/invalid-request", r.body
    # A control character in a path id cannot go into the Location header: the command was
    # written, then the connection dropped. A NUL there was a 500.
    for path_id in ("%07l%C3%9F%0B", "a%00b", "x" * 65):
        for verb in ("freeze", "unfreeze", "close"):
            r = post(f"/v1/accounts/{path_id}/{verb}", b"", f"{verb}-{path_id}")
            assert r.status == 404 and r.json()["type"] == "/problems/account-not-found"
    # `wait=nan` never reached its deadline: the poll went on until something cut it.
    started = time.monotonic()
    r = docs_worker.get("/v1/transfers/nobody?wait=nan")
    assert r.status == 400 and time.monotonic() - started < 2, r.body
