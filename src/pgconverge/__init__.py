"""pgconverge: retire a legacy identity table online and reversibly."""

__version__ = "0.5.3"
