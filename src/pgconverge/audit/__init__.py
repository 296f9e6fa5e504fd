"""Audits: what still references the legacy names outside the database (application code)."""

from pgconverge.audit.code import (CATEGORIES, AuditResult, Finding, audit_code,
                                   sample_code_dir, scan)

__all__ = ["CATEGORIES", "AuditResult", "Finding", "audit_code", "sample_code_dir", "scan"]
