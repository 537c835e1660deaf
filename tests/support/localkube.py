"""A real etcd + kube-apiserver on loopback for integration tests.

Binaries come from ``scripts/kube/build.sh`` (kube-apiserver built from source into a cache
outside the clone, etcd from Debian); set ``CANARYWATCH_KUBE_APISERVER`` and ``CANARYWATCH_ETCD``
to use other binaries. Authentication is a static token file: one token per identity (see
``DEFAULT_IDENTITIES``); authorization is RBAC.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import secrets
import shutil
import signal
import ssl
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar, cast

import urllib3
import yaml
from kubernetes import client as k8s

from agents.processes import free_port, poll_until

REPO_ROOT = Path(__file__).resolve().parents[2]
BUILD_SCRIPT = REPO_ROOT / "scripts" / "kube" / "build.sh"
FIELD_MANAGER = "canarywatch-tests"

T = TypeVar("T")


@dataclass(frozen=True)
class Identity:
    """A user the API server authenticates from the static token file."""

    user: str
    groups: tuple[str, ...] = ()
    uid: str = ""


def service_account_identity(namespace: str, name: str) -> Identity:
    """The user a ServiceAccount token authenticates as, so RBAC bindings to it apply."""
    return Identity(
        user=f"system:serviceaccount:{namespace}:{name}",
        groups=("system:serviceaccounts", f"system:serviceaccounts:{namespace}"),
        uid=f"sa-{namespace}-{name}",
    )


DEFAULT_IDENTITIES: Mapping[str, Identity] = {
    "admin": Identity("canarywatch-admin", ("system:masters",), "admin"),
    "worker": service_account_identity("canarywatch", "canarywatch-worker"),
    "actuator": service_account_identity("canarywatch", "canarywatch-actuator"),
    "bridge": service_account_identity("canarywatch", "canarywatch-bridge"),
    "migrator": service_account_identity("canarywatch", "canarywatch-migrator"),
    "gate": service_account_identity("canarywatch", "canarywatch-gate"),
    # The identity an application namespace's AnalysisTemplate calls the gate with
    # (deploy/analysis/analysis-access.yaml, applied to the gate tests' namespace).
    "analysis": service_account_identity("cw-gate", "canarywatch-analysis"),
    "nobody": Identity("canarywatch-nobody", (), "nobody"),
}


class LocalKubeError(RuntimeError):
    pass


def default_rollout_crd() -> Path:
    """The Rollout CRD of the pinned Argo Rollouts module (copied by scripts/argo/build.sh)."""
    from tests.support.argo import rollout_crd_path  # argo.py builds on this module

    return rollout_crd_path()


_ensured: tuple[Path, Path] | None = None


def ensure_binaries() -> tuple[Path, Path]:
    """Return (kube-apiserver, etcd), building/installing them with build.sh if needed.

    ``CANARYWATCH_KUBE_APISERVER`` / ``CANARYWATCH_ETCD`` override the paths; with both set,
    build.sh is not run. The result is remembered for the rest of the process."""
    global _ensured
    apiserver = os.environ.get("CANARYWATCH_KUBE_APISERVER")
    etcd = os.environ.get("CANARYWATCH_ETCD")
    if apiserver and etcd:
        return Path(apiserver), Path(etcd)
    if _ensured is not None:
        return _ensured
    proc = subprocess.run(
        ["bash", str(BUILD_SCRIPT)], stdout=subprocess.PIPE, stderr=None, text=True, check=False
    )
    if proc.returncode != 0:
        raise LocalKubeError(f"{BUILD_SCRIPT} failed with exit code {proc.returncode}")
    found = dict(line.split("=", 1) for line in proc.stdout.splitlines() if "=" in line)
    _ensured = Path(apiserver or found["KUBE_APISERVER"]), Path(etcd or found["ETCD"])
    return _ensured


def wait_until(check: Callable[[], T | None], *, timeout: float, what: str) -> T:
    """`agents.processes.poll_until` for synchronous callers (fixtures, or a thread of a test)."""
    result = asyncio.run(poll_until(check, timeout, what))
    assert result is not None  # poll_until returns only a truthy result
    return result


def _openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True)


def _generate_serving_cert(cert: Path, key: Path) -> None:
    """Self-signed serving certificate for 127.0.0.1/localhost (it is its own CA)."""
    try:
        _generate_serving_cert_cryptography(cert, key)
    except ImportError:
        _openssl(
            "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
            "-nodes", "-keyout", str(key), "-out", str(cert), "-days", "2",
            "-subj", "/CN=canarywatch-localkube",
            "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost",
            "-addext", "basicConstraints=critical,CA:TRUE",
            "-addext", "keyUsage=critical,digitalSignature,keyCertSign",
            "-addext", "extendedKeyUsage=serverAuth",
        )  # fmt: skip


def _generate_serving_cert_cryptography(cert: Path, key: Path) -> None:
    import datetime
    import ipaddress

    from cryptography import x509  # type: ignore[import-not-found, unused-ignore]
    from cryptography.hazmat.primitives import hashes, serialization  # type: ignore[import-not-found, unused-ignore]
    from cryptography.hazmat.primitives.asymmetric import ec  # type: ignore[import-not-found, unused-ignore]
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID  # type: ignore[import-not-found, unused-ignore]

    private = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "canarywatch-localkube")])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(private.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.IPv4Address("127.0.0.1")), x509.DNSName("localhost")]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(private, hashes.SHA256())
    )
    cert.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key.write_bytes(
        private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )


def _generate_service_account_key(key: Path, pub: Path) -> None:
    _openssl("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", str(key))
    _openssl("pkey", "-in", str(key), "-pubout", "-out", str(pub))


@dataclass
class _Proc:
    name: str
    argv: list[str]
    log: Path
    stop_timeout: float = 20.0  # SIGTERM, then SIGKILL after this many seconds
    popen: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    def start(self) -> None:
        with self.log.open("ab") as out:
            self.popen = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # a Ctrl-C in pytest must not kill it half-way
            )

    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def check_alive(self) -> None:
        if not self.alive():
            code = None if self.popen is None else self.popen.returncode
            raise LocalKubeError(f"{self.name} exited ({code}); log tail:\n{self.tail()}")

    def tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "<no log>"

    def stop(self) -> None:
        p, self.popen = self.popen, None
        if p is None or p.poll() is not None:
            return
        p.send_signal(signal.SIGTERM)
        try:
            p.wait(self.stop_timeout)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


class LocalKubeAPI:
    """etcd + kube-apiserver on loopback, with static-token identities and RBAC.

    Use as a context manager, or call ``start()``/``stop()``. ``restart_apiserver()`` restarts
    only the API server (same etcd, same port, same certificates and tokens).
    """

    def __init__(
        self,
        *,
        identities: Mapping[str, Identity] | None = None,
        workdir: str | Path | None = None,
        startup_timeout: float = 180.0,
        extra_apiserver_args: Sequence[str] = (),
    ) -> None:
        self.identities: dict[str, Identity] = dict(identities or DEFAULT_IDENTITIES)
        if "admin" not in self.identities:
            self.identities["admin"] = DEFAULT_IDENTITIES["admin"]
        self.tokens: dict[str, str] = {name: secrets.token_hex(24) for name in self.identities}
        self.startup_timeout = startup_timeout
        self.extra_apiserver_args = list(extra_apiserver_args)
        self._own_workdir = workdir is None
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix="canarywatch-kube-"))
        self.port = 0
        self.etcd_port = 0
        self._etcd: _Proc | None = None
        self._apiserver: _Proc | None = None
        self.apiserver_bin: Path | None = None
        self.etcd_bin: Path | None = None
        self.start_seconds: float | None = None  # wall time of the last start()

    # -- lifecycle -------------------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    @property
    def ca_cert(self) -> Path:
        """The self-signed serving certificate, which is also the CA to trust."""
        return self.workdir / "serving.crt"

    def start(self) -> LocalKubeAPI:
        started = time.monotonic()
        try:
            self._start()
            self.start_seconds = time.monotonic() - started
        except BaseException:
            self.stop()
            raise
        return self

    def _start(self) -> None:
        self.apiserver_bin, self.etcd_bin = ensure_binaries()
        self.workdir.mkdir(parents=True, exist_ok=True)
        _generate_serving_cert(self.ca_cert, self.workdir / "serving.key")
        _generate_service_account_key(self.workdir / "sa.key", self.workdir / "sa.pub")
        self._write_token_file()
        self._start_etcd()
        self.port = free_port()
        self._start_apiserver()

    def stop(self) -> None:
        """Stop the API server, then etcd; remove the work dir if this object created it."""
        for proc in (self._apiserver, self._etcd):
            if proc is not None:
                proc.stop()
        self._apiserver = self._etcd = None
        if self._own_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def restart_apiserver(self) -> None:
        """Stop and start kube-apiserver only: same etcd, port, certificates and tokens."""
        if self._apiserver is None:
            raise LocalKubeError("the API server is not running")
        self._apiserver.stop()
        self._start_apiserver()

    def stop_apiserver(self) -> None:
        """Stop kube-apiserver only (start it again with ``start_apiserver``)."""
        if self._apiserver is not None:
            self._apiserver.stop()

    def start_apiserver(self) -> None:
        if self._apiserver is not None and self._apiserver.alive():
            return
        self._start_apiserver()

    def __enter__(self) -> LocalKubeAPI:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _write_token_file(self) -> None:
        lines = []
        for name, ident in self.identities.items():
            groups = ",".join(ident.groups)
            lines.append(f'{self.tokens[name]},{ident.user},{ident.uid or name},"{groups}"')
        path = self.workdir / "tokens.csv"
        path.write_text("\n".join(lines) + "\n")
        path.chmod(0o600)

    def _start_etcd(self) -> None:
        assert self.etcd_bin is not None
        self.etcd_port, peer_port = free_port(), free_port()
        client_url = f"http://127.0.0.1:{self.etcd_port}"
        peer_url = f"http://127.0.0.1:{peer_port}"
        self._etcd = _Proc(
            "etcd",
            [
                str(self.etcd_bin),
                "--name=localkube",
                f"--data-dir={self.workdir / 'etcd'}",
                f"--listen-client-urls={client_url}",
                f"--advertise-client-urls={client_url}",
                f"--listen-peer-urls={peer_url}",
                f"--initial-advertise-peer-urls={peer_url}",
                f"--initial-cluster=localkube={peer_url}",
                "--initial-cluster-state=new",
                "--log-level=warn",
            ],
            self.workdir / "etcd.log",
        )
        self._etcd.start()

        def healthy() -> bool | None:
            assert self._etcd is not None
            self._etcd.check_alive()
            try:
                with urllib.request.urlopen(f"{client_url}/health", timeout=1) as resp:
                    return True if json.load(resp).get("health") == "true" else None
            except (OSError, ValueError):
                return None

        wait_until(healthy, timeout=self.startup_timeout, what="etcd /health")

    def _apiserver_argv(self) -> list[str]:
        assert self.apiserver_bin is not None
        w = self.workdir
        return [
            str(self.apiserver_bin),
            f"--etcd-servers=http://127.0.0.1:{self.etcd_port}",
            "--bind-address=127.0.0.1",
            "--advertise-address=127.0.0.1",
            f"--secure-port={self.port}",
            f"--tls-cert-file={self.ca_cert}",
            f"--tls-private-key-file={w / 'serving.key'}",
            f"--cert-dir={w / 'apiserver-certs'}",
            f"--token-auth-file={w / 'tokens.csv'}",
            "--authorization-mode=RBAC",
            "--anonymous-auth=false",
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
            f"--service-account-key-file={w / 'sa.pub'}",
            f"--service-account-signing-key-file={w / 'sa.key'}",
            "--service-cluster-ip-range=10.0.0.0/24",
            # No controller-manager runs: nothing creates ServiceAccount tokens for pods.
            "--disable-admission-plugins=ServiceAccount",
            # 127.0.0.1 is not a valid Endpoints address; nothing here needs the service.
            "--endpoint-reconciler-type=none",
            # End open watches at shutdown: without it a watch on a CRD (or a custom resource)
            # keeps the old process alive until the watch times out, stalling restarts.
            "--shutdown-watch-termination-grace-period=2s",
            "--profiling=false",
            "--v=1",
            *self.extra_apiserver_args,
        ]

    def _start_apiserver(self) -> None:
        # The API server keeps no state of its own (etcd does), so a short grace period is enough.
        self._apiserver = _Proc(
            "kube-apiserver", self._apiserver_argv(), self.workdir / "apiserver.log", 10.0
        )
        self._apiserver.start()
        self.wait_ready()

    def wait_ready(self, timeout: float | None = None) -> None:
        """Poll /readyz (as admin) until it answers 200 "ok"."""
        ctx = ssl.create_default_context(cafile=str(self.ca_cert))
        req = urllib.request.Request(
            f"{self.url}/readyz", headers={"Authorization": f"Bearer {self.tokens['admin']}"}
        )

        def ready() -> bool | None:
            assert self._apiserver is not None
            self._apiserver.check_alive()
            try:
                with urllib.request.urlopen(req, timeout=2, context=ctx) as resp:
                    return True if resp.status == 200 else None
            except OSError:  # refused, TLS not up yet, or an HTTP error (not ready yet)
                return None

        wait_until(ready, timeout=timeout or self.startup_timeout, what="kube-apiserver /readyz")

    def log_tail(self, lines: int = 30) -> str:
        parts = [f"== {p.name} ==\n{p.tail(lines)}" for p in (self._etcd, self._apiserver) if p]
        return "\n".join(parts)

    # -- clients ---------------------------------------------------------------------------

    def token(self, identity: str = "admin") -> str:
        return self.tokens[identity]

    def configuration(
        self, identity: str = "admin", *, token: str | None = None
    ) -> k8s.Configuration:
        """Client configuration for ``identity``, or for a raw bearer ``token`` if given."""
        cfg = k8s.Configuration(host=self.url)
        cfg.api_key["authorization"] = token if token is not None else self.tokens[identity]
        cfg.api_key_prefix["authorization"] = "Bearer"
        cfg.ssl_ca_cert = str(self.ca_cert)
        cfg.verify_ssl = True
        return cfg

    def api_client(self, identity: str = "admin", *, token: str | None = None) -> k8s.ApiClient:
        """A kubernetes.client.ApiClient authenticated as ``identity`` (a key of
        ``identities``), or with a raw bearer ``token``. The caller closes it."""
        return k8s.ApiClient(self.configuration(identity, token=token))

    @contextlib.contextmanager
    def client(
        self, identity: str = "admin", *, token: str | None = None
    ) -> Iterator[k8s.ApiClient]:
        """``api_client`` as a context manager that closes the client."""
        api = self.api_client(identity, token=token)
        try:
            yield api
        finally:
            api.close()  # type: ignore[no-untyped-call]  # ApiClient.close is unannotated

    def kubeconfig(self, identity: str = "admin") -> dict[str, Any]:
        ca = base64.b64encode(self.ca_cert.read_bytes()).decode()
        return {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {
                    "name": "localkube",
                    "cluster": {"server": self.url, "certificate-authority-data": ca},
                }
            ],
            "users": [{"name": identity, "user": {"token": self.tokens[identity]}}],
            "contexts": [{"name": identity, "context": {"cluster": "localkube", "user": identity}}],
            "current-context": identity,
        }

    def write_kubeconfig(self, path: str | Path | None = None, identity: str = "admin") -> Path:
        """Write a kubeconfig for ``identity`` (default: <workdir>/kubeconfig-<identity>)."""
        target = Path(path) if path else self.workdir / f"kubeconfig-{identity}"
        target.write_text(yaml.safe_dump(self.kubeconfig(identity), sort_keys=False))
        target.chmod(0o600)
        return target

    # -- objects ---------------------------------------------------------------------------

    def apply(self, obj: Mapping[str, Any], identity: str = "admin") -> dict[str, Any]:
        """Server-side apply of one object (any kind the server knows), returning the result."""
        with self.client(identity) as api:
            path = _object_path(obj)
            resp = api.call_api(
                *api.param_serialize(
                    method="PATCH",
                    resource_path=path,
                    query_params=[("fieldManager", FIELD_MANAGER), ("force", "true")],
                    header_params={
                        "Content-Type": "application/apply-patch+yaml",
                        "Accept": "application/json",
                    },
                    body=json.dumps(obj),
                    auth_settings=["BearerToken"],
                )
            )
            # RESTResponse.read is unannotated; it returns the body bytes (also kept in .data).
            data: bytes = resp.read()  # type: ignore[no-untyped-call]
            if not 200 <= resp.status < 300:
                raise k8s.ApiException.from_response(
                    http_resp=resp, body=data.decode(errors="replace"), data=None
                )
            result: dict[str, Any] = json.loads(data)
            return result

    def install_crd(self, path: str | Path | None = None, timeout: float = 60.0) -> dict[str, Any]:
        """Apply a CRD (default: the Rollout CRD of the Argo Rollouts module pinned in
        scripts/argo/go.mod, or ``CANARYWATCH_ROLLOUT_CRD``) and wait until Established."""
        crd_path = Path(path or os.environ.get("CANARYWATCH_ROLLOUT_CRD") or default_rollout_crd())
        crd = yaml.safe_load(crd_path.read_text())
        self.apply(crd)
        name = crd["metadata"]["name"]
        with self.client() as api:
            ext = k8s.ApiextensionsV1Api(api)

            def established() -> dict[str, Any] | None:
                # With _preload_content=False the client returns the raw urllib3 response, not
                # the V1CustomResourceDefinition its signature declares.
                resp = cast(
                    urllib3.BaseHTTPResponse,
                    ext.read_custom_resource_definition(name, _preload_content=False),
                )
                got: dict[str, Any] = json.loads(resp.data)
                conditions = got.get("status", {}).get("conditions") or []
                ok = any(
                    c.get("type") == "Established" and c.get("status") == "True" for c in conditions
                )
                return got if ok else None

            return wait_until(established, timeout=timeout, what=f"CRD {name} Established")


# kind -> plural for the kinds the tests apply (no discovery: add kinds here as needed).
_PLURALS = {
    "Namespace": "namespaces",
    "ServiceAccount": "serviceaccounts",
    "ClusterRole": "clusterroles",
    "ClusterRoleBinding": "clusterrolebindings",
    "Role": "roles",
    "RoleBinding": "rolebindings",
    "CustomResourceDefinition": "customresourcedefinitions",
    "Deployment": "deployments",
    "ConfigMap": "configmaps",
    "Secret": "secrets",
    "Event": "events",
    "Rollout": "rollouts",
    "Service": "services",
    "HorizontalPodAutoscaler": "horizontalpodautoscalers",
    "PodDisruptionBudget": "poddisruptionbudgets",
}
_CLUSTER_SCOPED = {"Namespace", "ClusterRole", "ClusterRoleBinding", "CustomResourceDefinition"}


def _object_path(obj: Mapping[str, Any]) -> str:
    api_version: str = obj["apiVersion"]
    kind: str = obj["kind"]
    meta = obj.get("metadata", {})
    name = meta["name"]
    plural = _PLURALS.get(kind)
    if plural is None:
        raise LocalKubeError(f"apply: unknown kind {kind} (add it to _PLURALS)")
    base = f"/api/{api_version}" if "/" not in api_version else f"/apis/{api_version}"
    if kind in _CLUSTER_SCOPED:
        return f"{base}/{plural}/{name}"
    namespace = meta.get("namespace") or "default"
    return f"{base}/namespaces/{namespace}/{plural}/{name}"
