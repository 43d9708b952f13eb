"""DPoP proofs, client assertions and their configuration, checked with joserfc as a verifier.

Behaviour against a real server is in test_oidc_client_auth.py and test_oidc_shared.py; these are
the claims, the header rules, the secrecy of keys and the errors for bad configuration.
"""

from __future__ import annotations

import base64
import hashlib
import json
import ssl
import subprocess
import sys
import textwrap
import warnings
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from joserfc import jws
from joserfc.errors import SecurityWarning
from joserfc.jwk import JWKRegistry

from asynctoken import ConfigurationError, DPoPKey, OAuth2Provider, Token
from asynctoken._authflow import AuthRules, Verdict
from asynctoken.providers._client_auth import ASSERTION_TYPE

TOKEN_URL = "https://auth.example.com/oauth/token"


def decode(compact: str, public_jwk: dict[str, Any] | None = None) -> tuple[dict[str, Any], Any]:
    """Verify ``compact`` with the key in its own header (or ``public_jwk``); header, claims."""
    header = json.loads(base64.urlsafe_b64decode(compact.split(".")[0] + "=="))
    key = JWKRegistry.import_key(public_jwk or header["jwk"])
    registry = jws.JWSRegistry(algorithms=[header["alg"]])
    registry.max_header_length = 4096  # an RSA public key in the header
    with warnings.catch_warnings():  # joserfc flags the name EdDSA (RFC 9864) when verifying
        warnings.simplefilter("ignore", SecurityWarning)
        obj = jws.deserialize_compact(compact, key, registry=registry)
    return obj.headers(), json.loads(obj.payload)


def b64url_sha256(value: bytes) -> str:
    return base64.urlsafe_b64encode(hashlib.sha256(value).digest()).rstrip(b"=").decode()


@pytest.mark.parametrize("alg", ["ES256", "EdDSA", "PS256", "RS256"])
def test_proof_claims_and_header(alg: str) -> None:
    key = DPoPKey.generate(alg)
    proof = key.proof(
        "post", "https://api.example.com/v1/items?page=2#top", access_token="tok-123", nonce="n1"
    )
    header, claims = decode(proof)
    assert header["typ"] == "dpop+jwt"
    assert header["alg"] == alg
    assert "d" not in header["jwk"]  # the public key only
    assert claims["htm"] == "POST"
    assert claims["htu"] == "https://api.example.com/v1/items"
    assert claims["ath"] == b64url_sha256(b"tok-123")
    assert claims["nonce"] == "n1"
    assert isinstance(claims["iat"], int)
    assert len({decode(key.proof("GET", "https://a.example/"))[1]["jti"] for _ in range(20)}) == 20


def test_thumbprint_is_rfc7638() -> None:
    key = DPoPKey.generate("ES256")
    jwk = key.public_jwk
    canonical = json.dumps(
        {name: jwk[name] for name in ("crv", "kty", "x", "y")}, separators=(",", ":")
    )
    assert key.thumbprint == b64url_sha256(canonical.encode())


def test_key_survives_its_jwk_and_hides_it() -> None:
    key = DPoPKey.generate("EdDSA")
    again = DPoPKey.from_jwk(key.jwk)
    assert again == key
    assert again.alg == "EdDSA"
    assert json.loads(key.jwk)["d"] not in repr(key)
    assert repr(key) == f"DPoPKey(alg='EdDSA', thumbprint={key.thumbprint!r})"
    # The stored record: only present for bound tokens, round-trips, masked in repr.
    token = Token(access_token="a" * 20, expires_at=1.0, token_type="DPoP", dpop_key=key.jwk)
    assert Token.from_dict(json.loads(json.dumps(token.to_dict()))) == token
    assert key.jwk not in repr(token)
    assert "dpop_key" not in Token(access_token="x", expires_at=1.0).to_dict()


@pytest.mark.parametrize(
    ("key", "alg"),
    [
        (b"-----BEGIN PRIVATE KEY-----\nsecretstuff\n-----END PRIVATE KEY-----\n", "ES256"),
        ("{not json", "ES256"),
        (ec.generate_private_key(ec.SECP256R1()), "RS256"),
        (ec.generate_private_key(ec.SECP384R1()), "ES256"),
        (rsa.generate_private_key(public_exponent=65537, key_size=1024), "RS256"),
        (ed25519.Ed25519PrivateKey.generate().public_key(), "EdDSA"),
        ({"kty": "EC", "crv": "P-256", "x": "secretstuff", "y": "AA"}, "ES256"),
        (ec.generate_private_key(ec.SECP256R1()), "HS256"),
    ],
)
def test_bad_keys_are_configuration_errors_that_quote_nothing(key: object, alg: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        DPoPKey(key, alg)
    assert "secretstuff" not in str(info.value)
    assert info.value.__cause__ is None


def private_pem(key: Any) -> bytes:
    data: bytes = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return data


@pytest.mark.parametrize("alg", ["RS256", "PS256", "ES256", "EdDSA"])
def test_private_key_jwt_makes_a_new_assertion_per_request(alg: str) -> None:
    native: Any = {
        "RS256": lambda: rsa.generate_private_key(public_exponent=65537, key_size=2048),
        "PS256": lambda: rsa.generate_private_key(public_exponent=65537, key_size=2048),
        "ES256": lambda: ec.generate_private_key(ec.SECP256R1()),
        "EdDSA": ed25519.Ed25519PrivateKey.generate,
    }[alg]()
    pem = private_pem(native)
    provider = OAuth2Provider(
        TOKEN_URL,
        "client-1",
        auth_method="private_key_jwt",
        private_key=pem,
        key_id="k1",
        signing_alg=alg,  # type: ignore[arg-type]
        grant_type="client_credentials",
    )
    kty = {"RS256": "RSA", "PS256": "RSA", "ES256": "EC", "EdDSA": "OKP"}[alg]
    public = dict(JWKRegistry.import_key(native.public_key(), kty).as_dict())
    forms = [provider.build_request(None).form for _ in range(2)]
    claims = []
    for form in forms:
        assert form["client_assertion_type"] == ASSERTION_TYPE
        assert form["client_id"] == "client-1"
        assert "client_secret" not in form
        header, payload = decode(form["client_assertion"], public)
        assert (header["alg"], header["kid"]) == (alg, "k1")
        claims.append(payload)
    for payload in claims:
        assert payload["iss"] == payload["sub"] == "client-1"
        assert payload["aud"] == TOKEN_URL
        assert 0 < payload["exp"] - payload["iat"] <= 60
    assert claims[0]["jti"] != claims[1]["jti"]
    text = repr(provider)
    assert pem.decode() not in text
    assert f"signing_alg={alg!r}" in text


def test_client_secret_jwt_is_hs256_over_the_secret_with_a_chosen_audience() -> None:
    from joserfc.jwk import OctKey

    secret = "a-client-secret-long-enough-for-hs256-0123456789"
    provider = OAuth2Provider(
        TOKEN_URL,
        "client-1",
        secret,
        auth_method="client_secret_jwt",
        assertion_audience="https://auth.example.com",
        assertion_lifetime=30,
        grant_type="client_credentials",
    )
    request = provider.build_request(None)
    assertion = request.form["client_assertion"]
    obj = jws.deserialize_compact(assertion, OctKey.import_key(secret), algorithms=["HS256"])
    payload = json.loads(obj.payload)
    assert payload["aud"] == "https://auth.example.com"
    assert payload["exp"] - payload["iat"] == 30
    assert "Authorization" not in request.headers
    assert assertion in request.secrets  # redacted from any error message
    assert secret not in repr(provider)


def test_dpop_proof_on_token_requests_uses_the_remembered_nonce() -> None:
    key = DPoPKey.generate()
    provider = OAuth2Provider(TOKEN_URL, "c", "s" * 20, dpop_key=key)
    header, claims = decode(provider.build_request("rt", dpop_key=key).headers["DPoP"])
    assert header["jwk"] == key.public_jwk
    assert (claims["htm"], claims["htu"]) == ("POST", TOKEN_URL)
    assert "nonce" not in claims
    assert "ath" not in claims
    nonces = provider._dpop_nonces
    assert nonces is not None
    assert nonces.update(TOKEN_URL, "server-nonce")
    _, claims = decode(provider.build_request("rt", dpop_key=key).headers["DPoP"])
    assert claims["nonce"] == "server-nonce"
    assert "dpop='ES256'" in repr(provider)


@pytest.mark.parametrize(
    ("kwargs", "words"),
    [
        ({"auth_method": "private_key_jwt"}, "needs a private_key"),
        ({"auth_method": "client_secret_jwt"}, "needs a client_secret"),
        ({"auth_method": "tls_client_auth"}, "needs client_cert"),
        ({"private_key": "x"}, "only used with auth_method='private_key_jwt'"),
        ({"client_cert": ("a", "b")}, "only used with auth_method='tls_client_auth'"),
        ({"auth_method": "tls_client_auth", "client_cert": "cert.pem"}, "tuple or an ssl"),
        (
            {"auth_method": "tls_client_auth", "client_cert": ("/nonexistent/c", "/x/k")},
            "cannot load",
        ),
        ({"assertion_lifetime": 3600}, "assertion_lifetime"),
        ({"dpop": "yes"}, "dpop must be True or False"),
        ({"dpop": True, "dpop_alg": "HS256"}, "dpop_alg must be one of"),
        ({"auth_method": "none"}, "auth_method must be one of"),
    ],
)
def test_configuration_errors(kwargs: dict[str, Any], words: str) -> None:
    with pytest.raises(ConfigurationError, match=words):
        OAuth2Provider(TOKEN_URL, "c", **kwargs)


def test_mutual_tls_needs_https() -> None:
    with pytest.raises(ConfigurationError, match="https"):
        OAuth2Provider(
            "http://127.0.0.1:8080/token",
            "c",
            auth_method="tls_client_auth",
            client_cert=ssl.create_default_context(),
        )


def test_rules_sign_a_new_proof_per_request_and_keep_bearer_cached() -> None:
    rules = AuthRules("k")
    key = DPoPKey.generate()
    token = Token(access_token="at-1", expires_at=1e10, token_type="DPoP", dpop_key=key.jwk)
    first = rules.headers(token, "GET", "https://api.example.com/x?y=1")
    second = rules.headers(token, "GET", "https://api.example.com/x?y=1")
    assert first["Authorization"] == second["Authorization"] == "DPoP at-1"
    assert first["DPoP"] != second["DPoP"]
    _, claims = decode(first["DPoP"], key.public_jwk)
    assert claims["htu"] == "https://api.example.com/x"
    assert claims["ath"] == b64url_sha256(b"at-1")
    assert rules.observe_nonce("https://api.example.com/other", "rs-nonce")
    _, claims = decode(rules.headers(token, "PUT", "https://api.example.com/x")["DPoP"])
    assert (claims["htm"], claims["nonce"]) == ("PUT", "rs-nonce")
    # Another origin has not sent a nonce.
    _, claims = decode(rules.headers(token, "GET", "https://other.example.com/x")["DPoP"])
    assert "nonce" not in claims
    bearer = Token(access_token="at-2", expires_at=1e10)
    assert rules.headers(bearer, "GET", "u") is rules.headers(bearer, "POST", "v")


@pytest.mark.parametrize(
    ("challenge", "nonce", "verdict"),
    [
        ('DPoP error="use_dpop_nonce", error_description="x"', "n2", Verdict.NONCE),
        ('DPoP error="use_dpop_nonce"', None, Verdict.KEEP),
        ('DPoP error="invalid_token", algs="ES256"', None, Verdict.NEW_TOKEN),
        ('DPoP error="invalid_dpop_proof"', None, Verdict.KEEP),
        ('DPoP algs="ES256"', None, Verdict.NEW_TOKEN),
        ('Bearer error="invalid_token"', "n2", Verdict.NEW_TOKEN),
    ],
)
def test_dpop_challenges(challenge: str, nonce: str | None, verdict: Verdict) -> None:
    rules = AuthRules("k")
    assert rules.verdict([challenge], dpop_nonce=nonce, url="https://api.example.com/") is verdict


def test_import_without_the_jwt_extra() -> None:
    code = textwrap.dedent(
        """
        import sys

        class Block:
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in ("joserfc", "cryptography"):
                    raise ImportError(f"blocked {name}")

        sys.meta_path.insert(0, Block())
        import asynctoken
        from asynctoken import ConfigurationError, OAuth2Provider
        OAuth2Provider("https://a.example/token", "c", "s")
        for kwargs in ({"dpop": True}, {"auth_method": "private_key_jwt", "private_key": "x"}):
            try:
                OAuth2Provider("https://a.example/token", "c", "s", **kwargs)
            except ConfigurationError as exc:
                assert "asynctoken[jwt]" in str(exc), exc
            else:
                raise AssertionError(kwargs)
        print("ok")
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.stdout.strip() == "ok", result.stderr
