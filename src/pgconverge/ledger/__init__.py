"""The append-only ledger in the private schema: runs, step events, checkpoints, snapshots, saved definitions."""
