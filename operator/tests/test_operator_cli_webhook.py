"""cli: the webhook, shutdown, claims-namespace and event-level options; every error names value and rule."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from pet_operator import app, cli
from pet_operator.cli import Config, ConfigError, parse_config

NO_ENV: dict[str, str] = {}
BASE = ["-n", "default"]


def config_of(*argv: str, env: dict[str, str] | None = None) -> Config:
    return parse_config([*BASE, *argv], NO_ENV if env is None else env)


def error_of(*argv: str, env: dict[str, str] | None = None) -> str:
    with pytest.raises(ConfigError) as info:
        config_of(*argv, env=env)
    return str(info.value)


def test_defaults_of_the_new_options() -> None:
    config = config_of()
    assert config.webhook_port == 9443
    assert config.webhook_cert_dir is None
    assert config.webhook_configuration is None
    assert config.mutating_webhook_configuration is None
    assert config.webhook_host_names == ("pet-operator-webhook.pet-system.svc", "localhost", "127.0.0.1")
    assert config.shutdown_grace == 20.0
    assert config.claims_namespace == "pet-system"
    assert config.event_level == "Normal"


def test_all_new_options_given() -> None:
    config = config_of(
        "--webhook-port", "8443",
        "--webhook-cert-dir", "/etc/webhook/certs",
        "--webhook-configuration", "pet-operator",
        "--mutating-webhook-configuration", "pet-operator-mutating",
        "--webhook-host-name", "hook.example.com",
        "--webhook-host-name", "10.0.0.7",
        "--shutdown-grace", "2.5",
        "--claims-namespace", "pets-claims",
        "--event-level", "Warning",
    )
    assert (config.webhook_port, config.webhook_cert_dir, config.webhook_configuration) == (
        8443, "/etc/webhook/certs", "pet-operator",
    )
    assert config.mutating_webhook_configuration == "pet-operator-mutating"
    assert config.webhook_host_names == ("hook.example.com", "10.0.0.7")  # given names replace the defaults
    assert (config.shutdown_grace, config.claims_namespace, config.event_level) == (2.5, "pets-claims", "Warning")


# --- --webhook-port -------------------------------------------------------------------------------


def test_webhook_port_zero_turns_the_webhook_off() -> None:
    assert config_of("--webhook-port", "0").webhook_port == 0


async def test_webhook_port_zero_starts_no_server() -> None:
    kube = object()  # never touched: no certificate, no server, no CA published
    assert await app.start_webhook(config_of("--webhook-port", "0"), kube) is None  # type: ignore[arg-type]


@pytest.mark.parametrize("port", ["1", "65535"])
def test_webhook_port_bounds(port: str) -> None:
    assert config_of("--webhook-port", port).webhook_port == int(port)


@pytest.mark.parametrize("port", ["-1", "65536", "100000"])
def test_webhook_port_out_of_range(port: str) -> None:
    assert error_of("--webhook-port", port) == f"--webhook-port {port} is not a TCP port (1..65535, or 0 for off)"


@pytest.mark.parametrize(
    "argv",
    [["--webhook-port", "8080"], ["--webhook-port", "9000", "--health-port", "9000"], ["--health-port", "9443"]],
    ids=["default-health-port", "both-given", "default-webhook-port"],
)
def test_webhook_port_must_differ_from_the_health_port(argv: list[str]) -> None:
    port = argv[argv.index("--health-port") + 1] if "--health-port" in argv else "8080"
    assert error_of(*argv) == f"--webhook-port and --health-port are both {port}: they need two ports"


def test_webhook_off_never_clashes_with_the_health_port() -> None:
    config = config_of("--webhook-port", "0", "--health-port", "8081")
    assert (config.webhook_port, config.health_port) == (0, 8081)


def test_webhook_port_not_a_number_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        config_of("--webhook-port", "https")
    assert info.value.code == 2
    assert "--webhook-port: invalid int value: 'https'" in capsys.readouterr().err


# --- certificates and host names ------------------------------------------------------------------


def test_webhook_cert_dir_and_configuration_pass_through() -> None:
    config = config_of("--webhook-cert-dir", "/certs", "--webhook-configuration", "pet-operator")
    assert (config.webhook_cert_dir, config.webhook_configuration) == ("/certs", "pet-operator")


def test_default_host_names_follow_the_claims_namespace_flag() -> None:
    assert config_of("--claims-namespace", "ops").webhook_host_names == (
        "pet-operator-webhook.ops.svc", "localhost", "127.0.0.1",
    )


def test_default_host_names_follow_pod_namespace() -> None:
    config = config_of(env={"POD_NAMESPACE": "pet-operator-ns"})
    assert config.webhook_host_names[0] == "pet-operator-webhook.pet-operator-ns.svc"


def test_one_host_name_replaces_all_defaults() -> None:
    assert config_of("--webhook-host-name", "hook.pets.svc").webhook_host_names == ("hook.pets.svc",)


# --- --shutdown-grace -----------------------------------------------------------------------------


@pytest.mark.parametrize(("value", "seconds"), [("0", 0.0), ("0.5", 0.5), ("60", 60.0)])
def test_shutdown_grace_values(value: str, seconds: float) -> None:
    assert config_of("--shutdown-grace", value).shutdown_grace == seconds


@pytest.mark.parametrize(("value", "shown"), [("-1", "-1.0"), ("-0.5", "-0.5"), ("nan", "nan"), ("inf", "inf")])
def test_shutdown_grace_must_be_finite_and_not_negative(value: str, shown: str) -> None:
    assert error_of("--shutdown-grace", value) == (
        f"--shutdown-grace {shown} must be 0 or a positive number of seconds"
    )


def test_shutdown_grace_default_is_finite() -> None:
    assert math.isfinite(config_of().shutdown_grace)


# --- --claims-namespace ---------------------------------------------------------------------------


def test_claims_namespace_falls_back_to_pod_namespace_then_pet_system() -> None:
    assert config_of(env={"POD_NAMESPACE": "operator-ns"}).claims_namespace == "operator-ns"
    assert config_of(env={"POD_NAMESPACE": ""}).claims_namespace == "pet-system"
    assert config_of().claims_namespace == "pet-system"


def test_claims_namespace_flag_wins_over_pod_namespace() -> None:
    assert config_of("--claims-namespace", "flag-ns", env={"POD_NAMESPACE": "env-ns"}).claims_namespace == "flag-ns"


def test_claims_namespace_is_not_taken_from_the_served_namespaces() -> None:
    config = parse_config(["-n", "a", "-n", "b"], {"KOPF_NAMESPACE": "c"})
    assert config.claims_namespace == "pet-system"


def test_pod_namespace_is_read_from_os_environ_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("POD_NAMESPACE", "from-os-env")
    assert parse_config(BASE).claims_namespace == "from-os-env"


@pytest.mark.parametrize("bad", ["Pet-System", "pet_system", "-lead", "trail-", "a" * 64, "dots.no"])
def test_invalid_claims_namespace_names_value_and_rule(bad: str) -> None:
    message = error_of(f"--claims-namespace={bad}")
    assert message.startswith(f"claims namespace {bad!r} is not a valid namespace name")
    assert "lower-case letters, digits and '-'" in message
    assert "1 to 63 characters" in message


def test_invalid_pod_namespace_is_rejected_too() -> None:
    message = error_of(env={"POD_NAMESPACE": "Bad_NS"})
    assert message.startswith("claims namespace 'Bad_NS' is not a valid namespace name")


# --- --event-level --------------------------------------------------------------------------------


@pytest.mark.parametrize("level", ["Normal", "Warning", "None"])
def test_event_levels(level: str) -> None:
    assert config_of("--event-level", level).event_level == level


@pytest.mark.parametrize("bad", ["normal", "Info", ""])
def test_unknown_event_level_exits_2_listing_the_choices(bad: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        config_of("--event-level", bad)
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert f"--event-level: invalid choice: {bad!r}" in err
    assert "'Normal', 'Warning', 'None'" in err


# --- main -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["--webhook-port", "70000"], "--webhook-port 70000 is not a TCP port (1..65535, or 0 for off)"),
        (["--webhook-port", "8080"], "--webhook-port and --health-port are both 8080: they need two ports"),
        (["--shutdown-grace", "-3"], "--shutdown-grace -3.0 must be 0 or a positive number of seconds"),
        (["--claims-namespace", "X"], "claims namespace 'X' is not a valid namespace name"),
    ],
)
def test_main_reports_bad_webhook_options_and_exits_2(
    argv: list[str], expected: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("POD_NAMESPACE", raising=False)

    def must_not_run(config: Config) -> int:
        raise AssertionError("the operator must not start on a bad configuration")

    monkeypatch.setattr(app, "run", must_not_run)
    assert cli.main([*BASE, *argv]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err.startswith(f"pet-operator: error: {expected}")


def test_help_documents_the_webhook_options(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLUMNS", "1000")  # argparse breaks long help lines at hyphens too
    with pytest.raises(SystemExit) as info:
        cli.build_parser().parse_args(["--help"])
    assert info.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    for option in ("--webhook-port", "--webhook-cert-dir", "--webhook-configuration",
                   "--mutating-webhook-configuration", "--webhook-host-name",
                   "--shutdown-grace", "--claims-namespace", "--event-level"):
        assert option in text
    assert "0 turns it off" in text
    assert "pet-operator-webhook.<claims namespace>.svc" in text
    assert "$POD_NAMESPACE" in text


# --- host names and the certificate folder, checked before anything starts ---------------------------


@pytest.mark.parametrize("name", ["", " ", "hook..svc", "-hook.svc", "hook_1.svc", "hök.example.com", "a" * 64 + ".svc",
                                  "hook.svc.", "http://hook"])
def test_bad_host_names_are_refused_naming_the_name_and_the_rule(name: str) -> None:
    message = error_of(f"--webhook-host-name={name}")
    assert f"--webhook-host-name {name!r}" in message
    assert "DNS name" in message and "IP address" in message


@pytest.mark.parametrize("name", ["hook", "pet-operator-webhook.pets.svc", "Hook.Example.COM", "10.0.0.7", "::1",
                                  "a" * 63 + ".svc"])
def test_good_host_names_pass(name: str) -> None:
    assert config_of("--webhook-host-name", name).webhook_host_names == (name,)


def test_host_names_are_not_checked_with_the_webhook_off() -> None:
    assert config_of("--webhook-port", "0", "--webhook-host-name", "").webhook_port == 0


def test_a_missing_certificate_folder_is_a_config_error(tmp_path: Path) -> None:
    config = config_of("--webhook-cert-dir", str(tmp_path / "nope"))
    with pytest.raises(ConfigError, match=r"--webhook-cert-dir .*nope.*: no such directory"):
        cli.check_files(config)


def test_a_certificate_folder_without_the_pair_is_a_config_error(tmp_path: Path) -> None:
    (tmp_path / "tls.crt").write_text("x")
    with pytest.raises(ConfigError, match=r"has no tls\.key .*tls\.crt and tls\.key"):
        cli.check_files(config_of("--webhook-cert-dir", str(tmp_path)))
    (tmp_path / "tls.key").write_text("x")
    cli.check_files(config_of("--webhook-cert-dir", str(tmp_path)))  # contents are the webhook's to judge


def test_files_are_not_checked_with_the_webhook_off(tmp_path: Path) -> None:
    cli.check_files(config_of("--webhook-port", "0", "--webhook-cert-dir", str(tmp_path / "nope")))
    cli.check_files(config_of())  # self-signed: no folder


def test_main_exits_2_on_a_missing_certificate_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main([*BASE, "--webhook-cert-dir", str(tmp_path / "nope")]) == 2
    assert "no such directory" in capsys.readouterr().err
