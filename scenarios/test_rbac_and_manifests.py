"""The operator runs under the shipped RBAC only; the Deployment meets the restricted profile."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
from helpers import wait_phase
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from pet_harness.kube import REPO_ROOT, PetApi, api_client, load_yaml_documents
from pet_harness.waiting import wait_for

DEPLOYMENT = REPO_ROOT / "deploy" / "operator" / "deployment.yaml"


def _operator_api(op: Any) -> Any:
    return api_client(op.kubeconfig)


def test_the_operator_authenticates_as_its_service_account(
    pets: PetApi, pet_operator: Any, claims_namespace: str
) -> None:
    with _operator_api(pet_operator) as api:
        review = client.AuthenticationV1Api(api).create_self_subject_review(
            {"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"})
    assert review.status.user_info.username == f"system:serviceaccount:{claims_namespace}:pet-operator"
    assert "system:masters" not in (review.status.user_info.groups or [])
    pets.create_pet("rex", {"id": 901, "name": "Rex"})
    wait_phase(pets, "rex", "Active")  # and it works under exactly those rights


@pytest.mark.parametrize("what", ["secrets", "pets-elsewhere", "create-pets", "configmaps-cluster-wide",
                                  "patch-leases", "watch-leases", "patch-webhook-configuration",
                                  "patch-mutating-webhook-configuration", "patch-other-role-bindings",
                                  "patch-its-role-binding-elsewhere", "list-role-bindings"])
def test_the_operator_is_forbidden_what_it_does_not_need(
    pets: PetApi, pet_operator: Any, make_namespace: Any, claims_namespace: str, kube_api: Any, what: str
) -> None:
    elsewhere = make_namespace("elsewhere")
    client.CoordinationV1Api(kube_api).create_namespaced_lease(
        claims_namespace, {"metadata": {"name": "some-lease"}, "spec": {"holderIdentity": "x"}})
    rbac_admin = client.RbacAuthorizationV1Api(kube_api)
    view = {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "view"}
    someone = [{"kind": "User", "name": "someone", "apiGroup": "rbac.authorization.k8s.io"}]
    rbac_admin.create_namespaced_role_binding(
        pets.namespace, {"metadata": {"name": "someone-else"}, "roleRef": view, "subjects": someone})
    rbac_admin.create_namespaced_role_binding(  # named like its own, in a namespace it does not serve
        elsewhere, {"metadata": {"name": "pet-operator"}, "roleRef": view, "subjects": someone})
    finalizer = {"metadata": {"finalizers": ["petstore.example.com/pets-finalized"]}}
    with _operator_api(pet_operator) as api:
        core = client.CoreV1Api(api)
        leases = client.CoordinationV1Api(api)
        admission = client.AdmissionregistrationV1Api(api)
        calls = {
            "secrets": lambda: core.list_namespaced_secret(pets.namespace),
            "pets-elsewhere": lambda: PetApi(api, elsewhere).list_pets(),
            "create-pets": lambda: PetApi(api, pets.namespace).create_pet("x", {"id": 902, "name": "x"}),
            "configmaps-cluster-wide": lambda: core.list_config_map_for_all_namespaces(),
            # claims and the leader Lease are created, read, listed, replaced and deleted: never patched or watched
            "patch-leases": lambda: leases.patch_namespaced_lease(
                "some-lease", claims_namespace, {"spec": {"holderIdentity": "y"}}),
            "watch-leases": lambda: leases.list_namespaced_lease(claims_namespace, watch=True, timeout_seconds=1),
            # with mounted certificates (cert-manager injects the CA) the operator may not touch its own
            # webhook configuration, so it can never weaken its failurePolicy
            "patch-webhook-configuration": lambda: admission.patch_validating_webhook_configuration(
                "pet-operator", [{"op": "replace", "path": "/webhooks/0/failurePolicy", "value": "Ignore"}]),
            # nor widen the mutating one's rules (to put its finalizer on what it does not serve)
            "patch-mutating-webhook-configuration": lambda: admission.patch_mutating_webhook_configuration(
                "pet-operator", [{"op": "replace", "path": "/webhooks/0/rules/0/operations", "value": ["*"]}]),
            # its finalizer goes on its own RoleBinding (by name) in the namespaces it serves, nowhere else
            "patch-other-role-bindings": lambda: client.RbacAuthorizationV1Api(api).patch_namespaced_role_binding(
                "someone-else", pets.namespace, finalizer),
            "patch-its-role-binding-elsewhere": lambda: client.RbacAuthorizationV1Api(
                api).patch_namespaced_role_binding("pet-operator", elsewhere, finalizer),
            "list-role-bindings": lambda: client.RbacAuthorizationV1Api(api).list_namespaced_role_binding(
                pets.namespace),
        }
        with pytest.raises(ApiException) as caught:
            calls[what]()
    assert caught.value.status == 403


def test_the_operator_keeps_its_role_binding_in_each_served_namespace(
    pets: PetApi, pet_operator: Any, kube_api: Any
) -> None:
    """Namespace mode: the finalizer that keeps its rights until its pets there are finalized (issue 13,
    finding 1); the binding refers to the role that allows exactly that, and the operator changed nothing
    else of it."""
    rbac = client.RbacAuthorizationV1Api(kube_api)
    binding = wait_for(lambda: rbac.read_namespaced_role_binding("pet-operator", pets.namespace),
                       lambda b: "petstore.example.com/pets-finalized" in (b.metadata.finalizers or []), 30,
                       "the operator's finalizer on its RoleBinding")
    assert binding.role_ref.name == "pet-operator-served-namespace"
    shipped = load_yaml_documents(REPO_ROOT / "deploy" / "rbac" / "namespaced-mode.yaml")[0]
    assert binding.role_ref.name == shipped["roleRef"]["name"]
    assert [s.name for s in binding.subjects] == ["pet-operator"]


@pytest.mark.parametrize("change", ["add-a-subject", "replace-the-subjects", "label"])
def test_the_operator_may_change_only_the_finalizers_of_its_role_binding(
    pets: PetApi, pet_operator: Any, kube_api: Any, change: str
) -> None:
    """RBAC lets it patch that binding; deploy/rbac/role-binding-policy.yaml keeps it to the finalizers: it
    cannot share its rights in the namespace with anyone."""
    rbac_admin = client.RbacAuthorizationV1Api(kube_api)
    wait_for(lambda: rbac_admin.read_namespaced_role_binding("pet-operator", pets.namespace).metadata.finalizers,
             bool, 30, "the operator's finalizer on its RoleBinding")
    current = rbac_admin.read_namespaced_role_binding("pet-operator", pets.namespace)
    mine = [s.to_dict() for s in current.subjects]
    someone = {"kind": "User", "name": "someone", "api_group": "rbac.authorization.k8s.io"}
    patch = {
        "add-a-subject": {"subjects": [*mine, someone]},
        "replace-the-subjects": {"subjects": [someone]},
        "label": {"metadata": {"labels": {"shared": "yes"}}},
    }[change]
    with _operator_api(pet_operator) as api:
        operator_rbac = client.RbacAuthorizationV1Api(api)
        with pytest.raises(ApiException) as caught:
            operator_rbac.patch_namespaced_role_binding("pet-operator", pets.namespace, patch)
        assert caught.value.status == 403
        assert "may change only its finalizers" in caught.value.body
        # what it needs stays allowed: a change of the finalizers alone
        operator_rbac.patch_namespaced_role_binding(
            "pet-operator", pets.namespace, {"metadata": {"finalizers": [*current.metadata.finalizers, "x.io/y"]}})
    after = rbac_admin.read_namespaced_role_binding("pet-operator", pets.namespace)
    assert [s.to_dict() for s in after.subjects] == mine
    assert "x.io/y" in after.metadata.finalizers


def test_the_served_namespace_role_is_the_pet_role_and_its_own_binding_by_name() -> None:
    roles = {doc["metadata"]["name"]: doc for doc in load_yaml_documents(REPO_ROOT / "deploy" / "rbac" /
                                                                          "clusterroles.yaml")}
    served, pets_role = roles["pet-operator-served-namespace"]["rules"], roles["pet-operator-pets"]["rules"]
    assert served[:-1] == pets_role
    assert served[-1] == {"apiGroups": ["rbac.authorization.k8s.io"], "resources": ["rolebindings"],
                          "resourceNames": ["pet-operator"], "verbs": ["get", "patch"]}
    all_namespaces = load_yaml_documents(REPO_ROOT / "deploy" / "rbac" / "all-namespaces-mode.yaml")
    assert "pet-operator-served-namespace" not in {doc["roleRef"]["name"] for doc in all_namespaces}


def _pod_from_deployment(namespace: str, tweak: Any = None) -> dict[str, Any]:
    deployment = load_yaml_documents(DEPLOYMENT)[0]
    template = copy.deepcopy(deployment["spec"]["template"])
    pod = {"apiVersion": "v1", "kind": "Pod",
           "metadata": {"name": "pet-operator-probe", "namespace": namespace, **template["metadata"]},
           "spec": template["spec"]}
    if tweak:
        tweak(pod)
    return pod


def test_the_deployment_passes_the_restricted_pod_security_profile(
    kube_api: Any, make_namespace: Any
) -> None:
    ns = make_namespace("restricted", labels={"pod-security.kubernetes.io/enforce": "restricted",
                                              "pod-security.kubernetes.io/warn": "restricted"})
    deployment = load_yaml_documents(DEPLOYMENT)[0]
    deployment["metadata"]["namespace"] = ns
    created = client.AppsV1Api(kube_api).create_namespaced_deployment(ns, deployment, dry_run="All")
    assert created.spec.template.spec.security_context.run_as_non_root is True
    # Pod Security only enforces on pods: admit the Deployment's pod template as a pod
    client.CoreV1Api(kube_api).create_namespaced_pod(ns, _pod_from_deployment(ns), dry_run="All")

    def root(pod: dict[str, Any]) -> None:
        pod["spec"]["securityContext"].pop("runAsNonRoot")
        pod["spec"]["containers"][0]["securityContext"].pop("runAsNonRoot")
        pod["spec"]["containers"][0]["securityContext"]["capabilities"] = {"add": ["NET_ADMIN"]}

    with pytest.raises(ApiException) as caught:  # the check can fail: a weakened pod is refused
        client.CoreV1Api(kube_api).create_namespaced_pod(ns, _pod_from_deployment(ns, root), dry_run="All")
    assert caught.value.status == 403
    assert "restricted" in caught.value.body


def test_the_deployment_probes_and_resources() -> None:
    container = load_yaml_documents(DEPLOYMENT)[0]["spec"]["template"]["spec"]["containers"][0]
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert set(container["resources"]) == {"requests", "limits"}
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert Path(REPO_ROOT / "deploy" / "operator" / "service.yaml").exists()


def test_the_deployment_runs_two_leader_electing_replicas_with_valid_flags(
    kube_api: Any, make_namespace: Any
) -> None:
    from pet_operator.cli import parse_config

    deployment = load_yaml_documents(DEPLOYMENT)[0]
    assert deployment["spec"]["replicas"] == 2
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    config = parse_config(container["args"], {"POD_NAME": "pet-operator-abc-1", "POD_NAMESPACE": "pet-system"})
    assert config.leader_elect is True
    assert config.lease_name == "pet-operator-leader"
    assert config.leader_identity.startswith("pet-operator-abc-1_")  # how chaos finds the leader's pod
    ns = make_namespace("pdb")
    pdb = load_yaml_documents(REPO_ROOT / "deploy" / "operator" / "poddisruptionbudget.yaml")[0]
    pdb["metadata"]["namespace"] = ns
    created = client.PolicyV1Api(kube_api).create_namespaced_pod_disruption_budget(ns, pdb, dry_run="All")
    assert created.spec.selector.match_labels == deployment["spec"]["selector"]["matchLabels"]


def test_the_deployment_spreads_its_replicas_over_nodes_and_zones(kube_api: Any, make_namespace: Any) -> None:
    """Losing a node (or a zone) must not take every webhook replica: spread them, preferring
    rather than requiring it, so that a one-node cluster still runs both."""
    deployment = load_yaml_documents(DEPLOYMENT)[0]
    selector = deployment["spec"]["selector"]["matchLabels"]
    pod_spec = deployment["spec"]["template"]["spec"]
    spread = {c["topologyKey"]: c for c in pod_spec["topologySpreadConstraints"]}
    assert set(spread) == {"kubernetes.io/hostname", "topology.kubernetes.io/zone"}
    for constraint in spread.values():
        assert constraint["maxSkew"] == 1
        assert constraint["whenUnsatisfiable"] == "ScheduleAnyway"
        assert constraint["labelSelector"]["matchLabels"] == selector
    preferred = pod_spec["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"]
    assert preferred[0]["podAffinityTerm"]["topologyKey"] == "kubernetes.io/hostname"
    assert preferred[0]["podAffinityTerm"]["labelSelector"]["matchLabels"] == selector
    assert "requiredDuringSchedulingIgnoredDuringExecution" not in pod_spec["affinity"]["podAntiAffinity"]
    ns = make_namespace("spread")
    deployment["metadata"]["namespace"] = ns
    created = client.AppsV1Api(kube_api).create_namespaced_deployment(ns, deployment, dry_run="All")
    assert len(created.spec.template.spec.topology_spread_constraints) == 2


def test_the_webhook_listens_on_the_pods_own_address(kube_api: Any) -> None:
    from pet_operator.cli import parse_config

    container = load_yaml_documents(DEPLOYMENT)[0]["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e for e in container["env"]}
    assert env["POD_IP"]["valueFrom"]["fieldRef"]["fieldPath"] == "status.podIP"
    config = parse_config(container["args"], {"POD_NAME": "pet-operator-abc-1", "POD_NAMESPACE": "pet-system",
                                              "POD_IP": "10.244.1.7"})
    assert config.webhook_bind_addresses == ("10.244.1.7",)
    assert config.health_bind_addresses == ("10.244.1.7", "127.0.0.1")  # probes, port-forward; not 0.0.0.0


def test_the_network_policy_admits_only_the_webhook_port_of_the_operator_pods(
    kube_api: Any, make_namespace: Any
) -> None:
    policy = load_yaml_documents(REPO_ROOT / "deploy" / "operator" / "networkpolicy.yaml")[0]
    deployment = load_yaml_documents(DEPLOYMENT)[0]
    template = deployment["spec"]["template"]
    assert policy["spec"]["podSelector"]["matchLabels"].items() <= template["metadata"]["labels"].items()
    assert policy["spec"]["policyTypes"] == ["Ingress"]
    ports = [port for rule in policy["spec"]["ingress"] for port in rule["ports"]]
    named = {p["name"]: p["containerPort"] for p in template["spec"]["containers"][0]["ports"]}
    assert [(p["protocol"], named[p["port"]]) for p in ports] == [("TCP", 9443)]
    for rule in policy["spec"]["ingress"]:
        assert rule["from"] and all(set(peer) == {"ipBlock"} for peer in rule["from"])  # addresses, not pods
    ns = make_namespace("netpol")
    policy["metadata"]["namespace"] = ns
    created = client.NetworkingV1Api(kube_api).create_namespaced_network_policy(ns, policy, dry_run="All")
    assert created.spec.ingress[0].ports[0].port == "webhook"
