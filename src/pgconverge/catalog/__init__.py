"""Catalog introspection: what the database holds, as frozen dataclasses."""
