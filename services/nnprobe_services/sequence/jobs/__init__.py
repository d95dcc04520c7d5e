"""The durable job queue every replica shares: jobs and their events in SQLite or PostgreSQL (``store``,
``schema`` with numbered migrations, ``records``), claims and leases with fenced hand-overs (``queue``), this
replica's supervisor thread that claims work and renews leases (``replica``), and Prometheus gauges read from
the store (``metrics``). Generic: nothing here imports torch or knows what a job computes."""
