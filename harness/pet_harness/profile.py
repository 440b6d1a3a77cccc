"""What the harness needs to know about an operator under test, in one typed object.

The harness's generic parts (clusters, processes, the pytest plugin's cluster, namespace and
operator fixtures) know nothing of the domain of the operator under test: they take an
:class:`OperatorProfile`. This repository's own operator has one (in ``pet_profile.py``);
another operator's tests give theirs (``examples/greeter/tests/conftest.py``).
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

import yaml


@dataclasses.dataclass(frozen=True)
class OperatorProfile:
    """How to install, start and probe one operator.

    ``command`` is the argv that starts it; ``{python}`` becomes this interpreter, ``{health_port}``
    the port the harness chose for its readiness endpoint, ``{kubeconfig}`` the kubeconfig it gets,
    and ``{metrics_port}`` (if the command has it) a free port for its Prometheus metrics, served at
    ``http://127.0.0.1:{metrics_port}{metrics_path}``: each replica gets its own, never a fixed one.
    Namespaces to serve are appended as ``namespace_flag NS`` pairs (``all_namespaces_flag`` for a
    cluster-wide run). The harness probes ``http://127.0.0.1:{health_port}{ready_path}`` and calls
    the operator ready on a 200.
    """

    name: str
    command: tuple[str, ...]
    crds: tuple[Path, ...] = ()  # CRD manifests: files, or folders whose *.yaml are all CRDs
    namespace_flag: str = "--namespace"
    all_namespaces_flag: str | None = "--all-namespaces"
    ready_path: str = "/readyz"
    kubeconfig_env: bool = True  # also export KUBECONFIG to the process
    env: Mapping[str, str] = dataclasses.field(default_factory=dict)
    #: log lines that mean the operator misbehaved (each test using it fails if one shows up)
    bad_log_markers: tuple[str, ...] = ()
    metrics_path: str = "/metrics"

    @property
    def serves_metrics(self) -> bool:
        """Whether the command takes a ``{metrics_port}`` (the harness then picks one per start)."""
        return any("{metrics_port}" in part for part in self.command)

    def argv(self, *, health_port: int, kubeconfig: Path, namespaces: Sequence[str] = (),
             all_namespaces: bool = False, extra_args: Sequence[str] = (), metrics_port: int = 0) -> list[str]:
        if self.serves_metrics and not metrics_port:
            raise ValueError(f"operator {self.name!r} takes a {{metrics_port}}: give it a port (1..65535)")
        values = {"python": sys.executable, "health_port": str(health_port), "kubeconfig": str(kubeconfig),
                  "metrics_port": str(metrics_port)}
        args = [part.format(**values) for part in self.command]
        if all_namespaces:
            if self.all_namespaces_flag is None:
                raise ValueError(f"operator {self.name!r} has no flag for serving all namespaces")
            args.append(self.all_namespaces_flag)
        for ns in namespaces:
            args += [self.namespace_flag, ns]
        return [*args, *extra_args]

    def crd_documents(self) -> list[dict[str, object]]:
        """Every CustomResourceDefinition of ``crds``, in file order."""
        docs: list[dict[str, object]] = []
        for path in self.crds:
            files = sorted(path.glob("*.yaml")) if path.is_dir() else [path]
            if not files:
                raise FileNotFoundError(f"profile {self.name!r}: no CRD manifests under {path}")
            for file in files:
                for doc in yaml.safe_load_all(file.read_text()):
                    if not doc:
                        continue
                    if doc.get("kind") != "CustomResourceDefinition":
                        raise ValueError(f"profile {self.name!r}: {file} holds a {doc.get('kind')}, "
                                         "not a CustomResourceDefinition")
                    docs.append(doc)
        return docs

    def resources(self) -> list[tuple[str, str, str]]:
        """(group, served version, plural) of each namespaced custom resource of the profile."""
        out = []
        for doc in self.crd_documents():
            spec = doc["spec"]
            if not isinstance(spec, dict):
                raise ValueError(f"a CRD of the profile: spec must be a mapping, got {spec!r}")
            if spec.get("scope", "Namespaced") != "Namespaced":
                continue
            version = next(v["name"] for v in spec["versions"] if v.get("served", True))
            out.append((spec["group"], version, spec["names"]["plural"]))
        return out
