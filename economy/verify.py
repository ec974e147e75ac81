"""``verify``: recompute the ledger from its entries and check every invariant; never writes.

What it checks, each a line of ``problems`` when it fails:

- every account's four totals equal the sums of its entries;
- every entry's ``balance_after`` and ``pending_after`` equal the running sums before it;
- every transfer's entries sum to zero, per phase;
- all posted balances sum to zero, and so do all pending ones;
- the open-hold index holds exactly the holds no post, void or expiry resolved;
- the clearing account carries exactly the open holds (zero when none is open), nothing posted;
- no job is held, charged, resolved or settled twice, and every resolution names its job's hold;
- every settlement moves exactly its job's unsettled earning (never more), from a post neither
  refunded nor under an open or upheld dispute;
- every worker's earnings account holds exactly its unsettled, unrefunded posts' shares;
- every slashing event's penalty and refunds are the transfers it names; every upheld dispute's
  post is refunded;
- settlement periods follow each other without gap, and each statement closes on the balance
  its account had at the period's end.
"""

from __future__ import annotations

from dataclasses import dataclass

import asyncpg

_SIGNED = "CASE e.side WHEN 'credit' THEN e.amount ELSE -e.amount END"

_ACCOUNT_TOTALS = """
SELECT a.kind, a.ref FROM ledger_accounts a LEFT JOIN (
    SELECT account_id,
           sum(amount) FILTER (WHERE side = 'debit' AND phase = 'posted') AS dp,
           sum(amount) FILTER (WHERE side = 'credit' AND phase = 'posted') AS cp,
           sum(amount) FILTER (WHERE side = 'debit' AND phase = 'pending') AS dq,
           sum(amount) FILTER (WHERE side = 'credit' AND phase = 'pending') AS cq
    FROM revenue_ledger GROUP BY account_id
) s ON s.account_id = a.id
WHERE a.debits_posted <> coalesce(s.dp, 0) OR a.credits_posted <> coalesce(s.cp, 0)
   OR a.debits_pending <> coalesce(s.dq, 0) OR a.credits_pending <> coalesce(s.cq, 0)
ORDER BY a.id
"""

_RUNNING = f"""
SELECT id, account_id FROM (
    SELECT e.id, e.account_id, e.balance_after, e.pending_after,
           sum(CASE WHEN e.phase = 'posted' THEN {_SIGNED} ELSE 0 END) OVER w AS balance,
           sum(CASE WHEN e.phase = 'pending' THEN {_SIGNED} ELSE 0 END) OVER w AS pending
    FROM revenue_ledger e WINDOW w AS (PARTITION BY e.account_id ORDER BY e.id)
) x WHERE balance <> balance_after OR pending <> pending_after ORDER BY id LIMIT 20
"""  # noqa: S608

_UNBALANCED = f"""
SELECT e.transfer_id, e.phase, sum({_SIGNED}) AS net FROM revenue_ledger e
GROUP BY e.transfer_id, e.phase HAVING sum({_SIGNED}) <> 0 ORDER BY 1 LIMIT 20
"""  # noqa: S608

_GRAND_TOTALS = f"""
SELECT coalesce(sum({_SIGNED}) FILTER (WHERE e.phase = 'posted'), 0) AS posted,
       coalesce(sum({_SIGNED}) FILTER (WHERE e.phase = 'pending'), 0) AS pending
FROM revenue_ledger e
"""  # noqa: S608

_UNINDEXED_HOLDS = """
SELECT h.job_id FROM ledger_transfers h
WHERE h.kind = 'hold'
  AND NOT EXISTS (SELECT 1 FROM ledger_transfers r WHERE r.pending_id = h.id)
  AND NOT EXISTS (SELECT 1 FROM ledger_open_holds o WHERE o.transfer_id = h.id
                  AND o.amount = h.amount AND o.expires_at = h.expires_at)
ORDER BY h.id LIMIT 20
"""

_STALE_INDEX = """
SELECT o.transfer_id FROM ledger_open_holds o JOIN ledger_transfers h ON h.id = o.transfer_id
WHERE h.kind <> 'hold' OR EXISTS (SELECT 1 FROM ledger_transfers r WHERE r.pending_id = h.id)
ORDER BY 1 LIMIT 20
"""

_CLEARING = """
SELECT a.debits_posted, a.credits_posted, a.debits_pending, a.credits_pending,
       (SELECT coalesce(sum(amount), 0) FROM ledger_open_holds) AS open_amount,
       (SELECT count(*) FROM ledger_open_holds) AS open_holds
FROM ledger_accounts a WHERE a.kind = 'clearing'
"""

_JOBS = """
SELECT job_id, kind, count(*) AS n FROM ledger_transfers WHERE job_id IS NOT NULL
GROUP BY job_id, kind HAVING count(*) > 1 ORDER BY 1 LIMIT 20
"""

_RESOLUTIONS = """
SELECT r.key FROM ledger_transfers r LEFT JOIN ledger_transfers h ON h.id = r.pending_id
WHERE r.pending_id IS NOT NULL
  AND (h.kind IS DISTINCT FROM 'hold' OR h.job_id IS DISTINCT FROM r.job_id)
ORDER BY r.id LIMIT 20
"""

_EARNING = """
coalesce((SELECT sum(e.amount) FROM revenue_ledger e JOIN ledger_accounts a ON a.id = e.account_id
          WHERE e.transfer_id = p.id AND a.kind = 'worker_earnings'
            AND a.ref = p.request->>'worker_id'), 0)
"""

_SETTLES = f"""
SELECT s.key FROM ledger_transfers s
LEFT JOIN ledger_transfers p ON p.kind = 'post' AND p.job_id = s.job_id
WHERE s.kind = 'settle' AND (
    p.id IS NULL OR NOT p.request ? 'worker_id' OR s.amount <> {_EARNING}
    OR EXISTS (SELECT 1 FROM ledger_transfers r WHERE r.reverses_id = p.id)
    OR EXISTS (SELECT 1 FROM disputes d WHERE d.job_id = s.job_id
               AND d.status IN ('open', 'upheld')))
ORDER BY s.id LIMIT 20
"""  # noqa: S608

_EARNINGS = f"""
SELECT a.ref, a.credits_posted - a.debits_posted AS balance, coalesce(u.unsettled, 0) AS unsettled
FROM ledger_accounts a LEFT JOIN (
    SELECT p.request->>'worker_id' AS ref, sum({_EARNING}) AS unsettled FROM ledger_transfers p
    WHERE p.kind = 'post' AND p.request ? 'worker_id'
      AND NOT EXISTS (SELECT 1 FROM ledger_transfers s WHERE s.kind = 'settle'
                      AND s.job_id = p.job_id)
      AND NOT EXISTS (SELECT 1 FROM ledger_transfers r WHERE r.reverses_id = p.id)
    GROUP BY 1
) u ON u.ref = a.ref
WHERE a.kind = 'worker_earnings' AND a.credits_posted - a.debits_posted <> coalesce(u.unsettled, 0)
ORDER BY a.id LIMIT 20
"""  # noqa: S608

_SLASHES = """
SELECT ev.key FROM slashing_events ev LEFT JOIN ledger_transfers t ON t.id = ev.penalty_transfer_id
WHERE (ev.penalty_transfer_id IS NOT NULL
       AND (t.kind <> 'slash' OR t.amount <> ev.amount OR t.key <> 'slash:' || ev.key))
   OR EXISTS (SELECT 1 FROM unnest(ev.reversal_ids) AS r(id)
              LEFT JOIN ledger_transfers x ON x.id = r.id
              WHERE x.kind IS DISTINCT FROM 'reversal')
ORDER BY ev.id LIMIT 20
"""

_UPHELD = """
SELECT d.id, d.job_id FROM disputes d WHERE d.status = 'upheld'
  AND NOT EXISTS (SELECT 1 FROM ledger_transfers r WHERE r.reverses_id = d.post_id)
ORDER BY d.id LIMIT 20
"""

_PERIODS = """
SELECT id FROM (
    SELECT id, after_entry_id,
           lag(through_entry_id, 1, 0::bigint) OVER (ORDER BY id) AS previous
    FROM ledger_periods
) x WHERE after_entry_id <> previous ORDER BY id LIMIT 20
"""

_STATEMENTS = """
SELECT s.period_id, a.kind, a.ref FROM ledger_statements s
JOIN ledger_periods p ON p.id = s.period_id JOIN ledger_accounts a ON a.id = s.account_id
WHERE s.closing <> coalesce((SELECT b.balance_after FROM revenue_ledger b
                             WHERE b.account_id = s.account_id AND b.id <= p.through_entry_id
                             ORDER BY b.id DESC LIMIT 1), 0)
ORDER BY s.period_id, s.account_id LIMIT 20
"""

_COUNTS = """
SELECT (SELECT count(*) FROM ledger_accounts) AS accounts,
       (SELECT count(*) FROM ledger_transfers) AS transfers,
       (SELECT count(*) FROM revenue_ledger) AS entries,
       (SELECT count(*) FROM ledger_open_holds) AS open_holds,
       (SELECT count(*) FROM ledger_transfers WHERE kind = 'post') AS posted_jobs
"""


@dataclass(frozen=True)
class VerifyReport:
    """What ``verify`` counted and every problem it found (none when the books are right)."""

    accounts: int
    transfers: int
    entries: int
    open_holds: int
    posted_jobs: int
    problems: tuple[str, ...]

    @property
    def ok(self) -> bool:
        """True when no invariant is broken."""
        return not self.problems


async def verify(conn: asyncpg.Connection) -> VerifyReport:
    """Recompute every balance from the entries and check every invariant, in one snapshot."""
    async with conn.transaction(isolation="repeatable_read", readonly=True):
        problems: list[str] = []
        for row in await conn.fetch(_ACCOUNT_TOTALS):
            name = f"{row['kind']}:{row['ref']}" if row["ref"] else row["kind"]
            problems.append(f"account {name}: totals differ from the sum of its entries")
        for row in await conn.fetch(_RUNNING):
            problems.append(f"entry {row['id']}: balance after differs from the running sum")
        for row in await conn.fetch(_UNBALANCED):
            problems.append(
                f"transfer {row['transfer_id']}: {row['phase']} entries sum to {row['net']}"
            )
        grand = await conn.fetchrow(_GRAND_TOTALS)
        for phase in ("posted", "pending"):
            if grand[phase]:
                problems.append(f"all {phase} balances sum to {grand[phase]}, not 0")
        for row in await conn.fetch(_UNINDEXED_HOLDS):
            problems.append(f"job {row['job_id']}: open hold missing from the open-hold index")
        for row in await conn.fetch(_STALE_INDEX):
            problems.append(f"open-hold index lists resolved transfer {row['transfer_id']}")
        problems.extend(_clearing_problems(await conn.fetchrow(_CLEARING)))
        for row in await conn.fetch(_JOBS):
            problems.append(f"job {row['job_id']}: {row['n']} {row['kind']} transfers")
        for row in await conn.fetch(_RESOLUTIONS):
            problems.append(f"transfer {row['key']}: resolves no hold of its job")
        problems.extend(await _settlement_problems(conn))
        counts = await conn.fetchrow(_COUNTS)
    return VerifyReport(
        accounts=counts["accounts"],
        transfers=counts["transfers"],
        entries=counts["entries"],
        open_holds=counts["open_holds"],
        posted_jobs=counts["posted_jobs"],
        problems=tuple(problems),
    )


async def _settlement_problems(conn: asyncpg.Connection) -> list[str]:
    problems = []
    for row in await conn.fetch(_SETTLES):
        problems.append(f"transfer {row['key']}: settles other than its job's unsettled earning")
    for row in await conn.fetch(_EARNINGS):
        problems.append(
            f"account worker_earnings:{row['ref']}: holds {row['balance']}, its unsettled "
            f"earnings are {row['unsettled']}"
        )
    for row in await conn.fetch(_SLASHES):
        problems.append(f"slashing event {row['key']}: names transfers that are not its own")
    for row in await conn.fetch(_UPHELD):
        problems.append(f"dispute {row['id']}: upheld but job {row['job_id']} is not refunded")
    for row in await conn.fetch(_PERIODS):
        problems.append(f"period {row['id']}: does not start where the previous one ended")
    for row in await conn.fetch(_STATEMENTS):
        name = f"{row['kind']}:{row['ref']}" if row["ref"] else row["kind"]
        problems.append(f"period {row['period_id']}: statement of {name} closes off its balance")
    return problems


def _clearing_problems(row: asyncpg.Record | None) -> list[str]:
    if row is None:
        return ["the clearing account is missing"]
    problems = []
    if row["debits_posted"] or row["credits_posted"] or row["debits_pending"]:
        problems.append("clearing: has posted or pending-debit amounts; it only carries holds")
    if row["credits_pending"] != row["open_amount"]:
        problems.append(
            f"clearing: carries {row['credits_pending']} but open holds total "
            f"{row['open_amount']} ({row['open_holds']} open)"
        )
    return problems
