"""The pet operator as the harness runs it: its :class:`~pet_harness.profile.OperatorProfile`."""

from __future__ import annotations

import shutil
import sys
from collections.abc import Sequence

from pet_harness.profile import OperatorProfile

#: Kopf logs this when a patch it made did not land as sent (e.g. fields pruned by the schema).
INCONSISTENCY_MARKER = "inconsistencies"


def operator_command() -> list[str]:
    exe = shutil.which("pet-operator")
    if exe:
        return [exe]
    return [sys.executable, "-m", "pet_operator"]


def pet_operator_profile(command: Sequence[str] | None = None) -> OperatorProfile:
    """How the harness runs ``pet-operator`` (``command``: another way to start it, e.g. the
    interpreter of a load runtime)."""
    from pet_harness.kube import CRD_DIR  # the checkout's CRDs, only when a pet operator is run

    return OperatorProfile(
        name="pet-operator",
        command=(*(command or operator_command()), "--kubeconfig", "{kubeconfig}", "--health-port", "{health_port}",
                 "--metrics-port", "{metrics_port}"),
        crds=(CRD_DIR,),
        kubeconfig_env=False,
        bad_log_markers=(INCONSISTENCY_MARKER,),
    )
