import asyncio

from web.health import Check, CheckResult, health_document, overall, run_checks


def result(key: str, status: str) -> CheckResult:
    return CheckResult(key, "datastore", status, 1.0, "ms", "2026-01-01T00:00:00Z")  # type: ignore[arg-type]


def test_overall_is_the_worst_status() -> None:
    assert overall([]) == "pass"
    assert overall([result("a:x", "pass"), result("b:x", "pass")]) == "pass"
    assert overall([result("a:x", "pass"), result("b:x", "warn")]) == "warn"
    assert overall([result("a:x", "warn"), result("b:x", "fail"), result("c:x", "pass")]) == "fail"


def test_document_follows_the_health_check_draft() -> None:
    doc = health_document(
        [result("postgres:responseTime", "pass"), result("redis:responseTime", "fail")],
        service_id="atlas",
        version="1",
    )
    assert doc["status"] == "fail"
    check = doc["checks"]["postgres:responseTime"][0]
    assert set(check) >= {"componentType", "observedValue", "observedUnit", "status", "time"}


async def test_a_passing_probe_reports_its_response_time() -> None:
    async def probe() -> None:
        await asyncio.sleep(0.01)

    (r,) = await run_checks([Check("db:responseTime", "datastore", probe, 1.0)])
    assert r.status == "pass"
    assert r.observed_unit == "ms"
    assert r.observed_value is not None and r.observed_value >= 10
    assert r.output is None


async def test_a_slow_probe_fails_with_its_timeout_in_the_output() -> None:
    async def probe() -> None:
        await asyncio.sleep(5)

    (r,) = await run_checks([Check("db:responseTime", "datastore", probe, 0.05)])
    assert r.status == "fail"
    assert r.output == "no answer within 0.05s"


async def test_a_raising_probe_fails_with_the_error_and_can_be_degraded_to_warn() -> None:
    async def probe() -> None:
        raise ConnectionRefusedError("refused")

    (failed,) = await run_checks([Check("redis:responseTime", "datastore", probe, 1.0)])
    assert failed.status == "fail"
    assert failed.output is not None and "ConnectionRefusedError: refused" in failed.output
    (warned,) = await run_checks(
        [Check("redis:responseTime", "datastore", probe, 1.0, failure_status="warn")]
    )
    assert warned.status == "warn"


async def test_untimed_probe_reports_its_value() -> None:
    async def probe() -> int:
        return 3

    (r,) = await run_checks(
        [Check("pg:migrations", "datastore", probe, 1.0, "applied", timed=False)]
    )
    assert (r.status, r.observed_value) == ("pass", 3)
