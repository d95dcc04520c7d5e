"""The durable job queue every replica shares: jobs and their events in SQLite or PostgreSQL (``store``,
``schema`` with numbered migrations, ``records``), claims and leases with fenced hand-overs (``queue``), this
replica's supervisor thread that claims work for the devices it is given and renews leases (``replica``),
following a job's events from an event loop (``watch``), and Prometheus gauges read from the store
(``metrics``). A job flows QUEUED -> claimed by a replica (RUNNING, under a lease it renews) -> ended, or
back to QUEUED when its replica stops or its lease expires. Generic: nothing here imports torch or knows
what a job computes."""
