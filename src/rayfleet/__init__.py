"""rayfleet: your own machines as one Ray cluster that trains and serves models.

    import rayfleet
    c = rayfleet.connect()          # or rayfleet.connect("fleet.yaml")

See ``rayfleet.api`` for what a ``Cluster`` does.
"""

__version__ = "0.1.0"

__all__ = ["connect", "Cluster", "__version__"]


def __getattr__(name: str):
    # Lazy, so that `import rayfleet` (and the CLI's start) does not import Ray.
    if name in ("connect", "Cluster"):
        from rayfleet import api

        return getattr(api, name)
    raise AttributeError(f"module 'rayfleet' has no attribute {name!r}")
