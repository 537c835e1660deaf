"""Kafka TLS and SASL for every client canarywatch creates: aiokafka keyword arguments and
Faust's `broker_credentials`, from one settings object. Secrets are `SecretStr`: their repr is
masked and only `client_options` reads them."""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import SecretStr

PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")


@dataclass(frozen=True, slots=True)
class KafkaAuth:
    """How canarywatch's Kafka clients connect. PLAINTEXT (the default) sets nothing."""

    security_protocol: str = "PLAINTEXT"
    ssl_cafile: Path | None = None  # the CA that signed the brokers' certificates
    ssl_certfile: Path | None = None  # client certificate (mutual TLS), with ssl_keyfile
    ssl_keyfile: Path | None = None
    ssl_key_password: SecretStr | None = None
    sasl_mechanism: str = "PLAIN"
    sasl_username: str = ""
    sasl_password: SecretStr | None = None

    @property
    def tls(self) -> bool:
        return self.security_protocol in ("SSL", "SASL_SSL")

    @property
    def sasl(self) -> bool:
        return self.security_protocol.startswith("SASL_")

    def ssl_context(self) -> ssl.SSLContext | None:
        """The TLS context (None without TLS): the CA file, else the system's CAs."""
        if not self.tls:
            return None
        context = ssl.create_default_context(
            cafile=str(self.ssl_cafile) if self.ssl_cafile else None
        )
        if self.ssl_certfile is not None:
            context.load_cert_chain(
                str(self.ssl_certfile),
                str(self.ssl_keyfile) if self.ssl_keyfile else None,
                self.ssl_key_password.get_secret_value() if self.ssl_key_password else None,
            )
        return context

    def client_options(self) -> dict[str, Any]:
        """Keyword arguments for AIOKafkaConsumer, AIOKafkaProducer and AIOKafkaAdminClient
        (empty for PLAINTEXT, so that nothing changes for a plain broker)."""
        if self.security_protocol == "PLAINTEXT":
            return {}
        out: dict[str, Any] = {"security_protocol": self.security_protocol}
        if self.tls:
            out["ssl_context"] = self.ssl_context()
        if self.sasl:
            out["sasl_mechanism"] = self.sasl_mechanism
            out["sasl_plain_username"] = self.sasl_username
            out["sasl_plain_password"] = (
                self.sasl_password.get_secret_value() if self.sasl_password else ""
            )
        return out

    def faust_credentials(self) -> Any:
        """Faust's `broker_credentials` (None for PLAINTEXT)."""
        if self.security_protocol == "PLAINTEXT":
            return None
        import faust

        context = self.ssl_context()
        if not self.sasl:
            return faust.SSLCredentials(context)
        from faust.types.auth import SASLMechanism

        return faust.SASLCredentials(  # SASL_SSL when it has a context, else SASL_PLAINTEXT
            username=self.sasl_username,
            password=self.sasl_password.get_secret_value() if self.sasl_password else "",
            ssl_context=context,
            mechanism=SASLMechanism(self.sasl_mechanism),
        )


PLAINTEXT = KafkaAuth()  # no TLS, no SASL: the default of every client that takes one
