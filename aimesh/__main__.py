"""aimesh: run the whole mesh on this machine, and everything around it.

Each command is declared once, in main()'s parser, with its help (`bin/aimesh --help` lists
them). A user's mistake ends in one line that says what to do, never a traceback."""
from __future__ import annotations

import argparse
import importlib
import os
import re
import subprocess
import sys
import time

# Only modules that import nothing generated: the rest (web, mesh, ... import the services' kit,
# which imports the stubs) are imported inside the commands, after main() has generated them.
from . import codegen, models, paths, topology


def cmd_up(args) -> int:
    from .mesh import Mesh, Refused, StartFailed
    topo = topology.load()
    mesh = Mesh(topo, paths.state_dir())
    started = time.monotonic()
    if not all(models.is_current(a.name) for a in models.ARTIFACTS) and build_models():
        return 1
    print(f"aimesh: starting the mesh (state in {mesh.state_dir})")
    try:
        mesh.up(demo=not args.no_demo, with_traces=args.traces)
    except (StartFailed, Refused) as failure:
        print(f"aimesh: {failure}", file=sys.stderr)
        return 1
    gateway = f"127.0.0.1:{topo.gateway.edge_port}"
    if not args.no_demo:
        from . import demo
        print("aimesh: indexing the demo catalog (first run only)...")
        indexed = demo.seed_catalog(gateway)
        if indexed:
            print(f"  indexed {indexed} MovieLens titles")
        token = demo.login(gateway, "alice@demo.aimesh")
    print(f"aimesh: up in {time.monotonic() - started:.1f} s\n")
    print(f"  page:            http://{gateway}/")
    print(f"  gateway (gRPC):  {gateway}")
    print(f"  Envoy admin:     http://127.0.0.1:{topo.gateway.admin_port}/")
    if args.traces:
        from . import traces
        print(f"  traces (Phoenix): {traces.ui(topo.infra)}/  (aimesh logs --trace ID: one trace's log lines)")
    if "prometheus" in mesh.supervisor.running():
        print(f"  Prometheus:      http://127.0.0.1:{topo.infra.prometheus_port}/  (alerts: /alerts)")
    print(f"  logs:            {mesh.supervisor.log_dir}")
    print("  live view:       bin/aimesh top")
    from . import overrides
    for line in overrides.load(mesh.state_dir).lines():   # kept from before `down`: say so
        print(f"  in force:        {line}  (aimesh fault clear / canary abort)")
    if not args.no_demo:
        from services.user.demo import ACCOUNTS, PASSWORD
        accounts = ", ".join(f"{email} ({role if role == 'admin' else tier})"
                             for email, _, tier, role in ACCOUNTS)
        print(f"  demo accounts:   {accounts} - password {PASSWORD}\n")
        print(f"  export TOKEN={token}")
        print(f"  grpcurl -plaintext {gateway} list")
        print(f'  grpcurl -plaintext -H "authorization: Bearer $TOKEN" {gateway} '
              f"aimesh.user.v1.UserService/GetProfile")
    else:
        print("  accounts:        none made for you; the first admin: bin/aimesh user first-admin EMAIL")
    return 0


def cmd_down(args) -> int:
    from .mesh import Mesh
    Mesh(topology.load(), paths.state_dir()).down()
    return 0


def cmd_apply(args) -> int:
    import asyncio

    from . import envoy, streams
    topo = topology.load()
    if not envoy.apply_routes(topo, paths.state_dir()):
        print("aimesh: listeners or clusters changed too; restart with `aimesh down` and `aimesh up`",
              file=sys.stderr)
        return 2
    print("aimesh: routes applied (Envoy picks them up live)")
    changed = asyncio.run(streams.apply(topo, paths.state_dir()))
    print(f"aimesh: stream limits applied in place ({', '.join(changed) or 'none changed'})")
    return 0


def cmd_status(args) -> int:
    from . import overrides
    from .mesh import Mesh
    status = Mesh(topology.load(), paths.state_dir()).status()
    for name, state in status.items():
        print(f"  {name:<14} {state}")
    for line in overrides.load(paths.state_dir()).lines():   # set at run time, on top of the topology
        print(f"  {line}")
    if status.get("envoy", "").startswith("running"):
        from .top import slo_summary
        print("\n".join(slo_summary(topology.load())))
    return 0 if all(s.startswith("running") for s in status.values()) else 3


def cmd_fault(args) -> int:
    from services.kit.retention import seconds

    from . import overrides
    from .mesh import Refused
    topo = topology.load()
    if args.target == "clear":
        def edit(current):
            return current.without_faults(args.only or "")
    else:
        if args.only:
            raise Refused(f"unexpected {args.only!r}: `aimesh fault clear [TARGET]` names a target")
        try:
            fault = overrides.fault(topo, args.target, delay_s=seconds(args.delay) if args.delay else 0.0,
                                    abort=args.abort or "", percent=args.percent, listener=args.listener or "",
                                    caller=args.caller or "", version=args.version or "",
                                    model=args.model or "")
        except ValueError as mistake:
            raise Refused(str(mistake)) from None

        def edit(current):
            return current.with_fault(fault)
    now = overrides.change(paths.state_dir(), topo, edit)
    print("\n".join(f"  {line}" for line in now.lines() if line.startswith("fault"))
          or "  no faults", flush=True)
    return 0


def cmd_start(args) -> int:
    from .mesh import Mesh
    Mesh(topology.load(), paths.state_dir()).start(args.name)
    return 0


def cmd_stop(args) -> int:
    from .mesh import Mesh
    Mesh(topology.load(), paths.state_dir()).stop(args.name, kill=args.kill)
    return 0


def cmd_logs(args) -> int:
    from .mesh import Mesh, Refused
    from .supervisor import Supervisor
    if args.trace:
        if args.name:
            raise Refused("give a component or --trace, not both")
        if not re.fullmatch(r"[0-9a-f]{32}", args.trace.lower()):   # a part of one would match others
            raise Refused(f"a trace id is 32 hex digits (as in a traceparent), not {args.trace!r}")
        # Phoenix's own log names a trace only when someone looked it up there: not the trace's.
        lines = [(c, line) for c, line in Supervisor(paths.state_dir()).of_trace(args.trace.lower())
                 if c != "phoenix"]
        print("\n".join(f"{component:<20} {line}" for component, line in lines)
              or f"no log line names trace {args.trace}")
        return 0
    if not args.name:
        raise Refused("give a component (postgres, nats, triton, envoy, an instance) or --trace ID")
    Mesh(topology.load(), paths.state_dir()).component(args.name)   # refuses an unknown name
    print(Supervisor(paths.state_dir()).tail(args.name, args.lines))
    return 0


def cmd_token(args) -> int:
    from . import demo
    topo = topology.load()
    print(demo.login(f"127.0.0.1:{topo.gateway.edge_port}", args.email, args.password))
    return 0


def cmd_audit(args) -> int:
    import asyncio

    from . import audit, infra
    topo = topology.load()

    async def read():
        bus = await infra.events(topo, paths.state_dir(), "aimesh-audit")
        return await audit.decisions(bus.connection, args.user_id)
    found, first = asyncio.run(read())
    limits = topo.retention.streams.get("AI_DECISIONS")
    print(f"aimesh: {audit.horizon(first, limits.max_age_s if limits else None)}", file=sys.stderr)
    if found:
        print(audit.lines(found))
    else:
        print(f"aimesh: no decision in the trail is for {args.user_id}", file=sys.stderr)
    return 0


def _lazy(module: str, name: str):
    """A command implemented in aimesh.<module>, imported when it runs (after codegen)."""
    def run(args) -> int:
        return getattr(importlib.import_module(f"aimesh.{module}"), name)(args)
    return run


def cmd_gen(args) -> int:
    print("generated" if codegen.generate(force=args.force) else "stubs are current")
    if args.baseline:
        codegen.update_baseline()
        print(f"accepted the contracts as the breaking-change baseline ({codegen.BASELINE})")
    return 0


def cmd_web(args) -> int:
    from . import web
    try:
        print(f"built {paths.WEB_DIST}" if web.build(force=args.force) else "the page is current")
    except RuntimeError as failure:
        print(f"aimesh: {failure}", file=sys.stderr)
        return 1
    return 0


def cmd_env(args) -> int:
    from services.kit.tls import GATEWAY, dns_name

    from . import certs
    topo = topology.load()
    print(f'export PATH="{paths.venv_bin("")}:$PATH"')
    if topo.identity.mtls:
        authority = certs.Authority(paths.state_dir())
        bundle = authority.bundle(certs.OPERATOR)
        print(f'export AIMESH_CA="{authority.trust_bundle}" AIMESH_CERT="{bundle}"')
        print("# as the operator, on the east-west listener (or a service's own port, with its name):")
        print(f"#   grpcurl -cacert $AIMESH_CA -cert $AIMESH_CERT -key $AIMESH_CERT "
              f"-servername {dns_name(GATEWAY)} 127.0.0.1:{topo.gateway.mesh_port} list")
    return 0


def cmd_certs_status(args) -> int:
    from . import certs
    topo = topology.load()
    authority = certs.Authority(paths.state_dir())
    print(f"CA: {authority.trust_bundle}")
    for workload in topo.workloads():
        status = authority.status(workload)
        if status is None:
            print(f"  {workload:<10} none yet (made by `aimesh up`)")
            continue
        left = status.remaining.total_seconds()
        state = "EXPIRED" if left <= 0 else ("renewal due" if status.due else "ok")
        print(f"  {workload:<10} expires {status.not_after:%Y-%m-%d %H:%M:%S}Z, "
              f"in {left / 3600:.1f} h of {status.lifetime.total_seconds() / 3600:g} h: {state}")
    return 0


def cmd_certs_issue(args) -> int:
    """Certificates for a deployment (docker compose mounts deploy/compose/certs/<workload>),
    from the CA in the state dir, or your own CA's ca.pem and ca.key in --ca."""
    import datetime
    from pathlib import Path

    from . import certs
    topo = topology.load()
    authority = certs.Authority(paths.state_dir(), folder=Path(args.ca) if args.ca else None)
    lifetime = datetime.timedelta(seconds=topo.identity.certificate_lifetime_s)
    for workload in topo.workloads():
        authority.export(workload, lifetime, Path(args.folder) / workload)
    print(f"aimesh: certificates for {', '.join(topo.workloads())} in {args.folder} "
          f"(valid {lifetime}); issue again before they expire, then `docker compose kill -s HUP nats`")
    return 0


def cmd_certs_rotate(args) -> int:
    """New certificates for every workload now; every process picks its own up without a
    restart (see aimesh/certs.py)."""
    from . import certs
    topo = topology.load()
    renewed = certs.Authority(paths.state_dir()).ensure(
        topo.workloads(), topo.identity.certificate_lifetime_s, force=True)
    certs.tell_readers(paths.state_dir(), renewed)
    print(f"aimesh: new certificates for {', '.join(renewed)}")
    return 0


def build_models(names: list[str] | None = None, force: bool = False) -> int:
    print("aimesh: model artifacts (each built once per content key)", flush=True)
    try:
        models.build(names, force=force, progress=lambda line: print(f"  {line}", flush=True))
    except models.BuildFailed as failure:
        print(f"aimesh: {failure}", file=sys.stderr)
        return 1
    return 0


def cmd_models_build(args) -> int:
    return build_models(args.names or None, args.force)


def cmd_models_list(args) -> int:
    for artifact in models.ARTIFACTS:
        state = "built" if models.is_current(artifact.name) else "not built"
        print(f"  {artifact.name:<16} {models.key(artifact)}  {state:<10} {models.output(artifact.name)}")
    return 0


def cmd_deploy_render(args) -> int:
    from . import deploy
    written = deploy.write()
    print("\n".join(f"  wrote {path}" for path in written) or "deploy files are current")
    return 0


def cmd_deploy_lock(args) -> int:
    from . import deploy
    deploy.lock(names=args.names)
    return 0


CHECKS = (("ruff", "check", "--quiet", "."), ("mypy",))


def cmd_test(args) -> int:
    from . import browser, prometheus, web
    codegen.generate()
    try:
        web.build()
    except RuntimeError as failure:
        print(f"aimesh: the page: {failure}", file=sys.stderr)
        return 1
    if not prometheus.install():   # the metrics tests need it; the others run without
        print(f"aimesh: {prometheus.INSTALL_HINT}", file=sys.stderr)
    try:
        browser.install()    # the page's tests run in Debian's headless chromium
    except (RuntimeError, subprocess.SubprocessError) as missing:   # the other tests still run
        print(f"aimesh: {missing}", file=sys.stderr)
    for check in CHECKS:   # lint and type check first: seconds, before minutes of tests
        if subprocess.run([sys.executable, "-m", *check], cwd=paths.ROOT).returncode:
            print(f"aimesh: `{' '.join(check)}` found problems (settings in pyproject.toml)",
                  file=sys.stderr)
            return 1
    if build_models():   # here, not inside the test session's `up` and its timeout
        return 1
    os.execv(sys.executable, [sys.executable, "-m", "pytest", *args.pytest_args])
    return 1


def cmd_load(args) -> int:
    """The load test (and soak): bench/load.py."""
    args.name = "load"
    return cmd_bench(args)


def cmd_bench(args) -> int:
    """A benchmark in this environment: bench/<name>.py, with the stubs on its path."""
    script = paths.ROOT / "bench" / f"{args.name}.py"
    if not script.exists():
        names = sorted(p.stem for p in script.parent.glob("*.py"))
        print(f"aimesh: no benchmark {args.name!r}; there are {', '.join(names)}", file=sys.stderr)
        return 2
    env = {**os.environ, "PATH": f"{paths.venv_bin('')}:{os.environ.get('PATH', '')}",
           "PYTHONPATH": f"{paths.ROOT}:{paths.GEN / 'python'}"}
    os.execve(sys.executable, [sys.executable, str(script), *args.pytest_args], env)
    return 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="aimesh", description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    up = commands.add_parser("up", help="start the whole mesh and seed demo data")
    up.add_argument("--no-demo", action="store_true", help="no demo accounts or catalog")
    up.add_argument("--traces", action="store_true", help="also Phoenix, the trace backend "
                    "(~420 MB, ~20 s; its virtualenv is built the first time)")
    up.set_defaults(run=cmd_up)
    commands.add_parser("down", help="stop the whole mesh").set_defaults(run=cmd_down)
    commands.add_parser("status", help="which components run").set_defaults(run=cmd_status)
    commands.add_parser("apply", help="apply the topology's routes (canary weights) live").set_defaults(
        run=cmd_apply)
    fault = commands.add_parser(
        "fault", help="inject a fault on a service's (or Triton's) routes, live; `fault clear` removes",
        description="Envoy delays and/or aborts a share of the calls on every route of TARGET. "
                    "One fault per target: a new one replaces it. Kept across `down`/`up` until cleared.")
    fault.add_argument("target", help="a service, triton, or `clear` (every fault, or only ONLY's)")
    fault.add_argument("only", nargs="?", help="with clear: only this target's fault")
    fault.add_argument("--delay", help="e.g. 200ms, 6s")
    fault.add_argument("--abort", help="a gRPC status name, e.g. UNAVAILABLE")
    fault.add_argument("--percent", type=float, default=100.0, help="share of calls (default 100)")
    fault.add_argument("--listener", choices=("edge", "mesh"), help="only on one listener (default both)")
    fault.add_argument("--caller", help="only east-west calls from this workload (e.g. chat)")
    fault.add_argument("--version", help="only calls bound for this version (e.g. v2)")
    fault.add_argument("--model", help="triton: only calls for this model (e.g. recommender)")
    fault.set_defaults(run=cmd_fault)
    canary = commands.add_parser(
        "canary", help="roll a version out step by step, rolled back on its own when it hurts",
        description="aimesh canary SERVICE --to VERSION [...]: at each step the version gets that "
                    "share of the calls; its errors and fallbacks (and p99, at the step's end) are "
                    "compared with the stable version's and the topology's SLOs: promoted, or "
                    "rolled back to 0% at once. aimesh canary status [SERVICE] shows the decisions; "
                    "aimesh canary abort SERVICE gives the topology's weights back.")
    canary.add_argument("action", help="a canary service (e.g. recommend), status, or abort")
    canary.add_argument("service", nargs="?", help="with status or abort: the service")
    canary.add_argument("--to", default="v2", help="the version rolled out (default v2)")
    canary.add_argument("--steps", default="10,25,50,100", help="percent at each step")
    canary.add_argument("--interval", default="30s", help="how long each step lasts (e.g. 30s)")
    canary.add_argument("--min-calls", type=int, default=50,
                        help="calls the version must get in a step before it is judged")
    canary.set_defaults(run=_lazy("canary", "cmd_canary"))
    top = commands.add_parser("top", help="a live view of the running mesh (Ctrl-C leaves)")
    top.add_argument("--once", action="store_true", help="print one frame and exit")
    top.add_argument("--interval", type=float, default=1.0, help="seconds between refreshes")
    top.set_defaults(run=_lazy("top", "cmd_top"))
    start = commands.add_parser("start", help="start one stopped component of a running mesh")
    start.add_argument("name", help="postgres, nats, triton, envoy, or a service instance")
    start.set_defaults(run=cmd_start)
    stop = commands.add_parser("stop", help="stop one component of a running mesh")
    stop.add_argument("name", help="postgres, nats, triton, envoy, or a service instance")
    stop.add_argument("--kill", action="store_true", help="SIGKILL, as a crash would")
    stop.set_defaults(run=cmd_stop)
    logs = commands.add_parser("logs", help="the tail of a component's log, or one trace's lines")
    logs.add_argument("name", nargs="?", help="postgres, nats, triton, envoy, or a service instance")
    logs.add_argument("--trace", help="every component's log lines of this trace id (32 hex digits)")
    logs.add_argument("-n", "--lines", type=int, default=50)
    logs.set_defaults(run=cmd_logs)
    token = commands.add_parser("token", help="log in a demo account and print its token")
    token.add_argument("email", nargs="?", default="alice@demo.aimesh")
    token.add_argument("--password", default="aimesh-demo")
    token.set_defaults(run=cmd_token)
    audit = commands.add_parser("audit", help="the AI decisions made for a user (admin)")
    audit.add_argument("user_id")
    audit.set_defaults(run=cmd_audit)
    as_admin = argparse.ArgumentParser(add_help=False)   # options of every admin command
    as_admin.add_argument("--admin", default="admin@demo.aimesh", help="the admin account's email")
    as_admin.add_argument("--admin-password", default="aimesh-demo")
    user = commands.add_parser("user", help="create accounts, set tier and role (admin)").add_subparsers(
        dest="user_command", required=True)
    create = user.add_parser("create", parents=[as_admin], help="create an account")
    create.add_argument("email")
    create.add_argument("--password", help="at least 8 characters (default: a random one, printed)")
    create.add_argument("--name", help="display name (default: the email's local part)")
    create.add_argument("--tier", choices=("free", "pro"), default="free")
    create.add_argument("--role", choices=("user", "admin"), default="user")
    create.set_defaults(run=_lazy("admin", "cmd_user_create"))
    set_access = user.add_parser("set", parents=[as_admin],
                                 help="set an account's tier and/or role (in its next token)")
    set_access.add_argument("email")
    set_access.add_argument("--tier", choices=("free", "pro"))
    set_access.add_argument("--role", choices=("user", "admin"))
    set_access.set_defaults(run=_lazy("admin", "cmd_user_set"))
    first = user.add_parser("first-admin", help="make the first admin of a mesh that has none "
                                                "(without demo data), in user-svc's database")
    first.add_argument("email", help="an account to make admin, or one to create as admin")
    first.add_argument("--password", help="for a new account (default: a random one, printed)")
    first.add_argument("--name", help="for a new account: display name (default: the email's local part)")
    first.set_defaults(run=_lazy("admin", "cmd_user_first_admin"))
    keys = commands.add_parser("keys", help="user-svc's signing keys (admin)").add_subparsers(
        dest="keys_command", required=True)
    keys.add_parser("rotate", parents=[as_admin],
                    help="add a signing key: published now, signs once the gateway has it, "
                         "the old one leaves after the token lifetime").set_defaults(
        run=_lazy("admin", "cmd_keys_rotate"))
    gen = commands.add_parser("gen", help="generate stubs and the descriptor set")
    gen.add_argument("--force", action="store_true", help="regenerate even when current")
    gen.add_argument("--baseline", action="store_true",
                     help="also accept the contracts as the buf breaking baseline")
    gen.set_defaults(run=cmd_gen)
    page = commands.add_parser("web", help="build the browser page (web/dist)")
    page.add_argument("--force", action="store_true", help="rebuild even when current")
    page.set_defaults(run=cmd_web)
    certs_cmd = commands.add_parser("certs", help="workload certificates").add_subparsers(
        dest="certs_command", required=True)
    certs_cmd.add_parser("status", help="each workload's certificate and when it expires"
                         ).set_defaults(run=cmd_certs_status)
    certs_cmd.add_parser("rotate", help="new certificates for every workload, now, no restart"
                         ).set_defaults(run=cmd_certs_rotate)
    issue = certs_cmd.add_parser("issue", help="certificates for a deployment, one folder per "
                                 "workload (tls.crt, tls.key, ca.crt)")
    issue.add_argument("folder", help="e.g. deploy/compose/certs")
    issue.add_argument("--ca", help="a folder with your CA's ca.pem and ca.key (default: the "
                       "state dir's CA, made if missing)")
    issue.set_defaults(run=cmd_certs_issue)
    commands.add_parser("env", help="print shell exports: eval \"$(bin/aimesh env)\"").set_defaults(
        run=cmd_env)
    models = commands.add_parser("models", help="model artifacts for Triton").add_subparsers(
        dest="models_command", required=True)
    build = models.add_parser("build", help="build the artifacts that are not current")
    build.add_argument("names", nargs="*", help="only these artifacts (and what they need)")
    build.add_argument("--force", action="store_true", help="rebuild the named ones even if current")
    build.set_defaults(run=cmd_models_build)
    models.add_parser("list", help="artifacts, keys, built or not").set_defaults(run=cmd_models_list)
    swap = models.add_parser("swap", help="serve another version in a version's place, live: load, "
                             "warm up, move the callers, unload the old (aimesh/hotswap.py)")
    swap.add_argument("model", help="e.g. recommender")
    swap.add_argument("--from", dest="old", required=True, help="the served version to replace")
    swap.add_argument("--to", dest="new", required=True, help="the version to serve in its place")
    swap.set_defaults(run=_lazy("hotswap", "cmd_models_swap"))
    deploy = commands.add_parser("deploy", help="compose and Kubernetes files").add_subparsers(
        dest="deploy_command", required=True)
    deploy.add_parser("render", help="write docker-compose.yml and deploy/ from the topology"
                      ).set_defaults(run=cmd_deploy_render)
    lock = deploy.add_parser("lock", help="hash-pin the images' requirements into "
                             "deploy/requirements/*.txt (needs the package index)")
    lock.add_argument("names", nargs="*", help="only these locks (services, codegen, triton, "
                      "build, data)")
    lock.set_defaults(run=cmd_deploy_lock)
    commands.add_parser("test", help="run the tests (pytest arguments pass through)").set_defaults(
        run=cmd_test)
    bench = commands.add_parser("bench", help="run a benchmark, bench/NAME.py (arguments pass through)")
    bench.add_argument("name")
    bench.set_defaults(run=cmd_bench)
    commands.add_parser("load", help="load test through the gateway, stepped up until an SLO "
                        "breaks; --soak for a soak (arguments pass through: --help)"
                        ).set_defaults(run=cmd_load)
    args, extra = parser.parse_known_args(argv)
    if extra and args.command not in ("test", "bench", "load"):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    args.pytest_args = extra
    if args.command != "gen":
        # The runner imports the services' kit, which imports the generated stubs: on a fresh
        # clone they must exist before anything else (a no-op when current).
        codegen.generate()
    import grpc

    from .mesh import Refused
    try:
        return args.run(args)
    except Refused as mistake:
        print(f"aimesh: {mistake}", file=sys.stderr)
        return 2
    except grpc.RpcError as refused:   # a call through the gateway (token, user, keys) said no
        print(f"aimesh: {refused.code().name}: {refused.details()}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BrokenPipeError:        # `aimesh certs status | head`: the reader left; not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(0)
