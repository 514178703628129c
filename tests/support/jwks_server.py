"""A tiny OIDC-style issuer for tests: an RSA key (made with `cryptography`) whose public half is
served as a JWKS document over real HTTP on 127.0.0.1, from a thread."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm

ISSUER = "https://idp.example.test/"
AUDIENCE = "agent-service-external"
KID = "test-key-1"


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


class JwksServer:
    """`with JwksServer() as idp:` → `idp.url` serves the JWKS; `idp.sign(...)` issues RS256 tokens."""

    def __init__(self) -> None:
        self.private_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.public_pem = self.private_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        jwk: dict[str, Any] = json.loads(RSAAlgorithm.to_jwk(self.private_key.public_key()))
        self.jwks = json.dumps({"keys": [{**jwk, "kid": KID, "use": "sig", "alg": "RS256"}]}).encode()
        self.requests = 0
        body, outer = self.jwks, self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                outer.requests += 1
                if self.path != "/jwks.json":
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                        daemon=True)

    @property
    def url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host!s}:{port}/jwks.json"

    def __enter__(self) -> JwksServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(5)

    @staticmethod
    def claims(**overrides: Any) -> dict[str, Any]:
        now = int(time.time())
        return {"sub": "ext-user-1", "email": "ext@idp.example.test", "iss": ISSUER, "aud": AUDIENCE,
                "iat": now, "nbf": now, "exp": now + 300, "jti": f"ext-{now}-{id(overrides)}", **overrides}

    def sign(self, **overrides: Any) -> str:
        """A genuine RS256 token from this issuer."""
        return jwt.encode(self.claims(**overrides), self.private_key, algorithm="RS256", headers={"kid": KID})

    def hs256_with_public_key(self, **overrides: Any) -> str:
        """The key-confusion attack: HS256 with the issuer's *public* key (PEM) as the HMAC secret.
        pyjwt refuses to build this, so it is assembled by hand."""
        header = {"alg": "HS256", "typ": "JWT", "kid": KID}
        signing_input = (b64url(json.dumps(header).encode()) + "." +
                         b64url(json.dumps(self.claims(**overrides)).encode()))
        sig = hmac.new(self.public_pem, signing_input.encode(), hashlib.sha256).digest()
        return signing_input + "." + b64url(sig)
