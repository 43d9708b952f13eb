"""Run a real, certified OpenID provider (npm ``oidc-provider``, pinned) on loopback for the tests.

The package is installed with ``npm ci`` from ``tests/oidc/package-lock.json`` into a cache
directory (``$ASYNCTOKEN_TEST_CACHE``, else ``~/.cache/asynctoken-tests``) keyed by the lock
file's hash, once per machine; a missing ``node``/``npm`` or a failed install is an error, never
a skip. Key material (client keys, a test CA, server and client certificates) is made fresh per
session with ``cryptography``; ``tests/oidc/server.mjs`` gets the clients' public keys and serves
the provider on a plain listener (the issuer) and on a TLS listener that asks for client
certificates.
"""

from __future__ import annotations

import datetime
import hashlib
import ipaddress
import json
import os
import secrets
import shutil
import subprocess
import threading
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import NameOID
from filelock import FileLock
from joserfc.jwk import ECKey, OKPKey, RSAKey

__all__ = ["CLIENT_SECRET", "ClientKeys", "OIDCServer", "install_oidc_provider"]

FIXTURE_DIR = Path(__file__).parent / "oidc"
CLIENT_SECRET = "s3cr3t-for-the-oidc-provider-fixture-0123456789abcdef"
CLIENT_DN = "CN=asynctoken-test-client"
ACCESS_TOKEN_TTL = 4


def _cache_root() -> Path:
    configured = os.environ.get("ASYNCTOKEN_TEST_CACHE")
    if configured:
        return Path(configured)
    return Path.home() / ".cache" / "asynctoken-tests"


def _tool(name: str) -> str:
    found = shutil.which(name)
    if found is None:
        raise RuntimeError(
            f"the OpenID provider tests need {name} (Node.js 20.19+ with npm) on PATH to run the "
            "pinned npm package oidc-provider; install Node.js"
        )
    return found


def install_oidc_provider() -> Path:
    """``npm ci`` the fixture's lock file into the cache (once) and return its directory.

    Raises:
        RuntimeError: node or npm is missing, or the install failed (npm's output included).
    """
    node, npm = _tool("node"), _tool("npm")
    lock = (FIXTURE_DIR / "package-lock.json").read_bytes()
    manifest = (FIXTURE_DIR / "package.json").read_bytes()
    digest = hashlib.sha256(lock + manifest).hexdigest()[:16]
    target = _cache_root() / f"oidc-provider-{digest}"
    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target) + ".lock", timeout=300):
        if (target / ".installed").exists():
            return target
        shutil.rmtree(target, ignore_errors=True)
        target.mkdir()
        (target / "package-lock.json").write_bytes(lock)
        (target / "package.json").write_bytes(manifest)
        result = subprocess.run(
            [npm, "ci", "--no-audit", "--no-fund", "--ignore-scripts", "--loglevel=error"],
            cwd=target,
            capture_output=True,
            text=True,
            timeout=280,
            check=False,
        )
        if result.returncode != 0:
            raise RuntimeError(
                f"npm ci of the oidc-provider fixture failed ({result.returncode}):\n"
                f"{result.stdout[-2000:]}\n{result.stderr[-2000:]}"
            )
        version = subprocess.run(
            [node, "--version"], capture_output=True, text=True, check=True
        ).stdout.strip()
        (target / ".installed").write_text(version + "\n")
    return target


def _pem(key: Any) -> bytes:
    data: bytes = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return data


def _public_jwk(key: Any, kid: str, **extra: Any) -> dict[str, Any]:
    if isinstance(key, rsa.RSAPrivateKey):
        imported: Any = RSAKey.import_key(key.public_key())
    elif isinstance(key, ec.EllipticCurvePrivateKey):
        imported = ECKey.import_key(key.public_key())
    else:
        imported = OKPKey.import_key(key.public_key())
    jwk: dict[str, Any] = imported.as_dict(private=False)
    jwk.update(kid=kid, **extra)
    return jwk


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _certificate(
    subject: str,
    public_key: Any,
    issuer: str,
    signer: Any,
    *,
    ca: bool = False,
    server: bool = False,
) -> x509.Certificate:
    now = datetime.datetime.now(datetime.timezone.utc)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(_name(issuer))
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if server:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
    return builder.sign(signer, hashes.SHA256())


@dataclass
class ClientKeys:
    """The key material of the session's clients, as files and key objects.

    Attributes:
        directory: where the PEM files are.
        rsa, ec, ed25519: private keys registered for the ``private_key_jwt`` clients.
        ca: the test CA's certificate file (trusts the server and the CA-issued client
            certificate).
        client_cert, client_key: a client certificate issued by the CA (``tls_client_auth``).
        self_signed_cert, self_signed_key: a self-signed client certificate
            (``self_signed_tls_client_auth``).
    """

    directory: Path
    rsa: rsa.RSAPrivateKey
    ec: ec.EllipticCurvePrivateKey
    ed25519: ed25519.Ed25519PrivateKey
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    self_signed_cert: Path
    self_signed_key: Path
    signing_jwk: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def generate(cls, directory: Path) -> ClientKeys:
        directory.mkdir(parents=True, exist_ok=True)

        def write(name: str, data: bytes) -> Path:
            path = directory / name
            path.write_bytes(data)
            return path

        ca_key = ec.generate_private_key(ec.SECP256R1())
        ca_cert = _certificate(
            "asynctoken test CA", ca_key.public_key(), "asynctoken test CA", ca_key, ca=True
        )
        server_key = ec.generate_private_key(ec.SECP256R1())
        server_cert = _certificate(
            "127.0.0.1", server_key.public_key(), "asynctoken test CA", ca_key, server=True
        )
        client_key = ec.generate_private_key(ec.SECP256R1())
        client_cert = _certificate(
            CLIENT_DN[3:], client_key.public_key(), "asynctoken test CA", ca_key
        )
        self_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self_cert = _certificate(
            "asynctoken self-signed client",
            self_key.public_key(),
            "asynctoken self-signed client",
            self_key,
        )
        signing = ec.generate_private_key(ec.SECP256R1())
        signing_jwk: dict[str, Any] = ECKey.import_key(signing).as_dict(private=True)
        signing_jwk.update(kid="op-signing", use="sig", alg="ES256")
        pem = serialization.Encoding.PEM
        rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        ec_key = ec.generate_private_key(ec.SECP256R1())
        ed_key = ed25519.Ed25519PrivateKey.generate()
        for name, key in (("rsa", rsa_key), ("ec", ec_key), ("ed25519", ed_key)):
            write(f"{name}-key.pem", _pem(key))  # for worker processes
        return cls(
            directory=directory,
            rsa=rsa_key,
            ec=ec_key,
            ed25519=ed_key,
            ca=write("ca.pem", ca_cert.public_bytes(pem)),
            server_cert=write("server.pem", server_cert.public_bytes(pem)),
            server_key=write("server-key.pem", _pem(server_key)),
            client_cert=write("client.pem", client_cert.public_bytes(pem)),
            client_key=write("client-key.pem", _pem(client_key)),
            self_signed_cert=write("self-signed.pem", self_cert.public_bytes(pem)),
            self_signed_key=write("self-signed-key.pem", _pem(self_key)),
            signing_jwk=signing_jwk,
        )

    def jwks(self) -> dict[str, Any]:
        """The public keys of the ``private_key_jwt`` clients, one per algorithm family."""
        return {
            "keys": [
                _public_jwk(self.rsa, "rsa-1"),
                _public_jwk(self.ec, "ec-1"),
                _public_jwk(self.ed25519, "ed-1"),
            ]
        }

    def self_signed_jwks(self) -> dict[str, Any]:
        cert = x509.load_pem_x509_certificate(self.self_signed_cert.read_bytes())
        key = serialization.load_pem_private_key(self.self_signed_key.read_bytes(), None)
        der = cert.public_bytes(serialization.Encoding.DER)
        import base64

        return {"keys": [_public_jwk(key, "self-1", x5c=[base64.b64encode(der).decode("ascii")])]}


def _client(client_id: str, method: str, **metadata: Any) -> dict[str, Any]:
    client: dict[str, Any] = {
        "client_id": client_id,
        "token_endpoint_auth_method": method,
        "grant_types": ["refresh_token", "client_credentials"],
        "response_types": [],
        "redirect_uris": [],
        "id_token_signed_response_alg": "ES256",
    }
    if method in ("client_secret_basic", "client_secret_post", "client_secret_jwt"):
        client["client_secret"] = CLIENT_SECRET
    client.update(metadata)
    return client


def fixture_clients(keys: ClientKeys) -> list[dict[str, Any]]:
    """Every client registered at the fixture's provider.

    Ids ending in ``-dpop`` must use DPoP (their access tokens are bound to the proof key); ids
    ending in ``-nonce`` must also put a server nonce in their proofs.
    """
    jwks = keys.jwks()
    dpop = {"dpop_bound_access_tokens": True}
    mtls = {"tls_client_certificate_bound_access_tokens": True}
    return [
        _client("secret-basic", "client_secret_basic"),
        _client("secret-post", "client_secret_post"),
        _client("secret-jwt", "client_secret_jwt"),
        _client("key-jwt", "private_key_jwt", jwks=jwks),
        _client("tls", "tls_client_auth", tls_client_auth_subject_dn=CLIENT_DN, **mtls),
        _client(
            "self-signed-tls", "self_signed_tls_client_auth", jwks=keys.self_signed_jwks(), **mtls
        ),
        _client("secret-basic-dpop", "client_secret_basic", **dpop),
        _client("secret-jwt-dpop", "client_secret_jwt", **dpop),
        _client("key-jwt-dpop", "private_key_jwt", jwks=jwks, **dpop),
        _client("key-jwt-dpop-nonce", "private_key_jwt", jwks=jwks, **dpop),
        # One required proof of possession per client: this one's tokens are DPoP-bound.
        _client("tls-dpop", "tls_client_auth", tls_client_auth_subject_dn=CLIENT_DN, **dpop),
    ]


class OIDCServer:
    """One ``node server.mjs`` process: the provider on two loopback listeners.

    Attributes:
        issuer: the plain listener, ``http://127.0.0.1:PORT`` (the issuer).
        tls_url: the TLS listener, ``https://127.0.0.1:PORT``, asking for client certificates.
        keys: the session's key material.
    """

    def __init__(self, directory: Path, keys: ClientKeys) -> None:
        self.directory = directory
        self.keys = keys
        self.issuer = ""
        self.tls_url = ""
        self.process: subprocess.Popen[str] | None = None
        self._stderr: list[str] = []

    @property
    def token_url(self) -> str:
        return self.issuer + "/token"

    @property
    def tls_token_url(self) -> str:
        return self.tls_url + "/token"

    def start(self, wait: float = 30.0) -> None:
        """Install (cached) and start the provider; return once it listens.

        Raises:
            RuntimeError: node is missing, the install failed, or the server did not come up.
        """
        modules = install_oidc_provider()
        node = _tool("node")
        work = self.directory / "oidc"
        work.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(FIXTURE_DIR / "server.mjs", work / "server.mjs")
        link = work / "node_modules"
        if not link.exists():
            link.symlink_to(modules / "node_modules", target_is_directory=True)
        config = {
            "clients": fixture_clients(self.keys),
            "signing_jwk": self.keys.signing_jwk,
            "access_token_ttl": ACCESS_TOKEN_TTL,
            "dpop_nonce_secret": secrets.token_urlsafe(32),
            "tls": {
                "cert": str(self.keys.server_cert),
                "key": str(self.keys.server_key),
                "ca": str(self.keys.ca),
            },
        }
        config_path = work / "config.json"
        config_path.write_text(json.dumps(config))
        self.process = subprocess.Popen(
            [node, str(work / "server.mjs"), str(config_path)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        threading.Thread(target=self._drain_stderr, daemon=True).start()
        ready: dict[str, str] = {}

        def read_ready() -> None:
            assert self.process is not None
            assert self.process.stdout is not None
            line = self.process.stdout.readline()
            if line:
                ready.update(json.loads(line))

        reader = threading.Thread(target=read_ready, daemon=True)
        reader.start()
        reader.join(wait)
        if not ready:
            self.stop()
            raise RuntimeError(
                f"the oidc-provider fixture did not start within {wait} s: "
                + "".join(self._stderr)[-3000:]
            )
        self.issuer = ready["issuer"]
        self.tls_url = ready["tls"]

    def _drain_stderr(self) -> None:
        process = self.process
        if process is None or process.stderr is None:
            return
        for line in process.stderr:
            self._stderr.append(line)
            del self._stderr[:-200]

    def seed(self, client_id: str) -> str:
        """A new grant and refresh token for ``client_id``, as after an authorization."""
        answer = self._call("/__test/seed", {"client_id": client_id})
        refresh_token: str = answer["refresh_token"]
        return refresh_token

    def stats(self, client_id: str) -> dict[str, int]:
        """What the provider counted for ``client_id``: ``token_ok``, ``token_<error>``,
        ``resource_ok``, ``resource_<error>``."""
        answer: Mapping[str, dict[str, int]] = self._call("/__test/stats", None)
        return dict(answer.get(client_id, {}))

    def token_times(self, client_id: str) -> list[float]:
        """Unix times of the successful token requests of ``client_id``."""
        answer: Mapping[str, list[float]] = self._call("/__test/times", None)
        return list(answer.get(client_id, []))

    def _call(self, path: str, body: dict[str, Any] | None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(
            self.issuer + path, data=data, method="GET" if data is None else "POST"
        )
        with urllib.request.urlopen(request, timeout=10) as resp:
            return json.loads(resp.read())

    def stop(self) -> None:
        """Stop the node process (closing its stdin, then SIGTERM, then SIGKILL)."""
        process, self.process = self.process, None
        if process is None:
            return
        if process.stdin is not None:
            process.stdin.close()
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.terminate()
            try:
                process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=5)
        for stream in (process.stdout, process.stderr):
            if stream is not None:
                stream.close()

    def log(self) -> str:
        """The server's recent stderr output."""
        return "".join(self._stderr)
