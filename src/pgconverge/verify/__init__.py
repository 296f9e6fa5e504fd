"""Verification: invariants, snapshots and RLS equivalence, read-only."""
