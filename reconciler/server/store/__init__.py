"""Everything the server remembers, in one SQLite file (WAL mode, the default) or in a PostgreSQL
database several servers share, behind this one package.

The store owns persistence only: cluster status, revisions seen, plans and their lifecycle,
approvals, runs and their per-step results, the backups index, the audit log, API tokens (hashed)
and the web sessions opened with them,
the last facts of every host and the webhook delivery ids already seen. It decides nothing; the
controller does.

Every write is a committed transaction before the call returns, so a killed server loses nothing
it has acknowledged. Plan state changes are compare-and-set (`transition_plan`): two requests
racing to approve the same plan cannot both win.

The methods are synchronous and short. One connection is shared under a lock, so calls are safe
from the event loop and from FastAPI's worker threads alike.

`database.Store` is the store; `records` the values it hands out; `migrations` the schema;
`tokens` how API tokens are made and hashed; `connection` the engine interface the query modules
use, `sqlite_engine` and `postgres_engine` its two implementations, `dialect` the translation of
the SQL (written for SQLite) to PostgreSQL's; `status`, `plans`, `runs`, `audit`, `access`,
`sessions`, `cluster_locks` and `totals` the queries, by area.
"""
