"""The gossiped registry: models, node capabilities and job offers (issue 6).

`messages` and `view` are the pure core (schema, signatures, merge rules), `sync` the pure
shapes of /prsm/registry-sync/1.0.0, `store` the synchronous SQLite store, and `service`
the trio shell that gossips, syncs and announces; `api` holds the control methods.
"""
