"""A few of the worker's own metrics, read from its /metrics around a measured run.

They say what the request counts cannot: how late the event loop ran (the tail latency's
cause), how many garbage collections of each generation ran, and how many requests shared
each group-commit transaction.
"""

from __future__ import annotations

from collections import defaultdict

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

Sample = dict[str, float]  # "name{label=value}" -> value


async def scrape(url: str, timeout_s: float = 5.0) -> Sample:
    async with (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout_s)) as session,
        session.get(url + "/metrics") as response,
    ):
        text = await response.text()
    out: Sample = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(s.labels.items()))
            out[f"{s.name}{{{labels}}}"] = s.value
    return out


def summary(before: Sample, after: Sample) -> dict[str, float | None]:
    """Loop lag (timer wake-ups late by over 10/50/100 ms, and in all), GC collections per
    generation, and the mean group-commit batch, over the run."""

    def delta(key: str) -> float:
        return after.get(key, 0.0) - before.get(key, 0.0)

    lag = "atlas_event_loop_lag_seconds"
    probes = delta(f"{lag}_count{{}}")
    out: dict[str, float | None] = {"loop_probes": probes}
    for le in ("0.01", "0.05", "0.1"):
        out[f"loop_late_over_{le}s"] = probes - delta(f"{lag}_bucket{{le={le}}}")
    out["loop_lag_max_bucket_s"] = _largest_bucket(before, after, lag)
    gc: defaultdict[str, float] = defaultdict(float)
    for key in after:
        if key.startswith("python_gc_collections_total{generation="):
            gc[key.split("=")[1].rstrip("}")] = delta(key)
    out.update({f"gc_gen{g}": n for g, n in sorted(gc.items())})
    for short, name, labels in (
        ("pg_writes", "atlas_pg_query_duration_seconds", "outcome=ok,statement=with,"),
        ("redis_limits", "atlas_redis_operation_duration_seconds", "operation=rate_limit,"),
        ("posts_in_worker", "http_request_duration_seconds", "method=POST,route=/v1/transfers,"),
    ):
        count = delta(f"{name}_count{{{labels.rstrip(',')}}}")
        out[short] = count
        for le in ("0.01", "0.025"):
            within = delta(f"{name}_bucket{{{_with_le(labels, le)}}}")
            out[f"{short}_over_{le}s"] = count - within
    batches = delta("atlas_write_batch_size_count{}")
    out["write_batch_mean"] = delta("atlas_write_batch_size_sum{}") / batches if batches else None
    return out


def _with_le(labels: str, le: str) -> str:
    """Sorted label text with `le` added, as `scrape` writes keys."""
    pairs = [p for p in labels.rstrip(",").split(",") if p] + [f"le={le}"]
    return ",".join(sorted(pairs))


def _largest_bucket(before: Sample, after: Sample, name: str) -> float | None:
    """The upper bound of the highest bucket any probe of the run fell in."""
    bounds = sorted(
        (float(k.split("le=")[1].rstrip("}")), k)
        for k in after
        if k.startswith(f"{name}_bucket{{") and "+Inf" not in k
    )
    total = after.get(f"{name}_count{{}}", 0.0) - before.get(f"{name}_count{{}}", 0.0)
    for bound, key in bounds:
        if after[key] - before.get(key, 0.0) >= total:
            return bound
    return None if not total else float("inf")
