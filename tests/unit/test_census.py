from streams.census import count_statuses


async def test_accounts_are_counted_by_status_and_absent_records_are_not_accounts() -> None:
    records = [
        {"status": "open"},
        {"status": "open"},
        {"status": "frozen"},
        {"status": "closed"},
        {"status": "absent"},  # only dedup marks of an id never opened
        "not a record",
    ] * 700  # more than one chunk: the scan yields to the event loop on the way
    counts = await count_statuses(records, chunk=1000)
    assert counts == {"open": 1400, "frozen": 700, "closed": 700}
