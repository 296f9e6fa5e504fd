"""`pgconverge report`: a run report built from the ledger alone (Markdown, HTML or JSON)."""

from pgconverge.report.data import NoLedger, collect

__all__ = ["NoLedger", "collect"]
