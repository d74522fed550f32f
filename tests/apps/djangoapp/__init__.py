"""A minimal Django project, configured in code, that the workload tests serve with a real WSGI server.

One process can configure Django once, so both databases are configured up front under their own
aliases ("postgresql": psycopg2, "mariadb": PyMySQL standing in for mysqlclient) and a router
sends every query to the one a test chose with :func:`use_database`.  Connections are not kept
between requests (CONN_MAX_AGE 0), so a test that points an alias at its own schema or database
is seen by the very next request, on whichever thread serves it.
"""

from __future__ import annotations

from typing import Any

DATABASE_ALIASES = ("postgresql", "mariadb")

_active = {"alias": "postgresql"}


class Router:
    """Every read and write goes to the database the running test chose."""

    def db_for_read(self, model: Any, **hints: Any) -> str:
        return _active["alias"]

    def db_for_write(self, model: Any, **hints: Any) -> str:
        return _active["alias"]


def use_database(alias: str) -> None:
    assert alias in DATABASE_ALIASES, alias
    _active["alias"] = alias


def setup(postgres_user: str = "postgres") -> None:
    """Configure Django and load the app, once per process (later calls change nothing)."""
    import django
    from django.conf import settings

    if settings.configured:
        return
    import pymysql

    pymysql.install_as_MySQLdb()  # Django's MySQL backend imports MySQLdb
    settings.configure(
        DEBUG=False,
        SECRET_KEY="otel-apm-tests",
        ALLOWED_HOSTS=["127.0.0.1", "localhost"],
        ROOT_URLCONF="apps.djangoapp.urls",
        INSTALLED_APPS=["apps.djangoapp"],
        MIDDLEWARE=[],
        USE_TZ=True,
        TIME_ZONE="UTC",
        DATABASE_ROUTERS=["apps.djangoapp.Router"],
        DATABASES={
            # Django insists on a default; the router never sends anything to it.
            "default": {},
            "postgresql": {
                "ENGINE": "django.db.backends.postgresql",
                "HOST": "127.0.0.1",
                "PORT": "5432",
                "USER": postgres_user,
                "NAME": "test",
                "OPTIONS": {},
            },
            "mariadb": {
                "ENGINE": "django.db.backends.mysql",
                "HOST": "127.0.0.1",
                "PORT": "3306",
                "USER": "root",
                "NAME": "test",
                "OPTIONS": {},
            },
        },
        LOGGING_CONFIG=None,
    )
    django.setup()
