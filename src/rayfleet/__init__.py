"""rayfleet: your own machines as one Ray cluster that trains and serves models."""

__version__ = "0.1.0"
