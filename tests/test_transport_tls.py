"""Transport encryption as configuration: each client's TLS settings reach the client object the project builds,
proven by real TLS connections to local servers whose certificates come from a CA generated in the test.

What connects for real, and to what:
- Kafka: the project's AdminClient (`partition_ids`), producer (`KafkaRecordSink`) and consumer
  (`TelemetrySource`) - real librdkafka clients - to a local TLS listener (`tests.tlskit.KafkaTlsListener`)
  that answers the first Kafka requests and records the SASL/SCRAM exchange. The embedded broker of the other
  tests (tansu) cannot do TLS here, so no message is produced or consumed over TLS.
- ClickHouse: clickhouse-connect, created by `connectors.clickhouse_client.connect`, to an https imitation of
  ClickHouse's HTTP interface (it answers the connect-time queries only; there is no TLS-capable server here).
- S3: moto's S3 server over https; lake files written by `LakeSink` and read back by `read_lake`.
- Webhook/Slack: the notifier's HTTP sender to `tests.notifykit.Receiver` serving https.
- SMTP STARTTLS is tested in tests/test_notify.py (`test_email_over_starttls_with_auth`, aiosmtpd + trustme).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import KafkaException, Producer

from connectors.clickhouse_client import ClickHouseCertificateError, connect
from connectors.kafka import KafkaRecordSink, TelemetrySource
from connectors.lake import LakeSink
from connectors.lake_read import read_lake
from connectors.lake_store import open_lake, s3_settings
from connectors.topics import partition_ids
from notify.channels import ChannelConfigError, DeliveryError, build_senders
from notify.messages import Notification
from notify.routing import load_routing
from plantpulse.settings import Settings
from tests.notifykit import Incident, Receiver
from tests.test_lake import keyset, lake_settings, readings
from tests.tlskit import (
    CLICKHOUSE_VERSION,
    KEY_PASSWORD,
    ClickHouseImitation,
    KafkaTlsListener,
    Pki,
    TlsLog,
    moto_s3_https,
    serve_tls,
)


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    return Pki(tmp_path / "pki")


def _until(condition: Callable[[], bool], timeout_s: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return condition()


# --- Kafka ---


@pytest.fixture
def kafka_tls(pki: Pki) -> Iterator[KafkaTlsListener]:
    listener = KafkaTlsListener(pki.server_context())
    yield listener
    listener.close()


def _sasl_ssl(listener: KafkaTlsListener, pki: Pki, tmp_path: Path, **overrides: Any) -> Settings:
    return Settings(**{
        "data_dir": tmp_path, "kafka_bootstrap_servers": listener.bootstrap, "kafka_security_protocol": "SASL_SSL",
        "kafka_sasl_mechanism": "SCRAM-SHA-512", "kafka_sasl_username": "flow-writer",
        "kafka_sasl_password": "not-sent-in-scram", "kafka_ssl_ca_location": str(pki.ca_file), **overrides})


def test_kafka_clients_authenticate_with_scram_over_verified_tls(kafka_tls: KafkaTlsListener, pki: Pki,
                                                                 tmp_path: Path) -> None:
    """The admin client, the record sink's producer and the telemetry source's consumer, each built by the
    project from KAFKA_* settings, complete a TLS handshake trusting only KAFKA_SSL_CA_LOCATION, and then ask
    for SCRAM-SHA-512 with the configured user: the SCRAM client-first message `n,,n=flow-writer,r=<nonce>`
    arrives inside TLS. The password itself never crosses the wire in SCRAM (only proofs derived from it)."""
    settings = _sasl_ssl(kafka_tls, pki, tmp_path)
    with pytest.raises(ConnectionError, match="cannot fetch Kafka metadata"):
        partition_ids(settings, "telemetry", timeout_s=1.5)  # the listener refuses authentication
    configs: list[dict] = []

    def recording_producer(config: dict) -> Producer:
        configs.append(config)
        return Producer(config)

    sink_part = KafkaRecordSink(settings, "alerts", producer_factory=recording_producer).build("tls-out", 0, 1)
    source_part = TelemetrySource(settings, "telemetry").build_part("tls-in", "telemetry-0", None)
    try:
        clients = {"rdkafka": "admin", "plantpulse-tls-out-0": "producer", "plantpulse-tls-in-telemetry-0": "consumer"}
        assert _until(lambda: all(len(kafka_tls.sasl(prefix)) >= 2 for prefix in clients)), kafka_tls.requests
    finally:
        sink_part.close()
        source_part.close()
    for prefix in clients:
        (step, mechanism), (step2, first), *_ = kafka_tls.sasl(prefix)
        assert (step, mechanism[2:]) == ("handshake", b"SCRAM-SHA-512"), prefix
        assert step2 == "authenticate" and first[4:].startswith(b"n,,n=flow-writer,r="), (prefix, first)
        assert b"not-sent-in-scram" not in first
    # A connection librdkafka drops mid-handshake while the clients are torn down ends in an EOF on our side;
    # any other failure (a refused certificate) would be a real one.
    assert kafka_tls.tls.handshakes and all(_aborted(failure) for failure in kafka_tls.tls.failures), \
        kafka_tls.tls.failures
    (config,) = configs
    assert {k: config[k] for k in ("security.protocol", "sasl.mechanism", "sasl.username", "ssl.ca.location")} == {
        "security.protocol": "SASL_SSL", "sasl.mechanism": "SCRAM-SHA-512", "sasl.username": "flow-writer",
        "ssl.ca.location": str(pki.ca_file)}


@pytest.mark.parametrize("ca", ["unset", "other"])
def test_kafka_refuses_a_broker_its_ca_did_not_sign(kafka_tls: KafkaTlsListener, pki: Pki, tmp_path: Path,
                                                    ca: str) -> None:
    """Without KAFKA_SSL_CA_LOCATION (system CAs) or with another CA, the client aborts the handshake: the
    listener sees the client's 'unknown ca' alert and not one Kafka request - the credentials stay home."""
    location = None if ca == "unset" else str(pki.other_ca_file)
    settings = _sasl_ssl(kafka_tls, pki, tmp_path, kafka_ssl_ca_location=location)
    with pytest.raises(ConnectionError):
        partition_ids(settings, "telemetry", timeout_s=1.5)
    assert kafka_tls.tls.failures and not kafka_tls.tls.successes
    # The client's 'unknown ca' alert; a connection it dropped before even that (torn down at the timeout)
    # ends in an EOF. Either way no Kafka request arrived (below).
    failures = kafka_tls.tls.failures
    assert any("UNKNOWN_CA" in f.upper() for f in failures), failures
    assert all("UNKNOWN_CA" in f.upper() or _aborted(f) for f in failures), failures
    assert kafka_tls.requests == []


def test_kafka_mutual_tls_presents_the_configured_client_certificate(pki: Pki, tmp_path: Path) -> None:
    """`KAFKA_SECURITY_PROTOCOL=SSL` with KAFKA_SSL_CERTIFICATE_LOCATION, KAFKA_SSL_KEY_LOCATION (an encrypted
    key) and KAFKA_SSL_KEY_PASSWORD: a listener that requires a client certificate accepts the project's client
    and reads the certificate's subject. Without the certificate the handshake is refused; without the key's
    password the client cannot even be created, and says which setting failed."""
    listener = KafkaTlsListener(pki.server_context(require_client_cert=True))
    try:
        base = {"data_dir": tmp_path, "kafka_bootstrap_servers": listener.bootstrap,
                "kafka_security_protocol": "SSL", "kafka_ssl_ca_location": str(pki.ca_file)}
        with pytest.raises(ConnectionError):
            partition_ids(Settings(**base), "telemetry", timeout_s=1.0)
        assert listener.tls.failures and not listener.tls.successes and listener.requests == []
        assert any("CERTIFICATE" in failure.upper() for failure in listener.tls.failures), listener.tls.failures
        mutual = {**base, "kafka_ssl_certificate_location": str(pki.client_cert),
                  "kafka_ssl_key_location": str(pki.encrypted_client_key)}
        with pytest.raises(KafkaException, match="ssl.key"):
            partition_ids(Settings(**mutual), "telemetry", timeout_s=1.0)
        with pytest.raises(ConnectionError):
            partition_ids(Settings(**mutual, kafka_ssl_key_password=KEY_PASSWORD), "telemetry", timeout_s=1.0)
        assert {h.detail for h in listener.tls.successes} == {"plantpulse-flow"}
        assert listener.requests and all(r.client_id == "rdkafka" for r in listener.requests)
    finally:
        listener.close()


# --- ClickHouse ---


@pytest.fixture
def clickhouse_https(pki: Pki) -> Iterator[ClickHouseImitation]:
    server = ClickHouseImitation(pki.server_context("localhost"))  # the certificate names localhost only
    yield server
    server.close()


def _clickhouse(server: ClickHouseImitation, tmp_path: Path, host: str = "localhost", **overrides: Any) -> Settings:
    return Settings(data_dir=tmp_path, clickhouse_url=f"https://{host}:{server.port}", clickhouse_user="grafana",
                    clickhouse_password="pw", **overrides)


def test_clickhouse_https_verifies_the_server_against_clickhouse_ca_file(
        clickhouse_https: ClickHouseImitation, pki: Pki, tmp_path: Path) -> None:
    """With CLICKHOUSE_CA_FILE the client created by `connect` completes TLS, sends its connect-time queries and
    credentials inside it, and reports the server's version."""
    client = connect(_clickhouse(clickhouse_https, tmp_path, clickhouse_ca_file=pki.ca_file))
    try:
        assert client.server_version == CLICKHOUSE_VERSION
    finally:
        client.close()
    assert clickhouse_https.queries[0] == "SELECT version(), timezone()"
    assert set(clickhouse_https.authorizations) == {"Basic Z3JhZmFuYTpwdw=="}  # base64 of grafana:pw
    assert clickhouse_https.tls.successes and not clickhouse_https.tls.failures


@pytest.mark.parametrize("case", ["no CA file", "another CA", "host not in the certificate"])
def test_clickhouse_refuses_an_unverifiable_server(clickhouse_https: ClickHouseImitation, pki: Pki, tmp_path: Path,
                                                   case: str) -> None:
    """System CAs, the wrong CA, or a host name the certificate does not name: `connect` raises
    `ClickHouseCertificateError` naming CLICKHOUSE_CA_FILE and the reason, and no query (nor password) reached the
    server. It is a ValueError, so the sink stops instead of retrying a configuration error forever."""
    overrides: dict[str, Any] = {
        "no CA file": {},
        "another CA": {"clickhouse_ca_file": pki.other_ca_file},
        "host not in the certificate": {"clickhouse_ca_file": pki.ca_file, "host": "127.0.0.1"},
    }[case]
    with pytest.raises(ClickHouseCertificateError, match="CLICKHOUSE_CA_FILE=") as error:
        connect(_clickhouse(clickhouse_https, tmp_path, **overrides))
    reason = "IP address mismatch" if case == "host not in the certificate" else "unable to get local issuer"
    assert reason in str(error.value) and "pw" not in str(error.value).split("CLICKHOUSE_CA_FILE")[0]
    assert isinstance(error.value, ValueError)
    assert clickhouse_https.queries == [] and clickhouse_https.tls.failures


def test_clickhouse_verify_false_skips_verification_and_ca_needs_https(
        clickhouse_https: ClickHouseImitation, pki: Pki, tmp_path: Path) -> None:
    """CLICKHOUSE_VERIFY=false connects (still encrypted) to a server no CA vouches for; a CA file with an
    http:// URL or a CA file that does not exist is refused before any connection."""
    with pytest.warns(Warning, match="Unverified HTTPS request"):  # urllib3 says so on every request
        client = connect(_clickhouse(clickhouse_https, tmp_path, host="127.0.0.1", clickhouse_verify=False))
    client.close()
    assert clickhouse_https.tls.successes and clickhouse_https.queries
    plain = Settings(data_dir=tmp_path, clickhouse_url="http://localhost:8123", clickhouse_ca_file=pki.ca_file)
    with pytest.raises(ValueError, match="is not https://: the connection would not be encrypted"):
        connect(plain)
    with pytest.raises(ValueError, match="is not a readable file"):
        connect(_clickhouse(clickhouse_https, tmp_path, clickhouse_ca_file=tmp_path / "missing.pem"))


# --- S3 ---


@pytest.fixture
def s3_https(pki: Pki, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[str, TlsLog]]:
    """(endpoint, handshake log) of moto's S3 over https; credentials and region from the environment."""
    for name, value in (("AWS_ACCESS_KEY_ID", "testing"), ("AWS_SECRET_ACCESS_KEY", "testing"),
                        ("AWS_DEFAULT_REGION", "us-east-1")):
        monkeypatch.setenv(name, value)
    with moto_s3_https(pki.server_context()) as running:
        yield running


def test_lake_over_https_with_s3_ca_bundle(s3_https: tuple[str, TlsLog], pki: Pki, tmp_path: Path) -> None:
    """S3_ENDPOINT_URL=https://..., S3_CA_BUNDLE: the filesystem `open_lake(**s3_settings(settings))` builds
    verifies moto's certificate; `LakeSink` writes readings and `read_lake` reads exactly them back."""
    endpoint, log = s3_https
    settings = lake_settings(tmp_path, lake_url="s3://secure/raw", s3_endpoint_url=endpoint,
                             s3_ca_bundle=pki.ca_file)
    fs, _ = open_lake(settings.lake_url, **s3_settings(settings))
    fs.call_s3("create_bucket", Bucket="secure")
    part = LakeSink(settings, fs).build_part("lake", "lake-0", None)
    written = readings(40)
    part.write_batch([written])
    part.snapshot()
    fs.invalidate_cache()
    assert keyset(read_lake(settings.lake_url, fs)) == keyset(written)
    assert log.successes and not log.failures


def test_lake_refuses_an_s3_endpoint_its_ca_did_not_sign(s3_https: tuple[str, TlsLog], pki: Pki,
                                                         tmp_path: Path) -> None:
    """Without S3_CA_BUNDLE (system CAs) the first request fails with botocore's SSLError saying the certificate
    could not be verified; S3_CA_BUNDLE with an http:// endpoint or a missing file is refused up front."""
    endpoint, log = s3_https
    settings = lake_settings(tmp_path, lake_url="s3://secure/raw", s3_endpoint_url=endpoint)
    # One attempt: botocore's retries would only repeat the same refusal (10 s more).
    fs, _ = open_lake(settings.lake_url, **s3_settings(settings),
                      s3_options={"config_kwargs": {"retries": {"max_attempts": 1}}})
    with pytest.raises(OSError, match="certificate verify failed: unable to get local issuer certificate"):
        fs.ls("secure")
    assert log.failures and not log.successes  # the client hung up in the handshake: no request was sent
    plain = lake_settings(tmp_path, lake_url="s3://secure/raw", s3_endpoint_url="http://127.0.0.1:9",
                          s3_ca_bundle=pki.ca_file)
    with pytest.raises(ValueError, match="S3_CA_BUNDLE=.* is set but S3_ENDPOINT_URL=.* is not https://"):
        open_lake(plain.lake_url, **s3_settings(plain))
    missing = lake_settings(tmp_path, lake_url="s3://secure/raw", s3_endpoint_url=endpoint,
                            s3_ca_bundle=tmp_path / "missing.pem")
    with pytest.raises(ValueError, match="S3_CA_BUNDLE=.*missing.pem is not a readable file"):
        open_lake(missing.lake_url, **s3_settings(missing))


# --- Webhook / Slack ---


@pytest.fixture
def https_receiver(pki: Pki) -> Iterator[tuple[Receiver, str]]:
    """`tests.notifykit.Receiver` answering over https (certificate for 127.0.0.1 from the test's CA)."""
    receiver = Receiver()
    serve_tls(receiver._server, pki.server_context())
    yield receiver, receiver.url("/hook").replace("http://", "https://", 1)
    receiver.close()


def test_webhook_over_https_trusts_notify_http_ca_file(https_receiver: tuple[Receiver, str], pki: Pki,
                                                       tmp_path: Path) -> None:
    """A webhook and a Slack channel, built by `build_senders` from the routing file, the URL variables and
    NOTIFY_HTTP_CA_FILE, deliver over https; without the CA (system CAs) or with another CA the delivery fails
    at once as *permanent* - retrying cannot make the certificate trusted, and the dead letter keeps the
    notification with a text naming NOTIFY_HTTP_CA_FILE (the same decision as SMTP's untrusted certificate)."""
    receiver, url = https_receiver
    routes = tmp_path / "routes.toml"
    routes.write_text('[channel.hook]\ntype = "webhook"\nurl_env = "TLS_HOOK_URL"\n'
                      '[channel.chat]\ntype = "slack"\nurl_env = "TLS_CHAT_URL"\n'
                      '[[route]]\nchannels = ["hook", "chat"]\n')
    routing = load_routing(routes)
    env = {"TLS_HOOK_URL": url, "TLS_CHAT_URL": url}
    record = Incident("M-7", "overheat", severity="critical", site="site-a").step("opened")
    notification = Notification(record["event_id"], record)
    senders = build_senders(routing, Settings(data_dir=tmp_path, notify_http_ca_file=pki.ca_file), env)
    for name in ("hook", "chat"):
        senders[name].send(notification)
    assert receiver.keys("/hook") == [record["event_id"]] * 2
    for ca_file in (None, pki.other_ca_file):
        untrusting = build_senders(routing, Settings(data_dir=tmp_path, notify_http_ca_file=ca_file), env)
        with pytest.raises(DeliveryError, match="TLS certificate not accepted: unable to get local issuer") as error:
            untrusting["hook"].send(notification)
        assert error.value.permanent and "NOTIFY_HTTP_CA_FILE" in str(error.value) and url not in str(error.value)
    assert len(receiver.keys("/hook")) == 2
    with pytest.raises(ChannelConfigError, match="NOTIFY_HTTP_CA_FILE=.*missing.pem is not a readable file"):
        build_senders(routing, Settings(data_dir=tmp_path, notify_http_ca_file=tmp_path / "missing.pem"), env)


def test_flow_lake_writers_take_the_ca_bundle_from_settings(s3_https: tuple[str, TlsLog], pki: Pki,
                                                           tmp_path: Path) -> None:
    """After the wiring (tls_wiring.diff): the LakeSink the flow builds (`**s3_settings(settings)`, no fs given)
    and the notifier's quarantine (`UndeliverableQuarantine.from_settings`) reach moto over verified https."""
    from connectors.quarantine import UndeliverableQuarantine

    endpoint, log = s3_https
    settings = lake_settings(tmp_path, lake_url="s3://flow/raw", s3_endpoint_url=endpoint, s3_ca_bundle=pki.ca_file)
    fs, _ = open_lake(settings.lake_url, **s3_settings(settings))
    fs.call_s3("create_bucket", Bucket="flow")
    part = LakeSink(settings, **s3_settings(settings)).build_part("lake", "lake-0", None)
    written = readings(25)
    part.write_batch([written])
    part.snapshot()
    fs.invalidate_cache()
    assert keyset(read_lake(settings.lake_url, fs)) == keyset(written)
    quarantine = UndeliverableQuarantine.from_settings(settings)
    assert quarantine.fs.call_s3("head_bucket", Bucket="flow") is not None
    assert log.successes and not log.failures


def _aborted(failure: str) -> bool:
    """A handshake the client abandoned (closed the socket) rather than one that failed on a certificate."""
    return "UNEXPECTED_EOF" in failure.upper() or "EOF OCCURRED" in failure.upper()
