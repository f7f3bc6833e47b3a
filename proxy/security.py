"""The security parts of a pool's or listener's config: TLS on either side, ACL users (leaf).

``config.py`` hands each mapping here and wraps a ValueError into its ConfigError naming the
file, pool and key. Files are checked to be readable here; whether a certificate and its key
belong together is checked when the SSL context is built (``tls.py``), before a config is used.

* ``tls:`` (clients to the proxy): ``cert_file``, ``key_file``, ``ca_file`` (set: clients must
  present a certificate it signed), ``min_version`` (TLSv1.2), ``ciphers`` (OpenSSL's syntax,
  for TLS 1.2), ``handshake_timeout`` (ms).
* ``server_tls:`` / ``sentinel_tls:`` (the proxy to servers / sentinels): ``ca_file`` (else the
  system's CAs), ``cert_file`` + ``key_file`` (mutual TLS), ``server_name`` (SNI and the name
  verified; else the server's host), ``verify`` (true), ``min_version``.
* ``users:`` NAME: ``password`` (or ``passwords``, ``password_sha256``, ``nopass``),
  ``commands``, ``keys``, ``channels`` (acl.py).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from proxy import acl

TLS_VERSIONS = ("TLSv1.2", "TLSv1.3")
DEFAULT_HANDSHAKE_TIMEOUT_MS = 10000


@dataclass(frozen=True, slots=True)
class TlsConfig:
    """TLS for the clients of one pool or listener (its ``listen`` serves TLS only)."""

    cert_file: str
    key_file: str
    ca_file: str | None = None  # set: client certificates are required and checked against it
    min_version: str = "TLSv1.2"
    ciphers: str | None = None
    handshake_timeout_ms: int = DEFAULT_HANDSHAKE_TIMEOUT_MS


@dataclass(frozen=True, slots=True)
class ServerTlsConfig:
    """TLS from the proxy to a pool's servers (or a sentinel pool's sentinels)."""

    ca_file: str | None = None  # None: the system's trusted CAs
    cert_file: str | None = None  # with key_file: the proxy's client certificate (mutual TLS)
    key_file: str | None = None
    server_name: str | None = None  # SNI and the name checked; None: each server's host
    verify: bool = True
    min_version: str = "TLSv1.2"


TLS_KEYS = {"cert_file", "key_file", "ca_file", "min_version", "ciphers", "handshake_timeout"}
SERVER_TLS_KEYS = {"ca_file", "cert_file", "key_file", "server_name", "verify", "min_version"}
USER_KEYS = {"password", "passwords", "password_sha256", "nopass", "commands", "keys", "channels"}


def _file(key: str, value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError(f"key '{key}': expected a file path, got {value!r}")
    if not os.path.isfile(value) or not os.access(value, os.R_OK):
        raise ValueError(f"key '{key}': cannot read {value!r}")
    return os.path.abspath(value)


def _unknown(body: dict[Any, Any], known: set[str]) -> None:
    for key in body:
        if key not in known:
            raise ValueError(f"unknown key '{key}'; known: {', '.join(sorted(known))}")


def _version(body: dict[Any, Any]) -> str:
    version = body.get("min_version", "TLSv1.2")
    if version not in TLS_VERSIONS:
        raise ValueError(f"key 'min_version': one of {', '.join(TLS_VERSIONS)}, got {version!r}")
    return str(version)


def parse_tls(body: Any) -> TlsConfig:
    """A ``tls:`` mapping (clients to the proxy)."""
    if not isinstance(body, dict):
        raise ValueError("expected a mapping with cert_file and key_file")
    _unknown(body, TLS_KEYS)
    for key in ("cert_file", "key_file"):
        if key not in body:
            raise ValueError(f"key '{key}': missing")
    ciphers = body.get("ciphers")
    if ciphers is not None and (not isinstance(ciphers, str) or not ciphers):
        raise ValueError(f"key 'ciphers': expected an OpenSSL cipher string, got {ciphers!r}")
    timeout = body.get("handshake_timeout", DEFAULT_HANDSHAKE_TIMEOUT_MS)
    if isinstance(timeout, bool) or not isinstance(timeout, int) or timeout <= 0:
        raise ValueError(f"key 'handshake_timeout': expected milliseconds > 0, got {timeout!r}")
    return TlsConfig(
        cert_file=_file("cert_file", body["cert_file"]),
        key_file=_file("key_file", body["key_file"]),
        ca_file=_file("ca_file", body["ca_file"]) if body.get("ca_file") is not None else None,
        min_version=_version(body),
        ciphers=ciphers,
        handshake_timeout_ms=timeout,
    )


def parse_server_tls(body: Any) -> ServerTlsConfig:
    """A ``server_tls:`` or ``sentinel_tls:`` mapping (``true``: system CAs, verified)."""
    if body is True:
        return ServerTlsConfig()
    if not isinstance(body, dict):
        raise ValueError("expected true or a mapping (ca_file, cert_file, key_file, server_name, verify)")
    _unknown(body, SERVER_TLS_KEYS)
    if ("cert_file" in body) != ("key_file" in body):
        raise ValueError("key 'cert_file' and key 'key_file' go together (mutual TLS)")
    verify = body.get("verify", True)
    if not isinstance(verify, bool):
        raise ValueError(f"key 'verify': expected true or false, got {verify!r}")
    name = body.get("server_name")
    if name is not None and (not isinstance(name, str) or not name):
        raise ValueError(f"key 'server_name': expected a host name, got {name!r}")

    def optional(key: str) -> str | None:
        return _file(key, body[key]) if body.get(key) is not None else None

    return ServerTlsConfig(
        ca_file=optional("ca_file"),
        cert_file=optional("cert_file"),
        key_file=optional("key_file"),
        server_name=name,
        verify=verify,
        min_version=_version(body),
    )


def _strings(name: str, key: str, value: Any) -> list[str]:
    if isinstance(value, str):
        value = value.split()
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ValueError(f"user '{name}': key '{key}': expected a list of strings")
    return list(value)


def parse_users(body: Any) -> tuple[acl.User, ...]:
    """A ``users:`` mapping: NAME -> {password..., commands, keys, channels}."""
    if not isinstance(body, dict) or not body:
        raise ValueError("expected a mapping of user names")
    users = []
    for raw_name, spec in body.items():
        name = str(raw_name)
        if not name or any(c.isspace() for c in name):
            raise ValueError(f"user {raw_name!r}: a user name is one word")
        if not isinstance(spec, dict):
            raise ValueError(f"user '{name}': expected a mapping (password, commands, keys, channels)")
        for key in spec:
            if key not in USER_KEYS:
                raise ValueError(f"user '{name}': unknown key '{key}'; known: {', '.join(sorted(USER_KEYS))}")
        digests = [acl.digest(str(p)) for p in _passwords(name, spec)]
        for hexed in _strings(name, "password_sha256", spec.get("password_sha256", [])):
            try:
                raw = bytes.fromhex(hexed)
            except ValueError:
                raw = b""
            if len(raw) != 32:
                raise ValueError(f"user '{name}': key 'password_sha256': expected 64 hex digits")
            digests.append(raw)
        nopass = spec.get("nopass", False)
        if not isinstance(nopass, bool):
            raise ValueError(f"user '{name}': key 'nopass': expected true or false")
        if not digests and not nopass:
            raise ValueError(
                f"user '{name}': no password: set 'password' or 'password_sha256' (or nopass: true)"
            )
        try:
            user = acl.make_user(
                name,
                passwords=digests,
                nopass=nopass,
                commands=_strings(name, "commands", spec.get("commands", [])),
                keys=_strings(name, "keys", spec.get("keys", [])),
                channels=_strings(name, "channels", spec.get("channels", [])),
            )
        except acl.RuleError as exc:
            raise ValueError(f"user '{name}': {exc}") from None
        users.append(user)
    return tuple(users)


def _passwords(name: str, spec: dict[Any, Any]) -> list[str]:
    out = []
    if "password" in spec:
        value = spec["password"]
        if not isinstance(value, (str, int)) or isinstance(value, bool) or value == "":
            raise ValueError(f"user '{name}': key 'password': expected a string")
        out.append(str(value))
    if "passwords" in spec:
        out += _strings(name, "passwords", spec["passwords"])
    return out
