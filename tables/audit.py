"""The ledger's invariants, checked from what the cluster wrote (pure; `streams.audit` reads it).

At rest (consumer lag 0), per currency: the sum of balances equals applied deposits minus applied
withdrawals; no balance is negative; every transfer that has events has exactly one final
status, and none is left in flight.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from tables.messages import TransferStatus


@dataclass
class AuditReport:
    accounts: int = 0
    balances: dict[str, int] = field(default_factory=dict)
    deposits: dict[str, int] = field(default_factory=dict)
    withdrawals: dict[str, int] = field(default_factory=dict)
    payments_applied: int = 0
    transfers: int = 0
    transfers_by_status: dict[str, int] = field(default_factory=dict)
    violations: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.violations

    def lines(self) -> list[str]:
        out = [f"accounts: {self.accounts}, payments applied: {self.payments_applied}"]
        for currency in sorted(set(self.balances) | set(self.deposits) | set(self.withdrawals)):
            b = self.balances.get(currency, 0)
            d, w = self.deposits.get(currency, 0), self.withdrawals.get(currency, 0)
            mark = "ok" if b == d - w else "MISMATCH"
            out.append(f"{currency}: balances {b} = deposits {d} - withdrawals {w}: {mark}")
        statuses = ", ".join(f"{k} {v}" for k, v in sorted(self.transfers_by_status.items()))
        out.append(f"transfers: {self.transfers} ({statuses or 'none'})")
        out += [f"VIOLATION: {v}" for v in self.violations]
        out.append(
            "verify: OK" if self.ok else f"verify: FAILED ({len(self.violations)} violations)"
        )
        return out


def audit(
    accounts: Mapping[str, Mapping[str, Any]],
    outcomes: Iterable[Mapping[str, Any]],
    transfer_events: Iterable[Mapping[str, Any]],
) -> AuditReport:
    accounts = {k: a for k, a in accounts.items() if a["status"] != "absent"}
    report = AuditReport(accounts=len(accounts))
    balances: dict[str, int] = defaultdict(int)
    for account_id, account in accounts.items():
        balances[account["currency"]] += account["balance"]
        if account["balance"] < 0:
            report.violations.append(
                f"account {account_id} has a negative balance {account['balance']}"
            )
    report.balances = dict(balances)

    decided: dict[str, Mapping[str, Any]] = {}
    for outcome in outcomes:
        status = outcome["status"]
        if status == "duplicate":
            continue
        first = decided.setdefault(outcome["event_id"], outcome)
        if first["status"] != status or first["amount"] != outcome["amount"]:
            report.violations.append(
                f"event {outcome['event_id']} decided twice: {first['status']} and {status}"
            )
    deposits: dict[str, int] = defaultdict(int)
    withdrawals: dict[str, int] = defaultdict(int)
    for outcome in decided.values():
        if outcome["status"] == "applied":
            report.payments_applied += 1
            side = deposits if outcome["type"] == "deposit" else withdrawals
            side[outcome["currency"]] += outcome["amount"]
    report.deposits, report.withdrawals = dict(deposits), dict(withdrawals)
    for currency in set(balances) | set(deposits) | set(withdrawals):
        if balances.get(currency, 0) != deposits.get(currency, 0) - withdrawals.get(currency, 0):
            report.violations.append(
                f"{currency}: balances {balances.get(currency, 0)} != deposits "
                f"{deposits.get(currency, 0)} - withdrawals {withdrawals.get(currency, 0)}"
            )

    finals: dict[str, set[str]] = defaultdict(set)
    for event in transfer_events:
        statuses = finals[event["transfer_id"]]
        if TransferStatus(event["status"]).final:
            statuses.add(event["status"])
    report.transfers = len(finals)
    by_status: dict[str, int] = defaultdict(int)
    for transfer_id, statuses in finals.items():
        if len(statuses) == 1:
            by_status[next(iter(statuses))] += 1
        elif not statuses:
            by_status["in flight"] += 1
            report.violations.append(f"transfer {transfer_id} has no final status")
        else:
            by_status["conflicting"] += 1
            report.violations.append(
                f"transfer {transfer_id} has final statuses {sorted(statuses)}"
            )
    report.transfers_by_status = dict(by_status)
    return report
