"""A real Kafka broker that speaks only SASL_SSL (SCRAM-SHA-512 over TLS) to its clients.

:class:`SecureKafkaBroker` reuses :class:`~tests.support.kafka_broker.KafkaBroker`'s jars,
JVM command and process handling, and changes what it configures:

* certificates: a throwaway CA and a broker certificate signed by it, made with the JDK's
  ``keytool`` (PKCS12 keystore and truststore); the CA is exported as PEM for librdkafka's
  ``ssl.ca.location``. The broker certificate names ``127.0.0.1`` and ``localhost`` (subject
  alternative names), so clients keep hostname verification on;
* listeners: ``SASL_SSL`` on 127.0.0.1 for clients, which inter-broker traffic uses too
  (SCRAM-SHA-512 as user ``broker``), and the KRaft ``CONTROLLER`` listener as in
  ``KafkaBroker``. No plaintext port answers clients. Where 127.0.0.2 can be bound (Linux),
  a second SASL_SSL listener, ``ALIAS``, is advertised there: its address is not in the
  certificate, so a client that verifies hostnames must refuse it;
* credentials: SCRAM-SHA-512 users ``profilestream`` (the client) and ``broker``, with random
  passwords, written into the metadata log when the storage is formatted (``--add-scram``).

The session fixture :func:`secure_kafka` starts one such broker on first use and stops it at
the end; as for the ``kafka`` fixture, a broker that cannot start fails the test under
``CI=true`` (with the broker log's tail) and skips it elsewhere.
"""

from __future__ import annotations

import secrets
import shutil
import socket
import subprocess
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from subprocess import PIPE, STDOUT
from typing import Any

import pytest
from confluent_kafka.admin import AdminClient, NewTopic

from tests.support.kafka_broker import (
    MAIN_CLASS,
    STORAGE_TOOL,
    KafkaBroker,
    _cluster_id,
    ensure_jars,
    single_node_settings,
)
from tests.support.server_process import unavailable

MECHANISM = "SCRAM-SHA-512"
CLIENT_USER = "profilestream"
BROKER_USER = "broker"
#: The names the broker certificate is valid for.
CERT_HOSTS = ("127.0.0.1", "localhost")
#: A loopback address that is not in the certificate (for the hostname verification check).
ALIAS_HOST = "127.0.0.2"
SCRAM_LOGIN = "org.apache.kafka.common.security.scram.ScramLoginModule"


@dataclass(frozen=True)
class Certificates:
    """The broker's TLS material; every store is PKCS12 and opens with ``password``."""

    password: str
    keystore: Path  # the broker's key and its certificate chain
    truststore: Path  # the CA, which the broker trusts as a client of itself
    ca_pem: Path  # the CA certificate as PEM, for librdkafka's ssl.ca.location


def keytool(*commands: list[str]) -> None:
    """Run the JDK's ``keytool`` once per command, all at once; a failure raises with its output.

    A short-lived JVM starts faster with the client compiler only and the serial collector.
    """
    exe = shutil.which("keytool")
    if exe is None:
        raise RuntimeError("the JDK's keytool is needed to make the test certificates")
    fast = ["-J-XX:TieredStopAtLevel=1", "-J-XX:+UseSerialGC"]
    running = [
        (args, subprocess.Popen([exe, *fast, *args], stdout=PIPE, stderr=STDOUT, text=True))
        for args in commands
    ]
    failures = []
    for args, process in running:
        output, _ = process.communicate(timeout=120)
        if process.returncode != 0:
            failures.append(f"keytool {' '.join(args[:3])} failed: {output.strip()}")
    if failures:
        raise RuntimeError("; ".join(failures))


def _new_key(alias: str, name: str, store: list[str], *extensions: str) -> list[str]:
    """A key pair (EC P-256: quicker to make than RSA) with a self-signed certificate."""
    return [
        "-genkeypair", "-alias", alias, "-keyalg", "EC", "-groupname", "secp256r1",
        "-dname", f"CN={name}", "-validity", "2", "-startdate", "-1d", *extensions, *store,
    ]  # fmt: skip


def _store(path: Path, password: str) -> list[str]:
    return ["-keystore", str(path), "-storetype", "PKCS12", "-storepass", password]


def make_ca(folder: Path, password: str, name: str = "profilestream test CA") -> Path:
    """A self-signed CA in ``folder/ca.p12``; returns its certificate as PEM (``ca.pem``)."""
    folder.mkdir(parents=True, exist_ok=True)
    store = _store(folder / "ca.p12", password)
    keytool(_new_key("ca", name, store, "-ext", "bc:c=ca:true", "-ext", "ku:c=keyCertSign,cRLSign"))
    pem = folder / "ca.pem"
    keytool(["-exportcert", "-rfc", "-alias", "ca", "-file", str(pem), *store])
    return pem


def make_certificates(folder: Path, hosts: tuple[str, ...] = CERT_HOSTS) -> Certificates:
    """A CA and a broker certificate it signs, valid for ``hosts`` (IP addresses or names)."""
    folder.mkdir(parents=True, exist_ok=True)
    password = secrets.token_hex(12)
    ca = _store(folder / "ca.p12", password)
    keystore, truststore = folder / "broker.p12", folder / "truststore.p12"
    store = _store(keystore, password)
    ca_pem, request, signed = folder / "ca.pem", folder / "broker.csr", folder / "broker.pem"
    san = "san=" + ",".join(
        f"ip:{h}" if h.replace(".", "").isdigit() or ":" in h else f"dns:{h}" for h in hosts
    )
    # Four rounds of independent keytool runs (each JVM takes about a second to start).
    keytool(
        _new_key("ca", "profilestream test CA", ca, "-ext", "bc:c=ca:true",
                 "-ext", "ku:c=keyCertSign,cRLSign"),
        _new_key("broker", hosts[0], store, "-ext", san),
    )  # fmt: skip
    keytool(
        ["-exportcert", "-rfc", "-alias", "ca", "-file", str(ca_pem), *ca],
        ["-certreq", "-alias", "broker", "-file", str(request), *store],
    )
    keytool(
        [
            "-gencert", "-alias", "ca", "-infile", str(request), "-outfile", str(signed), "-rfc",
            "-validity", "2", "-startdate", "-1d", "-ext", san,
            "-ext", "ku:c=digitalSignature,keyEncipherment", "-ext", "eku=serverAuth,clientAuth",
            *ca,
        ],
        ["-importcert", "-noprompt", "-alias", "ca", "-file", str(ca_pem),
         *_store(truststore, password)],
    )  # fmt: skip
    # The CA-signed certificate replaces the self-signed one, as a chain up to the CA.
    chain = folder / "broker-chain.pem"
    chain.write_text(signed.read_text() + ca_pem.read_text())
    keytool(["-importcert", "-noprompt", "-alias", "broker", "-file", str(chain), *store])
    return Certificates(password, keystore, truststore, ca_pem)


def can_bind(host: str) -> bool:
    try:
        with socket.socket() as sock:
            sock.bind((host, 0))
        return True
    except OSError:
        return False


def _free_port(host: str) -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def write_properties(path: Path, properties: Mapping[str, str]) -> Path:
    """A librdkafka ``key=value`` file, as ``--kafka-config-file`` reads it."""
    path.write_text("".join(f"{key}={value}\n" for key, value in properties.items()))
    return path


class SecureKafkaBroker(KafkaBroker):
    """One KRaft broker+controller whose only client listener is SASL_SSL (SCRAM-SHA-512)."""

    def __init__(self, workdir: Path) -> None:
        super().__init__(workdir)
        self.user = CLIENT_USER
        self.password = secrets.token_hex(16)
        self._broker_password = secrets.token_hex(16)
        self.alias_port = _free_port(ALIAS_HOST) if can_bind(ALIAS_HOST) else None
        self._certificates: Certificates | None = None

    @property
    def certificates(self) -> Certificates:
        if self._certificates is None:
            raise RuntimeError("the broker has not made its certificates yet")
        return self._certificates

    @property
    def alias_bootstrap(self) -> str | None:
        """The SASL_SSL listener at an address the certificate does not name, if any."""
        return None if self.alias_port is None else f"{ALIAS_HOST}:{self.alias_port}"

    def security_properties(self) -> dict[str, str]:
        """What a librdkafka client (the flow, ``serve``) needs besides ``bootstrap.servers``."""
        return {
            "security.protocol": "SASL_SSL",
            "sasl.mechanisms": MECHANISM,
            "sasl.username": self.user,
            "sasl.password": self.password,
            "ssl.ca.location": str(self.certificates.ca_pem),
        }

    def client_config(self, changes: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """A client's configuration; ``changes`` overrides keys, or drops those set to None."""
        config: dict[str, Any] = {
            "bootstrap.servers": self.bootstrap,
            **self.security_properties(),
            **(changes or {}),
        }
        return {key: value for key, value in config.items() if value is not None}

    def server_properties(self) -> list[str]:
        certs = self.certificates
        login = f"{MECHANISM.lower()}.sasl.jaas.config={SCRAM_LOGIN} required"
        # The client listener's login also names the broker's own user, for inter-broker traffic.
        jaas = [
            f'listener.name.sasl_ssl.{login} username="{BROKER_USER}" '
            f'password="{self._broker_password}";'
        ]
        clients = [f"SASL_SSL://127.0.0.1:{self.port}"]
        protocols = ["SASL_SSL:SASL_SSL", "CONTROLLER:PLAINTEXT"]
        if self.alias_port is not None:
            clients.append(f"ALIAS://{ALIAS_HOST}:{self.alias_port}")
            protocols.append("ALIAS:SASL_SSL")
            jaas.append(f"listener.name.alias.{login};")
        controller = f"CONTROLLER://127.0.0.1:{self.controller_port}"
        return [
            "process.roles=broker,controller",
            "node.id=1",
            f"controller.quorum.voters=1@127.0.0.1:{self.controller_port}",
            f"listeners={','.join([*clients, controller])}",
            f"advertised.listeners={','.join(clients)}",
            "controller.listener.names=CONTROLLER",
            f"listener.security.protocol.map={','.join(protocols)}",
            # Inter-broker traffic is authenticated and encrypted like a client's.
            "inter.broker.listener.name=SASL_SSL",
            f"sasl.mechanism.inter.broker.protocol={MECHANISM}",
            f"sasl.enabled.mechanisms={MECHANISM}",
            *jaas,
            "ssl.keystore.type=PKCS12",
            f"ssl.keystore.location={certs.keystore}",
            f"ssl.keystore.password={certs.password}",
            f"ssl.key.password={certs.password}",
            "ssl.truststore.type=PKCS12",
            f"ssl.truststore.location={certs.truststore}",
            f"ssl.truststore.password={certs.password}",
            "ssl.client.auth=none",
            *single_node_settings(self.workdir / "data"),
        ]

    def start(self, timeout_s: float = 90.0, *, fresh: bool = True) -> None:
        """Start the broker (always on fresh data: ``fresh`` is for the plain broker)."""
        libs = ensure_jars()
        self._certificates = make_certificates(self.workdir / "tls")
        config = self.workdir / "server.properties"
        config.write_text("\n".join(self.server_properties()) + "\n")
        cluster_id = _cluster_id()
        scram = [
            f"{MECHANISM}=[name={CLIENT_USER},password={self.password}]",
            f"{MECHANISM}=[name={BROKER_USER},password={self._broker_password}]",
        ]
        formatted = subprocess.run(
            self._java(
                libs, STORAGE_TOOL, "format", "-t", cluster_id, "-c", str(config),
                *(arg for user in scram for arg in ("--add-scram", user)),
            ),
            capture_output=True,
            text=True,
        )  # fmt: skip
        if formatted.returncode != 0:
            raise RuntimeError(f"kafka-storage format failed: {formatted.stderr[-3000:]}")
        with self.log_path.open("wb") as log:
            self._process = subprocess.Popen(
                self._java(libs, MAIN_CLASS, str(config)), stdout=log, stderr=subprocess.STDOUT
            )
        self._await(self.client_config({"log_level": "0"}), timeout_s, "SASL_SSL Kafka broker")

    def create_topic(
        self, name: str, partitions: int = 3, config: dict[str, str] | None = None
    ) -> None:
        admin = AdminClient(self.client_config({"log_level": "0"}))
        futures = admin.create_topics(
            [NewTopic(name, num_partitions=partitions, replication_factor=1, config=config or {})]
        )
        futures[name].result(timeout=30)


@pytest.fixture(scope="session")
def secure_kafka(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecureKafkaBroker]:
    broker = SecureKafkaBroker(Path(tmp_path_factory.mktemp("kafka-secure")))
    try:
        broker.start()
    except Exception as exc:
        broker.stop()
        unavailable("SASL_SSL Kafka broker", str(exc), "it needs a JDK and Maven")
    yield broker
    broker.stop()
