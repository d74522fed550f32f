"""Store URLs: ``sqlite:///relative.sqlite``, ``sqlite:////absolute/path.sqlite`` and
``postgresql://user[:password]@host[:port]/database[?schema=name]``.

The SQLite forms are SQLAlchemy's, so a URL that already names the app's database reads the
same here; a ``+driver`` suffix (``postgresql+psycopg2://``) is accepted and ignored for the
same reason.  Parsing does no I/O: a bad URL is refused when the configuration is read, with
the variable named, not when the first finding is written.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal
from urllib.parse import parse_qs, quote, unquote, urlencode, urlsplit

from otel_apm.config import ConfigError

Backend = Literal["sqlite", "postgresql"]

ACCEPTS = "sqlite:///path/to/file.sqlite or postgresql://user@host:5432/database[?schema=name]"
_SCHEMA_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}")
_USER_PASSWORD = re.compile(r"(://[^/@:]*):[^/@]*@")
_PASSWORD_PARAMETER = re.compile(r"([?&]password=)[^&]*", re.IGNORECASE)


@dataclass(frozen=True)
class StoreURL:
    backend: Backend
    # sqlite: the file; postgresql: the libpq connection URL without our own parameters
    target: str
    # postgresql: the schema holding the tables (created when missing); sqlite: ""
    schema: str = ""

    def __str__(self) -> str:
        """The URL without its password, for logs and error messages."""
        if self.backend == "sqlite":
            return f"sqlite:///{self.target}"
        parts = urlsplit(self.target)
        host = parts.hostname or ""
        netloc = f"{parts.username}@{host}" if parts.username else host
        if parts.port:
            netloc += f":{parts.port}"
        suffix = f"?schema={self.schema}" if self.schema != "public" else ""
        return f"postgresql://{netloc}{parts.path}{suffix}"


def _without_password(url: str) -> str:
    """The URL as an error message may show it: a malformed URL can still hold a password, in
    its user part or as libpq's ``password`` parameter."""
    url = _USER_PASSWORD.sub(r"\1:***@", url)
    return _PASSWORD_PARAMETER.sub(r"\1***", url)


def parse_store_url(url: str, source: str = "APM_STORE_URL") -> StoreURL:
    """The store a URL names; ConfigError naming ``source`` when it names none."""

    def refuse(why: str) -> ConfigError:
        return ConfigError(f"{source}={_without_password(url)!r}: {why}; expected {ACCEPTS}")

    scheme, sep, rest = url.strip().partition("://")
    scheme = scheme.lower().split("+", 1)[0]
    if not sep:
        raise refuse("not a URL")
    if scheme == "sqlite":
        if not rest.startswith("/") or rest == "/" or "?" in rest:
            raise refuse("a SQLite URL names a file after three slashes")
        path = unquote(rest[1:])
        if path == ":memory:":
            raise refuse("an in-memory database would not survive the process")
        return StoreURL("sqlite", path)
    if scheme in ("postgresql", "postgres"):
        parts = urlsplit("postgresql://" + rest)
        try:
            parts.port  # noqa: B018 - raises on a malformed port
        except ValueError:
            raise refuse("the port is not a number") from None
        if not parts.hostname and "host" not in parse_qs(parts.query):
            raise refuse("no host")
        if parts.path in ("", "/"):
            raise refuse("no database")
        query = parse_qs(parts.query, keep_blank_values=True)
        schema = query.pop("schema", ["public"])[-1]
        if not _SCHEMA_NAME.fullmatch(schema):
            raise refuse(f"schema {schema!r} is not a plain identifier")
        # libpq decodes %XX but not "+"; and a URL without a host keeps its "//"
        libpq_query = urlencode(query, doseq=True, quote_via=quote)
        target = f"postgresql://{parts.netloc}{parts.path}" + (f"?{libpq_query}" if libpq_query else "")
        return StoreURL("postgresql", target, schema)
    raise refuse(f"unknown scheme {scheme!r}")
