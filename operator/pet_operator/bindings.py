"""Keep the operator's RoleBinding in a served namespace until its pets there are finalized.

In namespace mode the operator's rights in a namespace come from one RoleBinding there
(``pet-operator``, ``deploy/rbac/namespaced-mode.yaml``). Deleting the namespace deletes
everything in it, in no set order: without care the RoleBinding goes while pets still wait
on the operator's finalizer, whose removal is then refused (403) and the namespace stays
Terminating for good (issue 13, finding 1).

So the operator puts a finalizer of its own, :data:`BINDING_FINALIZER`, on that RoleBinding
in each served namespace (only a finalizer change: the API server's RBAC escalation check is
not involved), and removes it only once the namespace is being deleted and no pet there
carries the operator's id-claim finalizer any more: the binding lives exactly as long as the
operator needs it. A namespace that is not being deleted keeps the finalizer; one whose
deletion is seen gets no new one.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Collection, Mapping
from typing import Any, Protocol

from pet_operator.claims import FINALIZER
from pet_operator.model import GROUP
from pet_operator.rest import ApiError

log = logging.getLogger(__name__)

#: on the operator's RoleBinding in each served namespace, while pets there may need it
BINDING_FINALIZER = f"{GROUP}/pets-finalized"
#: the RoleBinding that ``deploy/rbac/namespaced-mode.yaml`` makes in each served namespace
DEFAULT_BINDING = "pet-operator"


class BindingApi(Protocol):
    async def read_role_binding(self, namespace: str, name: str) -> dict[str, Any] | None: ...

    async def set_role_binding_finalizers(
        self, namespace: str, name: str, finalizers: list[str], resource_version: str
    ) -> dict[str, Any]: ...

    async def pets_with_finalizer(self, namespace: str, finalizer: str) -> list[dict[str, Any]]: ...

    async def namespace_terminating(self, name: str) -> bool: ...


def terminating(namespace: Mapping[str, Any]) -> bool:
    """Whether a Namespace object is being deleted."""
    meta = namespace.get("metadata") or {}
    return bool(meta.get("deletionTimestamp")) or (namespace.get("status") or {}).get("phase") == "Terminating"


class BindingGuard:
    """The finalizer on the operator's RoleBinding in each served namespace (namespace mode only).

    ``may_write`` is the reconciler's fence: a replica that does not lead writes nothing (the
    leader's catch-up pass guards every namespace when it starts leading).
    """

    def __init__(
        self, api: BindingApi, served: Collection[str], binding: str = DEFAULT_BINDING,
        may_write: Callable[[], bool] = lambda: True,
    ) -> None:
        self.api = api
        self.served = frozenset(served)
        self.binding = binding
        self.may_write = may_write
        self.terminating: set[str] = set()  # served namespaces seen being deleted
        self.guarded: set[str] = set()  # served namespaces whose binding carries our finalizer
        self.released: set[str] = set()  # terminating namespaces whose binding we let go
        self._missing: set[str] = set()  # namespaces already warned about (no binding, or no right)
        #: finalizes a deleted pet (a whole object) that no watch delivers; set where the indexes are known
        self.finalize: Callable[[dict[str, Any]], Awaitable[None]] | None = None
        # the pets of each served namespace that carry the operator's finalizer, as the watch shows them
        # (a set per namespace, so that asking costs nothing however many pets there are)
        self._holders: dict[str, set[str]] = {}

    # --- the pets, as the watch shows them -------------------------------------------------------

    def pet_seen(self, namespace: str, name: str, finalizers: Collection[str]) -> None:
        if namespace not in self.served:
            return
        if FINALIZER in finalizers:
            self._holders.setdefault(namespace, set()).add(name)
        else:
            self.pet_gone(namespace, name)

    def pet_gone(self, namespace: str, name: str) -> None:
        holders = self._holders.get(namespace)
        if holders is not None:
            holders.discard(name)
            if not holders:
                del self._holders[namespace]

    def holding(self, namespace: str) -> bool:
        """Whether the watch shows a pet in ``namespace`` that carries the operator's finalizer."""
        return bool(self._holders.get(namespace))

    # --- events ---------------------------------------------------------------------------

    def observe(self, namespace: Mapping[str, Any]) -> str | None:
        """Note whether a served Namespace is being deleted (no I/O); returns its name, or None if not served."""
        name = str((namespace.get("metadata") or {}).get("name") or "")
        if name not in self.served:
            return None
        if terminating(namespace):
            self.terminating.add(name)
        elif name in self.terminating:  # deleted and made again
            self.terminating.discard(name)
            self.released.discard(name)
            self.guarded.discard(name)
        return name

    async def namespace_changed(
        self, namespace: Mapping[str, Any], pets_holding: Callable[[str], bool] | None = None
    ) -> None:
        """A Namespace was seen on the watch: guard a live served one, release a deleted one when done."""
        name = self.observe(namespace)
        if name is None:
            return
        if name in self.terminating:
            await self.release_when_done(name, pets_holding)
        else:
            await self.guard(name)

    async def sweep(self, pets_holding: Callable[[str], bool] | None = None) -> None:
        """Guard every served namespace not yet guarded; release those being deleted and done.

        Whether a namespace is being deleted is read here too, not only taken from Namespace events:
        Kopf starts its (cluster-wide) Namespace watch only while it watches some served namespace, and
        it does not watch one that is already being deleted when it starts."""
        for name in sorted(self.served):
            if name not in self.terminating and await self.api.namespace_terminating(name):
                self.terminating.add(name)
            if name in self.terminating:
                await self.release_when_done(name, pets_holding)
            elif name not in self.guarded:
                await self.guard(name)

    # --- the two writes -----------------------------------------------------------------

    async def guard(self, namespace: str) -> None:
        """Put our finalizer on the operator's RoleBinding in ``namespace`` (once)."""
        if namespace in self.guarded or namespace in self.terminating or not self.may_write():
            return
        binding = await self._read(namespace)
        if binding is None:
            return
        meta = binding.get("metadata") or {}
        finalizers = list(meta.get("finalizers") or [])
        if BINDING_FINALIZER in finalizers:
            self.guarded.add(namespace)
            return
        if meta.get("deletionTimestamp"):
            return  # being deleted: no new finalizer may be added (and the namespace goes too)
        await self.api.set_role_binding_finalizers(
            namespace, self.binding, [*finalizers, BINDING_FINALIZER], str(meta.get("resourceVersion") or "")
        )
        self.guarded.add(namespace)
        log.info("RoleBinding %s/%s: finalizer %s added (kept until the namespace's pets are finalized)",
                 namespace, self.binding, BINDING_FINALIZER)

    async def release_when_done(self, namespace: str, pets_holding: Callable[[str], bool] | None = None) -> None:
        """In a namespace being deleted, remove our finalizer from the RoleBinding once no pet there
        carries the operator's finalizer: first by the watch (``pets_holding``, default :meth:`holding`),
        then confirmed by a listing."""
        pets_holding = pets_holding or self.holding
        if (namespace not in self.terminating or namespace in self.released or not self.may_write()
                or pets_holding(namespace)):
            return
        waiting = await self.api.pets_with_finalizer(namespace, FINALIZER)
        if waiting and self.finalize is not None:
            # pets the watch index does not hold (Kopf does not watch a namespace that was already being
            # deleted when this replica started) are finalized from the listing
            for body in waiting:
                await self.finalize(body)
            waiting = await self.api.pets_with_finalizer(namespace, FINALIZER)
        if waiting:
            names = [str((body.get("metadata") or {}).get("name")) for body in waiting]
            log.info("namespace %s is being deleted; RoleBinding %s kept while %d pets wait on the "
                     "operator's finalizer (%s)", namespace, self.binding, len(names), ", ".join(names[:5]))
            return
        binding = await self._read(namespace)
        if binding is None:
            self.released.add(namespace)
            return
        meta = binding.get("metadata") or {}
        finalizers = list(meta.get("finalizers") or [])
        if BINDING_FINALIZER in finalizers:
            await self.api.set_role_binding_finalizers(
                namespace, self.binding, [f for f in finalizers if f != BINDING_FINALIZER],
                str(meta.get("resourceVersion") or ""),
            )
            log.info("namespace %s is being deleted and no pet there waits on the operator: "
                     "RoleBinding %s released", namespace, self.binding)
        self.released.add(namespace)
        self.guarded.discard(namespace)

    async def _read(self, namespace: str) -> dict[str, Any] | None:
        try:
            binding = await self.api.read_role_binding(namespace, self.binding)
        except ApiError as exc:
            if exc.status != 403:
                raise
            if namespace not in self._missing:
                self._missing.add(namespace)
                log.warning(
                    "may not read RoleBinding %s in served namespace %s (403): the operator cannot keep its "
                    "rights there while the namespace is deleted; the ClusterRole pet-operator-served-namespace "
                    "grants get and patch of that RoleBinding (deploy/rbac/)", self.binding, namespace,
                )
            return None
        if binding is None and namespace not in self._missing:
            self._missing.add(namespace)
            log.warning(
                "no RoleBinding %s in served namespace %s: the operator cannot keep its rights there while the "
                "namespace is deleted (deleting it may then hang on the pets' finalizer); bind the operator "
                "there as deploy/rbac/namespaced-mode.yaml does, or name the binding with --role-binding",
                self.binding, namespace,
            )
        elif binding is not None:
            self._missing.discard(namespace)
        return binding
