"""Settings round-trip to a child process's environment; bad values are one clear line."""

from __future__ import annotations

import contextlib
import re
import ssl
from pathlib import Path

import certifi
import faust
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient

from agents import cli
from agents.settings import (
    Settings,
    SettingsError,
    Topics,
    setting_names,
    settings_from_env,
    settings_line,
    settings_to_env,
    unknown_variables,
)
from streams.fleet import FleetLimits
from streams.release import FleetControl, ReleaseSettings
from streams.rollouts import Action


def test_settings_survive_the_trip_through_the_environment() -> None:
    settings = Settings(
        bootstrap="127.0.0.1:1234",
        app_id="x",
        topics=Topics("t1"),
        partitions=6,
        metrics_port=9999,
        evaluate_every_s=0.5,
        max_message_bytes=1000,
        data_dir=Path("/tmp/x"),
        ingest_start_file=Path("/tmp/go"),
        request_session_timeout_ms=7000,
        request_heartbeat_interval_ms=1000,
        broker_session_timeout_s=9.0,
        broker_heartbeat_interval_s=2.0,
        deadletter_rate_per_s=5.0,
        deadletter_burst=7,
        deadletter_summary_every_s=0.5,
        deadletter_lines_per_message=3,
        disabled_codecs=("snappy", "lz4"),
        limits=FleetLimits(max_canaries=7, hold_s=1.5, hold_lines=9),
        max_env_series=11,
        view_batch=13,
    )
    back = settings_from_env(settings_to_env(settings))
    assert back == settings


def test_release_settings_survive_the_trip_and_refuse_unknown_policies() -> None:
    settings = Settings(
        release=ReleaseSettings(fleet_control=FleetControl.EBH, fdr=0.1),
        release_policy="notify",
        summary_every_s=0.5,
        release_evaluate_every_s=0.25,
    )
    back = settings_from_env(settings_to_env(settings))
    assert back == settings
    assert back.release.fleet_control is FleetControl.EBH
    assert settings_from_env({}).release_policy == "abort"
    assert settings_from_env({}).release.fleet_control is FleetControl.PER_ENV
    with pytest.raises(ValueError):
        settings_from_env({"CANARYWATCH_RELEASE_POLICY": "explode"})
    with pytest.raises(ValueError):
        settings_from_env({"CANARYWATCH_FLEET_CONTROL": "bonferroni"})


def test_checkpoint_reads_yes_and_no_words() -> None:
    assert settings_from_env({"CANARYWATCH_CHECKPOINT": "off"}).checkpoint is False
    assert settings_from_env({"CANARYWATCH_CHECKPOINT": "TRUE"}).checkpoint is True
    assert settings_from_env({}).checkpoint is True


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("PARTITIONS", "abc", "CANARYWATCH_PARTITIONS='abc': expected a whole number >= 0"),
        ("EVALUATE_EVERY_S", "-1", "CANARYWATCH_EVALUATE_EVERY_S='-1': expected a number >= 0"),
        ("HOLD_S", "nan", "CANARYWATCH_HOLD_S='nan': expected a number >= 0"),
        ("METRICS_PORT", "70000", "CANARYWATCH_METRICS_PORT='70000': expected a port, 0 to 65535"),
        (
            "REPLICATION_FACTOR",
            "x",
            "CANARYWATCH_REPLICATION_FACTOR='x': expected a whole number >= 0",
        ),
        (
            "TRANSACTION_TIMEOUT_MS",
            "-5",
            "CANARYWATCH_TRANSACTION_TIMEOUT_MS='-5': expected a whole number >= 0",
        ),
        ("COMMIT_EVERY_S", "inf", "CANARYWATCH_COMMIT_EVERY_S='inf': expected a number >= 0"),
        ("SEND_TIMEOUT_S", "1s", "CANARYWATCH_SEND_TIMEOUT_S='1s': expected a number >= 0"),
        (
            "CHECKPOINT",
            "maybe",
            "CANARYWATCH_CHECKPOINT='maybe': expected 1/true/yes/on or 0/false/no/off",
        ),
    ],
)
def test_a_bad_number_is_one_line_naming_variable_value_and_what_is_allowed(
    name: str, value: str, message: str
) -> None:
    with pytest.raises(SettingsError) as raised:
        settings_from_env({"CANARYWATCH_" + name: value})
    assert str(raised.value) == message


def test_the_cli_exits_2_on_a_bad_setting_and_warns_about_unknown_names(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CANARYWATCH_PARTITONS", "3")  # misspelled: warned about
    monkeypatch.setenv("CANARYWATCH_GATE_PORT", "http")
    assert "CANARYWATCH_PARTITONS" in unknown_variables()
    assert "CANARYWATCH_GATE_PORT" not in unknown_variables()
    assert cli.main(["gate"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert [line for line in err if "PARTITONS" in line or "GATE_PORT" in line] == [
        "canarywatch: warning: CANARYWATCH_PARTITONS is not a setting (misspelled?)",
        "canarywatch: CANARYWATCH_GATE_PORT='http': expected a port, 0 to 65535",
    ]


def test_the_action_policy_is_abort_pause_or_dry_run() -> None:
    assert settings_from_env({}).action_policy is Action.ABORT
    assert (
        settings_from_env({"CANARYWATCH_ACTION_POLICY": "dry-run"}).action_policy is Action.DRY_RUN
    )
    expected = "ACTION_POLICY='rollback': expected one of abort, pause, dry-run"
    with pytest.raises(SettingsError, match=re.escape(expected)):
        settings_from_env({"CANARYWATCH_ACTION_POLICY": "rollback"})
    assert settings_from_env({"CANARYWATCH_MAX_DEFERRALS": "0"}).max_deferrals == 0


def test_actuator_concurrency_and_max_slice_round_trip() -> None:
    env = {"CANARYWATCH_ACTUATOR_CONCURRENCY": "4", "CANARYWATCH_MAX_SLICE_S": "5"}
    settings = settings_from_env(env)
    assert (settings.actuator_concurrency, settings.decisions.max_slice_s) == (4, 5.0)
    assert settings_from_env(settings_to_env(settings)) == settings
    assert settings_from_env({}).actuator_concurrency == 16
    assert settings_from_env({}).decisions.max_slice_s == 2.0


def test_every_variable_is_listed_by_worker_help_with_what_it_allows(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit):
        cli.main(["worker", "--help"])
    out = capsys.readouterr().out
    for name in setting_names():
        assert f"  {name}  " in out, name
    assert "CANARYWATCH_PARTITIONS  a whole number >= 0; default 4" in out
    assert "CANARYWATCH_SECURITY_PROTOCOL  one of PLAINTEXT, SSL, SASL_PLAINTEXT, SASL_SSL" in out
    # Every variable settings_to_env writes is one the model reads, and the reverse.
    assert set(settings_to_env(Settings())) <= set(setting_names())


SASL_ENV = {
    "CANARYWATCH_SECURITY_PROTOCOL": "SASL_SSL",
    "CANARYWATCH_SASL_MECHANISM": "SCRAM-SHA-512",
    "CANARYWATCH_SASL_USERNAME": "canarywatch",
    "CANARYWATCH_SASL_PASSWORD": "hunter2-secret",
    "CANARYWATCH_SSL_CAFILE": certifi.where(),
}


def test_kafka_tls_and_sasl_settings_round_trip_and_reach_each_client_kind() -> None:
    settings = settings_from_env(SASL_ENV)
    k = settings.kafka
    assert (k.security_protocol, k.sasl_mechanism, k.sasl_username) == (
        "SASL_SSL",
        "SCRAM-SHA-512",
        "canarywatch",
    )
    assert settings_from_env(settings_to_env(settings)) == settings
    options = k.client_options()
    assert options["sasl_plain_password"] == "hunter2-secret"
    assert isinstance(options["ssl_context"], ssl.SSLContext)
    assert settings_from_env({}).kafka.client_options() == {}  # PLAINTEXT: nothing changes
    # Faust's app gets them as broker_credentials (agents/worker.py passes this).
    credentials = k.faust_credentials()
    assert isinstance(credentials, faust.SASLCredentials)
    assert credentials.protocol.value == "SASL_SSL"
    assert credentials.mechanism.value == "SCRAM-SHA-512"
    assert (credentials.username, credentials.password) == ("canarywatch", "hunter2-secret")
    tls_only = settings_from_env({"CANARYWATCH_SECURITY_PROTOCOL": "SSL"}).kafka
    assert isinstance(tls_only.faust_credentials(), faust.SSLCredentials)
    assert "sasl_mechanism" not in tls_only.client_options()


async def test_aiokafka_clients_built_with_the_options_carry_them() -> None:
    options = settings_from_env(SASL_ENV).kafka.client_options()
    consumer = AIOKafkaConsumer(bootstrap_servers="127.0.0.1:1", **options)
    producer = AIOKafkaProducer(bootstrap_servers="127.0.0.1:1", **options)
    admin = AIOKafkaAdminClient(bootstrap_servers="127.0.0.1:1", **options)
    try:
        for client in (consumer._client, producer.client, admin._client):
            assert client._security_protocol == "SASL_SSL"
            assert client._sasl_mechanism == "SCRAM-SHA-512"
            assert client._sasl_plain_username == "canarywatch"
            assert client._sasl_plain_password == "hunter2-secret"
            assert client._ssl_context is options["ssl_context"]
    finally:
        await consumer.stop()
        await producer.stop()
        await admin.close()


def test_secrets_never_appear_in_the_start_up_line_errors_or_reprs(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = settings_from_env({**SASL_ENV, "CANARYWATCH_SSL_KEY_PASSWORD": "key-secret"})
    line = settings_line(settings)
    assert "SASL_PASSWORD=***" in line and "SSL_KEY_PASSWORD=***" in line
    assert "SASL_USERNAME=canarywatch" in line and "BOOTSTRAP=127.0.0.1:9092" in line
    for text in (line, repr(settings), str(settings)):
        assert "hunter2" not in text and "key-secret" not in text
    # The CLI prints the line once for a long-running component, before it starts.
    for name, value in SASL_ENV.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("CANARYWATCH_GATE_PORT", "http")  # then stops: exit 2, nothing started
    assert cli.main(["gate"]) == 2
    err = capsys.readouterr().err
    assert "hunter2" not in err
    monkeypatch.setenv("CANARYWATCH_GATE_PORT", "0")
    monkeypatch.setenv("CANARYWATCH_BOOTSTRAP", "127.0.0.1:1")
    with contextlib.suppress(Exception):  # no kubeconfig here: the gate stops after the line
        cli.main(["gate", "--kubeconfig", "/nonexistent/kubeconfig"])
    err = capsys.readouterr().err
    assert "canarywatch gate: settings: " in err and "SASL_PASSWORD=***" in err
    assert "hunter2" not in err
