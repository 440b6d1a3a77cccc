"""The pet API under load: tenants that create, update, move and delete pets, and the reconcile
latency of each write, measured from one watch per load process.

Run by ``pet-harness load`` (which starts the cluster and the operator and sets every option),
or by hand against a cluster where the operator runs::

    locust -f loadtests/locustfile.py,loadtests/shapes.py --headless \\
        --host https://127.0.0.1:6443 --kube-config tenant.kubeconfig \\
        --pet-namespaces load-0,load-1 --pet-max 2000 --pet-shape ramp PetCreator

Without ``shapes.py`` the web UI's form sets users and spawn rate; each user makes
``--pet-user-rate`` operations per second. The request type ``RECONCILE`` rows are the
reconcile latencies (``create → Active``, ``update tags → Active``, ``delete → gone``...).
"""

from __future__ import annotations

from typing import Any

from locust import FastHttpUser, constant_throughput, task
from locust.exception import StopUser

from pet_locust import kubeconfig, process
from pet_locust.api import Api
from pet_locust.process import STATE
from pet_locust.tenant import QuotaReached, create, delete, move_store, update_tags

process.register()


class _PetUser(FastHttpUser):
    abstract = True
    # the rate is per user; users x rate is the load (the shapes set the users)
    wait_time = constant_throughput(1.0)
    network_timeout = 30.0
    connection_timeout = 10.0

    def __init__(self, environment: Any) -> None:
        options = environment.parsed_options
        creds = kubeconfig.load(options.kube_config)
        self.host = creds.server
        self.ssl_context_factory = creds.ssl_context
        self.insecure = False
        rate = float(options.pet_user_rate)
        self.wait_time = constant_throughput(rate).__get__(self)  # type: ignore[attr-defined]
        super().__init__(environment)
        self.api = Api(self.client, creds.headers())
        self.status_api = self.api
        if options.status_kube_config and options.status_kube_config != options.kube_config:
            # the raw writer patches status as the operator's identity, over this user's connections
            self.status_api = Api(self.client, kubeconfig.load(options.status_kube_config).headers())

    def _load(self) -> Any:
        if STATE.load is None:
            raise StopUser  # the test is stopping
        return STATE.load

    def _create(self) -> None:
        try:
            create(self._load(), self.api, self.status_api)
        except QuotaReached:
            self.wait()  # nothing left to create here; other tasks may still run


class PetCreator(_PetUser):
    """Creates pets only (fresh ids, a share of duplicates): the creation-rate and population runs."""

    @task
    def create_pet(self) -> None:
        self._create()


class PetTenant(_PetUser):
    """The mix a tenant makes: mostly creates, then tag updates, store moves and deletes."""

    @task(10)
    def create_pet(self) -> None:
        self._create()

    @task(3)
    def update_tags(self) -> None:
        update_tags(self._load(), self.api, self.status_api)

    @task(2)
    def move_store(self) -> None:
        move_store(self._load(), self.api, self.status_api)

    @task(2)
    def delete_pet(self) -> None:
        delete(self._load(), self.api)
