"""Operations: each module one kind of change, rendering its SQL and its reverse without a connection."""

from pgconverge.operations.base import Cost, Lock, Operation, Plan, Step  # noqa: F401
