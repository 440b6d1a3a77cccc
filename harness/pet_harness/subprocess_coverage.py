"""Coverage of the Python processes a test starts (operators, command-line tools), when the test
process itself is measured by coverage (``pytest --cov``, ``coverage run``).

pytest-cov measures the pytest processes: the controller and each xdist worker. A process that a
test starts is measured by coverage's own start-up hook instead: coverage installs a ``.pth`` file
that calls ``coverage.process_startup()`` in every Python process of the environment, and that
starts measuring when ``COVERAGE_PROCESS_START`` names a configuration file (coverage's
"Managing processes" documentation). :func:`child_environment` gives those variables for the
children of a measured process; the pytest plugin puts them into ``os.environ`` for the session,
so every process started through the harness inherits them.

Each child writes its own data file next to the parent's (``parallel = true`` in the
configuration; the ``COVERAGE_FILE`` given here is absolute, so a child's working folder does not
matter) when it exits: normally, through ``sys.exit`` after a SIGTERM it handles (the operator's
graceful shutdown, the harness's :func:`~pet_harness.processes.install_signal_handlers`), or
through ``os._exit`` when the configuration patches it (``patch = ["_exit"]``). A child that leaves
SIGTERM at its default, or is SIGKILLed, writes nothing: what it ran is lost to the figures.
"""

from __future__ import annotations

import os
from typing import Any

#: the variables coverage's start-up hook reads
PROCESS_START = "COVERAGE_PROCESS_START"
DATA_FILE = "COVERAGE_FILE"


def running_coverage() -> Any | None:
    """The coverage measuring this process, or None (coverage not installed or not running)."""
    try:
        import coverage
    except ImportError:
        return None
    current = getattr(coverage.Coverage, "current", None)
    return current() if current is not None else None


def child_environment(cov: Any | None) -> dict[str, str]:
    """``COVERAGE_PROCESS_START`` (the configuration file ``cov`` read) and ``COVERAGE_FILE`` (its
    data file, absolute) for the children of a process measured by ``cov``; empty when ``cov`` is
    None, read no configuration file (a child would not know what to measure) or its configuration
    is not ``parallel`` (the children would overwrite one another's data)."""
    if cov is None:
        return {}
    config = cov.config
    config_file = getattr(config, "config_file", None)
    if not config_file or not getattr(config, "parallel", False):
        return {}
    return {PROCESS_START: os.path.abspath(config_file), DATA_FILE: os.path.abspath(config.data_file)}
