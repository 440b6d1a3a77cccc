"""The operator's version: the installed distribution's, which setuptools-scm takes from the git tags
when the package is built or installed (pyproject.toml, docs/versioning.md).

``pet-operator --version``, ``pet-harness --version``, the image's labels and the chart's
``appVersion`` all come from here, so they cannot disagree.
"""

from __future__ import annotations

from importlib import metadata

DISTRIBUTION = "pet-operator"
#: what a source tree that was never installed (no distribution metadata) reports
UNKNOWN = "0+unknown"


def version() -> str:
    """The installed distribution's version (PEP 440), or :data:`UNKNOWN` when it is not installed."""
    try:
        return metadata.version(DISTRIBUTION)
    except metadata.PackageNotFoundError:
        return UNKNOWN
