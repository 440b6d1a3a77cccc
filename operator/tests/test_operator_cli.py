"""cli: command line and environment into a validated Config; every error names value and rule."""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Any

import pytest

from pet_operator import app, cli, rest
from pet_operator.cli import Config, ConfigError, parse_config

NO_ENV: dict[str, str] = {}


def test_namespace_flags() -> None:
    config = parse_config(["--namespace", "default", "-n", "pets"], NO_ENV)
    assert config.namespaces == ("default", "pets")
    assert config.all_namespaces is False
    assert config.scope == "namespaces default, pets"


def test_defaults() -> None:
    config = parse_config(["-n", "default"], NO_ENV)
    assert config.leader_identity  # a fresh identity per process: host name plus a random suffix
    assert config == Config(
        leader_identity=config.leader_identity,
        lease_namespace="pet-system",
        namespaces=("default",),
        all_namespaces=False,
        health_port=8080,
        kubeconfig=None,
        resync_period=300.0,
        log_level="INFO",
        webhook_host_names=("pet-operator-webhook.pet-system.svc", "localhost", "127.0.0.1"),
    )


def test_all_options() -> None:
    config = parse_config(
        [
            "-n",
            "a",
            "--health-port",
            "9000",
            "--kubeconfig",
            "/tmp/kc",
            "--resync-period",
            "0",
            "--log-level",
            "DEBUG",
        ],
        NO_ENV,
    )
    assert (config.health_port, config.kubeconfig, config.resync_period, config.log_level) == (
        9000,
        "/tmp/kc",
        0.0,
        "DEBUG",
    )


def test_empty_kubeconfig_means_none() -> None:
    assert parse_config(["-n", "a", "--kubeconfig", ""], NO_ENV).kubeconfig is None


def test_kopf_namespace_env_comma_separated_with_spaces() -> None:
    config = parse_config([], {"KOPF_NAMESPACE": " default , pets,,  other "})
    assert config.namespaces == ("default", "pets", "other")


def test_namespace_flag_wins_over_env() -> None:
    config = parse_config(["--namespace", "mine"], {"KOPF_NAMESPACE": "default,pet-system"})
    assert config.namespaces == ("mine",)


def test_env_is_read_from_os_environ_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KOPF_NAMESPACE", "from-env")
    assert parse_config([]).namespaces == ("from-env",)


def test_duplicates_are_removed_keeping_order() -> None:
    assert parse_config(["-n", "b", "-n", "a", "-n", "b", "-n", " a "], NO_ENV).namespaces == ("b", "a")
    assert parse_config([], {"KOPF_NAMESPACE": "b,a,b, a"}).namespaces == ("b", "a")


def test_all_namespaces() -> None:
    config = parse_config(["--all-namespaces"], NO_ENV)
    assert config.all_namespaces is True
    assert config.namespaces == ()
    assert config.scope == "all namespaces"
    assert parse_config(["-A"], NO_ENV).all_namespaces is True


# --- errors -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "env"),
    [([], {}), ([], {"KOPF_NAMESPACE": ""}), ([], {"KOPF_NAMESPACE": " , ,"}), (["-n", "  "], {})],
    ids=["nothing", "empty-env", "blank-env", "blank-flag"],
)
def test_no_namespace_is_an_error_never_cluster_wide(argv: list[str], env: dict[str, str]) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(argv, env)
    message = str(info.value)
    assert "no namespace to serve" in message
    assert "--namespace" in message
    assert "KOPF_NAMESPACE" in message
    assert "--all-namespaces" in message


def test_all_namespaces_and_namespaces_exclude_each_other() -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(["-A", "-n", "default", "-n", "other"], NO_ENV)
    message = str(info.value)
    assert "--all-namespaces" in message
    assert "default, other" in message
    assert "exclude each other" in message


@pytest.mark.parametrize(
    "bad",
    ["Default", "pet_system", "-lead", "trail-", "a" * 64, "dots.not.allowed", "ümlaut", "a,b"],
)
def test_invalid_namespace_names_are_rejected(bad: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config([f"--namespace={bad}"], NO_ENV)
    message = str(info.value)
    assert repr(bad) in message
    assert "not a valid namespace name" in message
    assert "1 to 63 characters" in message
    assert "lower-case letters, digits and '-'" in message


def test_invalid_namespace_from_env_is_rejected() -> None:
    with pytest.raises(ConfigError, match=r"namespace 'Bad' is not a valid namespace name"):
        parse_config([], {"KOPF_NAMESPACE": "good,Bad"})


@pytest.mark.parametrize("good", ["a", "0", "a" * 63, "a-b-1", "1abc"])
def test_valid_namespace_names(good: str) -> None:
    assert parse_config(["-n", good], NO_ENV).namespaces == (good,)


@pytest.mark.parametrize("port", ["0", "65536", "-1"])
def test_health_port_out_of_range(port: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(["-n", "a", "--health-port", port], NO_ENV)
    assert str(info.value) == f"--health-port {port} is not a TCP port (1..65535)"


@pytest.mark.parametrize("port", ["1", "65535"])
def test_health_port_bounds(port: str) -> None:
    assert parse_config(["-n", "a", "--health-port", port], NO_ENV).health_port == int(port)


def test_negative_resync_period() -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(["-n", "a", "--resync-period", "-1"], NO_ENV)
    assert str(info.value) == "--resync-period -1.0 must be 0 (off) or positive"


def test_argparse_type_errors_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        parse_config(["-n", "a", "--health-port", "http"], NO_ENV)
    assert info.value.code == 2
    assert "--health-port: invalid int value: 'http'" in capsys.readouterr().err


def test_config_error_is_a_value_error() -> None:
    assert issubclass(ConfigError, ValueError)


# --- main -------------------------------------------------------------------------------------


def test_main_without_arguments_returns_2_with_the_message(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("KOPF_NAMESPACE", raising=False)
    monkeypatch.setattr(sys, "argv", ["pet-operator"])
    assert cli.main() == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err.startswith("pet-operator: error: no namespace to serve: give --namespace NS")
    assert "--all-namespaces" in err


def test_main_reports_bad_values(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KOPF_NAMESPACE", raising=False)
    assert cli.main(["-n", "Bad"]) == 2
    assert "pet-operator: error: namespace 'Bad' is not a valid namespace name" in capsys.readouterr().err


def test_main_runs_the_operator_with_the_config(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[Config] = []

    def fake_run(config: Config) -> int:
        seen.append(config)
        return 0

    monkeypatch.setattr(app, "run", fake_run)
    monkeypatch.setattr(rest, "load", lambda kubeconfig: None)
    assert cli.main(["-n", "default", "--health-port", "8181"]) == 0
    assert [c.namespaces for c in seen] == [("default",)]
    assert seen[0].health_port == 8181


def test_main_refuses_a_kubeconfig_it_cannot_use(tmp_path: Any, capsys: pytest.CaptureFixture[str]) -> None:
    broken = tmp_path / "kubeconfig"
    broken.write_text("current-context: nowhere\n")
    assert cli.main(["-n", "default", "--kubeconfig", str(broken)]) == 2
    err = capsys.readouterr().err
    assert str(broken) in err
    assert "no usable current context" in err


def test_console_script_without_arguments_exits_2() -> None:
    env = {k: v for k, v in os.environ.items() if k != "KOPF_NAMESPACE"}
    result = subprocess.run(
        [sys.executable, "-m", "pet_operator"],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 2
    assert "pet-operator: error: no namespace to serve" in result.stderr


# --- shutdown ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("argv", "drain"), [
    ([], 5.0),  # the default
    (["--shutdown-grace", "4"], 2.0),  # half a short grace
    (["--shutdown-drain-delay", "0"], 0.0),
    (["--shutdown-grace", "3", "--shutdown-drain-delay", "3"], 3.0),
])
def test_shutdown_drain_delay(argv: list[str], drain: float) -> None:
    assert parse_config(["-n", "a", *argv], NO_ENV).shutdown_drain_delay == drain


@pytest.mark.parametrize("argv", [
    ["--shutdown-drain-delay", "-1"],
    ["--shutdown-drain-delay", "nan"],
    ["--shutdown-grace", "3", "--shutdown-drain-delay", "4"],
])
def test_shutdown_drain_delay_outside_the_grace_is_refused(argv: list[str]) -> None:
    with pytest.raises(ConfigError, match=r"--shutdown-drain-delay .* must be between 0 and --shutdown-grace"):
        parse_config(["-n", "a", *argv], NO_ENV)


# --- webhook exposure ---------------------------------------------------------------------------


@pytest.mark.parametrize(("argv", "env", "addresses"), [
    ([], {}, ("127.0.0.1",)),  # run by hand: loopback only, never every interface silently
    ([], {"POD_IP": "10.1.2.3"}, ("10.1.2.3",)),  # in a pod: its own address (the Service routes there)
    ([], {"POD_IP": "fd00::12"}, ("fd00::12",)),
    (["--webhook-bind-address", "::"], {"POD_IP": "10.1.2.3"}, ("::",)),
    (["--webhook-bind-address", "0.0.0.0", "--webhook-bind-address", "::"], {}, ("0.0.0.0", "::")),  # noqa: S104 - explicit opt-in
])
def test_webhook_bind_addresses(argv: list[str], env: dict[str, str], addresses: tuple[str, ...]) -> None:
    assert parse_config(["-n", "a", *argv], env).webhook_bind_addresses == addresses


@pytest.mark.parametrize(("argv", "env", "addresses"), [
    ([], {}, ("127.0.0.1",)),  # run by hand: loopback only (it was every interface)
    ([], {"POD_IP": "10.1.2.3"}, ("10.1.2.3", "127.0.0.1")),  # the kubelet's probes; kubectl port-forward
    ([], {"POD_IP": "127.0.0.1"}, ("127.0.0.1",)),
    (["--health-bind-address", "0.0.0.0"], {"POD_IP": "10.1.2.3"}, ("0.0.0.0",)),  # noqa: S104 - explicit opt-in
])
def test_health_bind_addresses(argv: list[str], env: dict[str, str], addresses: tuple[str, ...]) -> None:
    assert parse_config(["-n", "a", *argv], env).health_bind_addresses == addresses


def test_health_bind_address_must_be_an_ip() -> None:
    with pytest.raises(ConfigError, match=r"--health-bind-address 'localhost' is not an IP address"):
        parse_config(["-n", "a", "--health-bind-address", "localhost"], {})


@pytest.mark.parametrize(("argv", "env", "named"), [
    (["--webhook-bind-address", "localhost"], {}, "--webhook-bind-address 'localhost'"),
    ([], {"POD_IP": "pod-1"}, "$POD_IP 'pod-1'"),
])
def test_webhook_bind_address_must_be_an_ip(argv: list[str], env: dict[str, str], named: str) -> None:
    with pytest.raises(ConfigError, match=r"is not an IP address") as caught:
        parse_config(["-n", "a", *argv], env)
    assert named in str(caught.value)


@pytest.mark.parametrize(("argv", "env"), [
    (["-n", "default", "-n", "pet-system"], {}),  # the default claims namespace
    (["-n", "shop", "--claims-namespace", "shop"], {}),
    ([], {"KOPF_NAMESPACE": "shop", "POD_NAMESPACE": "shop"}),
])
def test_a_claims_namespace_that_is_also_served_is_refused(argv: list[str], env: dict[str, str]) -> None:
    with pytest.raises(ConfigError, match=r"claims namespace '[a-z-]+' is also a served namespace"):
        parse_config(argv, env)


def test_all_namespaces_keeps_its_claims_in_the_operators_namespace() -> None:
    assert parse_config(["-A"], NO_ENV).claims_namespace == "pet-system"


def test_main_refuses_a_served_claims_namespace_with_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["-n", "shop", "--claims-namespace", "shop"]) == 2
    assert "claims namespace 'shop' is also a served namespace" in capsys.readouterr().err


def test_kopfs_per_object_success_lines_only_at_debug() -> None:
    import logging

    from pet_operator.cli import configure_logging

    kopf_objects = logging.getLogger("kopf.objects")
    try:
        configure_logging("INFO")
        assert not kopf_objects.isEnabledFor(logging.INFO)
        assert kopf_objects.isEnabledFor(logging.WARNING)
        configure_logging("DEBUG")
        assert kopf_objects.isEnabledFor(logging.DEBUG)
    finally:
        kopf_objects.setLevel(logging.NOTSET)


def test_role_binding_flag() -> None:
    assert parse_config(["-n", "a"], NO_ENV).role_binding == "pet-operator"
    assert parse_config(["-n", "a", "--role-binding", "mine.v2"], NO_ENV).role_binding == "mine.v2"
    assert parse_config(["-n", "a", "--role-binding", ""], NO_ENV).role_binding == ""  # turned off
    with pytest.raises(ConfigError, match="--role-binding 'Bad_Name' is not a valid object name"):
        parse_config(["-n", "a", "--role-binding", "Bad_Name"], NO_ENV)
