"""Catalog ⇄ JSON, so the catalog a migration was planned from can be kept in the ledger."""

from __future__ import annotations

import dataclasses
from typing import Any

from pgconverge.catalog import model
from pgconverge.config import QualifiedName

_TYPES = {cls.__name__: cls for cls in (
    model.Column, model.Constraint, model.Index, model.ForeignKey, model.Trigger, model.Rule, model.Table, model.Policy,
    model.Function, model.View, model.Grant, model.Dependent, model.Partition, model.Catalog, QualifiedName)}


def to_json(obj: Any) -> Any:
    """Encode dataclasses (tagged), tuples (as lists) and frozensets (tagged) into plain JSON values."""
    if dataclasses.is_dataclass(obj):
        out = {"$": type(obj).__name__}
        for f in dataclasses.fields(obj):
            out[f.name] = to_json(getattr(obj, f.name))
        return out
    if isinstance(obj, (tuple, list)):
        return [to_json(x) for x in obj]
    if isinstance(obj, frozenset):
        return {"$set": sorted(to_json(x) for x in obj)}
    return obj


def from_json(data: Any) -> Any:
    """Decode what to_json produced; every list becomes a tuple, as the model uses tuples throughout."""
    if isinstance(data, dict):
        if "$set" in data:
            return frozenset(from_json(x) for x in data["$set"])
        cls = _TYPES[data["$"]]
        return cls(**{k: from_json(v) for k, v in data.items() if k != "$"})
    if isinstance(data, list):
        return tuple(from_json(x) for x in data)
    return data
