"""--web-config: TLS and basic authentication for --metrics, from the file
format of the Prometheus exporter-toolkit (what node_exporter's
--web.config.file reads), so operators reuse the file they have.

Supported: tls_server_config's cert_file, key_file, client_ca_file,
client_auth_type (NoClientCert, VerifyClientCertIfGiven,
RequireAndVerifyClientCert) and min_version/max_version (TLS10..TLS13;
TLS12 and TLS13 by default, as the toolkit's), and basic_auth_users with
bcrypt hashes. Paths are relative to the file's directory, as the
toolkit's are. Anything else in the file is refused by name rather than
ignored: a setting silently dropped is a door left open. The toolkit's
RequestClientCert and RequireAnyClientCert ask for a certificate without
verifying it, which Python's ssl module cannot do; they are refused too.

TLS and authentication are done here, with the standard library's ssl
and the bcrypt package, because Debian 12's prometheus-client (0.16) has
neither server-side TLS nor authentication; the exposition stays
prometheus-client's.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import re
import ssl
from collections.abc import Callable, Iterable
from typing import Any, NamedTuple

TLS_VERSIONS = {
    "TLS10": ssl.TLSVersion.TLSv1,
    "TLS11": ssl.TLSVersion.TLSv1_1,
    "TLS12": ssl.TLSVersion.TLSv1_2,
    "TLS13": ssl.TLSVersion.TLSv1_3,
}
CLIENT_AUTH = {
    "NoClientCert": ssl.CERT_NONE,
    "VerifyClientCertIfGiven": ssl.CERT_OPTIONAL,
    "RequireAndVerifyClientCert": ssl.CERT_REQUIRED,
}
TLS_KEYS = {"cert_file", "key_file", "client_ca_file", "client_auth_type", "min_version",
            "max_version"}
# The modular crypt format of bcrypt: $2a$, $2b$ or $2y$, cost, 53 characters.
BCRYPT_HASH = re.compile(r"\$2[aby]\$\d\d\$[./A-Za-z0-9]{53}")


class WebConfigError(Exception):
    pass


class WebConfig(NamedTuple):
    tls: ssl.SSLContext | None
    # user name -> bcrypt hash; empty: no authentication.
    users: dict[str, bytes]


def load_web_config(path: str) -> WebConfig:
    try:
        import yaml
    except ImportError:
        raise WebConfigError("needs the Python package PyYAML (Debian: python3-yaml)") from None
    try:
        with open(path, encoding="utf-8") as f:
            document = yaml.safe_load(f)
    except OSError as exc:
        raise WebConfigError(exc.strerror or str(exc)) from None
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise WebConfigError(f"not YAML: {' '.join(str(exc).split())}") from None
    document = {} if document is None else document
    _mapping(document, "the file")
    _known(document, {"tls_server_config", "basic_auth_users"}, "")
    base = os.path.dirname(os.path.abspath(path))
    tls = document.get("tls_server_config")
    users = document.get("basic_auth_users") or {}
    _mapping(users, "basic_auth_users")
    return WebConfig(_tls_context(tls, base) if tls is not None else None, _users(users))


def _mapping(value: object, what: str) -> None:
    if not isinstance(value, dict):
        raise WebConfigError(f"{what} must be a mapping")


def _known(section: dict, known: Iterable[str], where: str) -> None:
    for key in section:
        if key not in known:
            raise WebConfigError(f"{where}{key}: not supported by tcpconnect")


def _tls_context(tls: Any, base: str) -> ssl.SSLContext:
    _mapping(tls, "tls_server_config")
    _known(tls, TLS_KEYS, "tls_server_config.")
    for key in ("cert_file", "key_file"):
        if not isinstance(tls.get(key), str) or not tls[key]:
            raise WebConfigError(f"tls_server_config.{key} is required")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = _version(tls, "min_version", "TLS12")
    context.maximum_version = _version(tls, "max_version", "TLS13")
    cert, key = (os.path.join(base, tls[k]) for k in ("cert_file", "key_file"))
    try:
        context.load_cert_chain(cert, key)
    except OSError as exc:
        raise WebConfigError(f"cannot load {cert} with {key}: "
                             f"{exc.strerror or exc.args[-1]}") from None
    auth = tls.get("client_auth_type", "NoClientCert")
    if auth not in CLIENT_AUTH:
        raise WebConfigError(f"tls_server_config.client_auth_type {auth!r}: expected one of "
                             f"{', '.join(CLIENT_AUTH)}")
    context.verify_mode = CLIENT_AUTH[auth]
    if auth != "NoClientCert":
        ca = tls.get("client_ca_file")
        if not isinstance(ca, str) or not ca:
            raise WebConfigError(f"tls_server_config.client_auth_type {auth} needs "
                                 "client_ca_file")
        try:
            context.load_verify_locations(os.path.join(base, ca))
        except (OSError, ssl.SSLError) as exc:
            raise WebConfigError(f"cannot load client_ca_file {os.path.join(base, ca)}: "
                                 f"{exc.strerror or exc.args[-1]}") from None
    return context


def _version(tls: dict, key: str, default: str) -> ssl.TLSVersion:
    name = tls.get(key, default)
    if name not in TLS_VERSIONS:
        raise WebConfigError(f"tls_server_config.{key} {name!r}: expected one of "
                             f"{', '.join(TLS_VERSIONS)}")
    return TLS_VERSIONS[name]


def _users(users: dict) -> dict[str, bytes]:
    hashes = {}
    for name, hashed in users.items():
        if not isinstance(name, str) or not isinstance(hashed, str) \
                or not BCRYPT_HASH.fullmatch(hashed):
            raise WebConfigError(f"basic_auth_users: the password of {str(name)!r} must be a "
                                 "bcrypt hash ($2b$...)")
        hashes[name] = hashed.encode()
    if hashes:
        try:
            import bcrypt  # noqa: F401
        except ImportError:
            raise WebConfigError("basic_auth_users needs the Python package bcrypt "
                                 "(Debian: python3-bcrypt)") from None
    return hashes


class BasicAuth:
    """Checks an Authorization header against the users. bcrypt costs tens
    of milliseconds by design; the digest of each user's last accepted
    password is kept, so a scraper repeating its credentials costs a hash
    compare, and a wrong password always pays bcrypt."""

    def __init__(self, users: dict[str, bytes]) -> None:
        self._users = users
        self._accepted: dict[str, bytes] = {}

    def allows(self, header: str | None) -> bool:
        import bcrypt

        scheme, _, encoded = (header or "").partition(" ")
        if scheme.lower() != "basic":
            return False
        try:
            name, sep, password = base64.b64decode(encoded, validate=True).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            return False
        hashed = self._users.get(name)
        if not sep or hashed is None:
            return False
        digest = hashlib.sha256(password.encode()).digest()
        accepted = self._accepted.get(name)
        if accepted is not None and hmac.compare_digest(accepted, digest):
            return True
        if not bcrypt.checkpw(password.encode(), hashed):
            return False
        self._accepted[name] = digest
        return True


def guarded(app: Callable, auth: BasicAuth) -> Callable:
    """The WSGI app behind basic authentication: 401 without the right
    credentials."""

    def serve(environ: dict, start_response: Callable) -> Iterable[bytes]:
        if auth.allows(environ.get("HTTP_AUTHORIZATION")):
            return app(environ, start_response)
        start_response("401 Unauthorized", [("Content-Type", "text/plain; charset=utf-8"),
                                            ("WWW-Authenticate", 'Basic realm="tcpconnect"')])
        return [b"Unauthorized\n"]

    return serve
