"""Private and unstable internals of other libraries, contained: one adapter module per library.

rayfleet leans on a few things Ray, CTranslate2 and MLflow do not promise to keep (how Ray
packages a working dir, its Serve REST client, its raylet's command line, a converter hook,
an environment variable of MLflow's server). Every such use lives in this package and
nowhere else; each adapter states the versions it was written for and checks the installed
one when it is imported (``require``), so an upgrade fails with one clear error naming the
adapter instead of deep inside a running job. ``tests/unit/test_compat.py`` fails when one of
these internals changes shape.
"""

from __future__ import annotations

from rayfleet.errors import CompatError

__all__ = ["WRITTEN_FOR", "require"]

# The versions each adapter was written for (the same ranges as pyproject.toml's dependencies).
WRITTEN_FOR = {
    "ray": "==2.60.0",
    "ctranslate2": ">=4.5,<5",
    "mlflow": ">=3.17,<4",
}


def require(dist: str, adapter: str, *, installed: str | None = None) -> None:
    """CompatError unless the installed ``dist`` is one ``adapter`` was written for."""
    from importlib.metadata import PackageNotFoundError, version

    from packaging.specifiers import SpecifierSet
    from packaging.version import InvalidVersion, Version

    wanted = WRITTEN_FOR[dist]
    if installed is None:
        try:
            installed = version(dist)
        except PackageNotFoundError:
            raise CompatError(f"{dist} is not installed; {adapter} needs {dist}{wanted}.",
                              hint=f"pip install '{dist}{wanted}'") from None
    try:
        ok = Version(installed) in SpecifierSet(wanted)
    except InvalidVersion:
        ok = False
    if not ok:
        raise CompatError(f"{adapter} was written for {dist}{wanted}; {dist} {installed} is installed, whose "
                          f"internals it uses may have changed.",
                          hint=f"Install the version rayfleet pins: pip install '{dist}{wanted}'")
