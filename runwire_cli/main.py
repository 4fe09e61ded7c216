"""The ``runwire`` command line.

``up`` starts the whole system on this machine (what ``make run`` calls) and
keeps it running; ``status`` shows each of its processes and their health;
``token`` mints a development JWT; ``chat`` and ``runs`` are a tiny client of
the WebSocket gateway; ``context mint`` gives operators and internal services
an attested ``UserContext`` for calling the gRPC APIs directly; ``admin
purge-user`` deletes everything kept of one user (:mod:`runwire_cli.admin`).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import signal
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from google.protobuf import json_format
from pydantic import ValidationError
from redis.exceptions import RedisError

from registry_service.settings import DatabaseSettings
from runwire.common.v1 import context_pb2
from runwire_cli import admin, devsecrets, state
from runwire_cli.client import chat, get_thread, list_runs, list_threads
from runwire_cli.cluster import MODULES, Cluster, ClusterConfig, LaunchError
from runwire_cli.health import Health, probe
from runwire_cli.questions import TerminalAnswerer
from runwire_cli.supervisor import RestartPolicy, Supervisor
from runwire_cli.tokens import mint_token
from runwire_common.attestation import ContextAttestor
from runwire_common.errors import InvalidArgument, RunwireError
from runwire_common.ids import new_id

DEFAULT_URL = "ws://127.0.0.1:8080/ws"


def _gateway_url(folder: Path, explicit: str | None) -> str:
    if explicit:
        return explicit
    found = state.read(folder)
    for record in found.services if found else ():
        if record.kind == "gateway" and record.address:
            return f"ws://{record.address}/ws"
    return DEFAULT_URL


def _restart_policy(args: argparse.Namespace) -> RestartPolicy:
    return RestartPolicy(
        max_restarts=args.max_restarts,
        window_s=args.restart_window,
        backoff_s=args.restart_backoff,
        max_backoff_s=max(args.restart_backoff_max, args.restart_backoff),
    )


def _service_env(values: Sequence[tuple[str, str, str]]) -> dict[str, dict[str, str]]:
    env: dict[str, dict[str, str]] = {}
    for kind, name, value in values:
        env.setdefault(kind, {})[name] = value
    return env


def _print_ready(cluster: Cluster, folder: Path, jwt_secret: str) -> None:
    for proc in cluster.all():
        print(f"  {proc.name:<12} pid {proc.pid:<7} {proc.address}")
    token = mint_token(jwt_secret, "alice", ttl_s=24 * 3600)
    print(f"\nEvery process, its address and log: {state.path_in(folder)} (`runwire status` checks them).")
    print("\nRunwire is ready. WebSocket endpoint(s):")
    for url in cluster.gateway_urls():
        print(url)
    print("\nBrowser console (sign in with any user name):")
    for url in cluster.console_urls():
        print(url)
    print(f"\nDevelopment token for user 'alice' (24 h):\n{token}\n")
    print('Try:  .venv/bin/runwire chat --user alice "what is 12 * (3 + 4)?"')
    print("      .venv/bin/runwire token --user bob     # a token for another user")
    print("Press Ctrl-C to stop.\n", flush=True)


def cmd_up(args: argparse.Namespace) -> int:
    folder = devsecrets.data_dir(args.data_dir)
    try:
        policy = _restart_policy(args)
    except ValueError as exc:
        print(f"runwire up: {exc}", file=sys.stderr)
        return 2
    secrets_ = devsecrets.load_or_create(folder, rotate_attestation=True)
    config = ClusterConfig(
        data_dir=folder,
        attestation_keys=secrets_.attestation_keys,
        jwt_secret=secrets_.jwt_secret,
        replicas=args.replicas,
        gateway_port=args.gateway_port,
        database_url=args.database_url,
        redis_url=args.redis_url,
        grace_period_s=args.grace_period,
        service_env=_service_env(args.service_env),
    )
    cluster = Cluster(config)
    supervisor = Supervisor(cluster, policy=policy, on_change=lambda snapshot: state.write(folder, snapshot))

    # From here on Ctrl-C and SIGTERM only ask for a stop; the supervisor sees the
    # request within one poll and restarts nothing after it.
    stop = threading.Event()

    def request_stop(signum: int, _frame: object) -> None:
        stop.set()

    signal.signal(signal.SIGINT, request_stop)
    signal.signal(signal.SIGTERM, request_stop)
    print(f"starting Runwire ({args.replicas} replica(s) of each service; logs in {folder / 'logs'}) …")
    try:
        if supervisor.start(stop.is_set):
            _print_ready(cluster, folder, secrets_.jwt_secret)
            supervisor.supervise(stop.is_set)
        print("stopping (draining every service) …", flush=True)
        unclean = supervisor.stop()
    except LaunchError as exc:
        print(f"runwire up: {exc}; stopping every service", file=sys.stderr, flush=True)
        supervisor.stop()
        print("stopped.")
        return 1
    except BaseException:
        supervisor.stop()
        raise
    finally:
        state.remove(folder)
    print("stopped." if not unclean else f"stopped; unclean exits: {unclean}")
    return 0 if not unclean else 1


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _uptime(seconds: float) -> str:
    whole = int(seconds)
    if whole < 60:
        return f"{whole}s"
    if whole < 3600:
        return f"{whole // 60}m{whole % 60:02d}s"
    return f"{whole // 3600}h{whole % 3600 // 60:02d}m"


def cmd_status(args: argparse.Namespace) -> int:
    folder = devsecrets.data_dir(args.data_dir)
    found = state.read(folder)
    if found is None:
        print(f"runwire status: no `runwire up` is running from {folder}", file=sys.stderr)
        return 1
    if not _pid_alive(found.launcher_pid):
        print(
            f"runwire status: `runwire up` (pid {found.launcher_pid}) is gone; "
            f"{state.path_in(folder)} is stale",
            file=sys.stderr,
        )
        return 1
    now = time.time()
    print(f"{'SERVICE':<13} {'HEALTH':<12} {'PID':<8} {'ADDRESS':<22} {'UPTIME':<9} {'RESTARTS':<9} STATE")
    serving = True
    for record in found.services:
        running = record.pid is not None and record.address is not None
        health: Health = probe(record.kind, record.address) if record.address and running else "down"
        serving = serving and health == "SERVING"
        print(
            f"{record.name:<13} {health:<12} {record.pid or '-'!s:<8} {record.address or '-':<22} "
            f"{_uptime(now - record.started_at) if running else '-':<9} {record.restarts:<9} {record.state}"
        )
    given_up = [record for record in found.services if record.state == "given_up"]
    for record in given_up:
        print(f"\n{record.name} was given up after repeated crashes; see {record.log}")
    return 0 if serving else 1


def cmd_token(args: argparse.Namespace) -> int:
    found = devsecrets.require(devsecrets.data_dir(args.data_dir))
    try:
        token = mint_token(
            found.jwt_secret, args.user, ttl_s=args.ttl, tenant_id=args.tenant, roles=args.role
        )
    except ValueError as exc:
        print(f"runwire token: {exc}", file=sys.stderr)
        return 2
    print(token)
    return 0


def _client_token(args: argparse.Namespace) -> tuple[str, str]:
    folder = devsecrets.data_dir(args.data_dir)
    token = args.token or mint_token(devsecrets.require(folder).jwt_secret, args.user, ttl_s=600)
    return _gateway_url(folder, args.url), token


def cmd_chat(args: argparse.Namespace) -> int:
    url, token = _client_token(args)
    try:
        run_input = _input_object(args.input) if args.input is not None else None
        if run_input is None and args.message is None:
            raise RuntimeError("say something: give a message, or the whole input with --input")
        answerer = TerminalAnswerer(approve_all=args.yes)
        final = asyncio.run(
            chat(
                url,
                token,
                args.message or "",
                agent=args.agent,
                run_input=run_input,
                thread_id=args.thread,
                answer=answerer,
            )
        )
    except (OSError, RuntimeError) as exc:
        print(f"runwire chat: {exc}", file=sys.stderr)
        return 1
    if final["type"] == "agent_completed":
        print(f"\n{final['payload'].get('final_response', '')}")
        return 0
    return 1


def _input_object(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise RuntimeError(f"--input is not JSON: {exc}") from None
    if not isinstance(value, dict):
        raise RuntimeError("--input must be a JSON object")
    return value


def cmd_runs(args: argparse.Namespace) -> int:
    url, token = _client_token(args)
    try:
        runs = asyncio.run(list_runs(url, token, limit=args.limit))
    except (OSError, RuntimeError) as exc:
        print(f"runwire runs: {exc}", file=sys.stderr)
        return 1
    if not runs:
        print(f"no runs for {args.user}")
    for run in runs:
        print(
            f"{run['created_at']}  {run['run_id']}  {run['agent']:<10} {run['state']:<10} {run['thread_id']}"
        )
    return 0


def cmd_threads(args: argparse.Namespace) -> int:
    url, token = _client_token(args)
    try:
        if args.thread:
            reply = asyncio.run(get_thread(url, token, args.thread))
        else:
            threads = asyncio.run(list_threads(url, token, limit=args.limit))
    except (OSError, RuntimeError) as exc:
        print(f"runwire threads: {exc}", file=sys.stderr)
        return 1
    if args.thread:
        for message in reply["messages"]:
            text = message["content"] or json.dumps(message.get("tool_calls", []))
            print(f"{message['role']:>9}: {text}")
        return 0
    if not threads:
        print(f"no threads for {args.user}")
    for thread in threads:
        print(
            f"{thread['updated_at']}  {thread['thread_id']}  {thread['last_run_state'] or '-':<10} {thread['title']}"
        )
    return 0


def cmd_context_mint(args: argparse.Namespace) -> int:
    spec = args.keys or os.environ.get("RUNWIRE_ATTESTATION_KEYS")
    if not spec:
        spec = devsecrets.require(devsecrets.data_dir(args.data_dir)).attestation_keys
    try:
        attestor = ContextAttestor.from_spec(spec)
        ctx = context_pb2.UserContext(
            user_id=args.user,
            tenant_id=args.tenant or "",
            thread_id=args.thread_id or "",
            run_id=args.run_id or "",
            request_id=new_id("req"),
            roles=args.role,
        )
        minted = attestor.mint(ctx, ttl_s=args.ttl)
    except InvalidArgument as exc:
        print(f"runwire context mint: {exc.message}", file=sys.stderr)
        return 2
    if args.format == "base64":
        print(base64.b64encode(minted.SerializeToString()).decode())
    else:
        print(json_format.MessageToJson(minted, preserving_proto_field_name=True))
    return 0


def cmd_admin_purge_user(args: argparse.Namespace) -> int:
    try:
        database = (
            DatabaseSettings(database_url=args.database_url) if args.database_url else DatabaseSettings()
        )
    except ValidationError as exc:
        # The messages only: the error's text would quote the URL, password included.
        problems = "; ".join(str(error["msg"]) for error in exc.errors())
        print(f"runwire admin purge-user: --database-url: {problems}", file=sys.stderr)
        return 2
    try:
        outcome = asyncio.run(
            admin.purge_user(
                args.user,
                tenant_id=args.tenant or "",
                database=database,
                redis_url=args.redis_url or "",
                redis_key_prefix=args.redis_key_prefix,
                redis_cluster=args.redis_cluster,
                force=args.force,
                settle_s=args.settle,
            )
        )
    except (OSError, RunwireError, RedisError) as exc:
        print(f"runwire admin purge-user: {exc}", file=sys.stderr)
        return 1
    lines = admin.describe(
        outcome, user_id=args.user, tenant_id=args.tenant or "", redis=bool(args.redis_url)
    )
    print("\n".join(lines), file=sys.stdout if outcome.complete else sys.stderr)
    return 0 if outcome.complete else 1


def _service_setting(text: str) -> tuple[str, str, str]:
    kind, colon, setting = text.partition(":")
    name, equals, value = setting.partition("=")
    if not (colon and equals and name) or kind not in MODULES:
        raise argparse.ArgumentTypeError(
            f"expected SERVICE:NAME=VALUE with SERVICE one of {', '.join(MODULES)}"
        )
    return kind, name, value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="runwire", description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--data-dir", help="local data folder (default .runwire or $RUNWIRE_DATA_DIR)")
    commands = parser.add_subparsers(dest="command", required=True)

    up = commands.add_parser("up", help="start every service on this machine")
    up.add_argument("--gateway-port", type=int, default=8080, help="first gateway WebSocket port (0 = free)")
    up.add_argument("--replicas", type=int, default=1, help="processes per service")
    up.add_argument("--database-url", help="registry database (default: SQLite in the data folder)")
    up.add_argument("--redis-url", help="use the Redis bridge backend at this URL")
    up.add_argument("--grace-period", type=float, default=10.0, help="drain time per service on stop")
    up.add_argument(
        "--service-env",
        action="append",
        default=[],
        type=_service_setting,
        metavar="SERVICE:NAME=VALUE",
        help="an environment variable for one service's processes, e.g. "
        "execution:RUNWIRE_EXECUTION_DEFAULT_TIMEOUT_S=60 (repeat for several)",
    )
    restarts = up.add_argument_group("restarts of a process that exits")
    restarts.add_argument(
        "--max-restarts", type=int, default=5, help="restarts within the window before it is given up"
    )
    restarts.add_argument("--restart-window", type=float, default=60.0, help="seconds over which exits count")
    restarts.add_argument(
        "--restart-backoff",
        type=float,
        default=0.5,
        help="seconds before the second restart within the window (the first is at once); doubles after",
    )
    restarts.add_argument("--restart-backoff-max", type=float, default=10.0, help="the longest wait")
    up.set_defaults(func=cmd_up)

    status = commands.add_parser("status", help="every process of the running `runwire up` and its health")
    status.set_defaults(func=cmd_status)

    token = commands.add_parser("token", help="print a development JWT")
    token.add_argument("--user", required=True)
    token.add_argument("--ttl", type=float, default=3600, help="seconds until it expires")
    token.add_argument("--tenant")
    token.add_argument("--role", action="append", default=[], help="repeat for several")
    token.set_defaults(func=cmd_token)

    for name, helptext in (
        ("chat", "start a run, follow it and answer its questions"),
        ("runs", "list a user's runs"),
        ("threads", "list a user's threads, or show one"),
    ):
        sub = commands.add_parser(name, help=helptext)
        sub.add_argument("--user", required=True)
        sub.add_argument("--url", help="gateway WebSocket URL (default: the running `runwire up`)")
        sub.add_argument("--token", help="use this JWT instead of minting a development one")
        if name == "chat":
            sub.add_argument("message", nargs="?", help='the input is {"message": MESSAGE}')
            sub.add_argument("--agent", default="assistant")
            sub.add_argument("--input", help="the run's whole input as a JSON object (instead of a message)")
            sub.add_argument("--thread", help="continue this thread")
            sub.add_argument("--yes", action="store_true", help="approve every tool call the run asks about")
            sub.set_defaults(func=cmd_chat)
        elif name == "threads":
            sub.add_argument("--thread", help="show this thread's messages")
            sub.add_argument("--limit", type=int, default=20)
            sub.set_defaults(func=cmd_threads)
        else:
            sub.add_argument("--limit", type=int, default=20)
            sub.set_defaults(func=cmd_runs)

    context = commands.add_parser("context", help="UserContext tools for operators")
    context_commands = context.add_subparsers(dest="context_command", required=True)
    mint = context_commands.add_parser("mint", help="print an attested UserContext")
    mint.add_argument("--user", required=True)
    mint.add_argument("--tenant")
    mint.add_argument("--role", action="append", default=[])
    mint.add_argument("--thread-id")
    mint.add_argument("--run-id")
    mint.add_argument("--ttl", type=float, default=3600)
    mint.add_argument(
        "--keys", help="attestation key set (default $RUNWIRE_ATTESTATION_KEYS, then the data folder)"
    )
    mint.add_argument("--format", choices=("json", "base64"), default="json")
    mint.set_defaults(func=cmd_context_mint)

    admin_parser = commands.add_parser("admin", help="operator commands against the stores")
    admin_commands = admin_parser.add_subparsers(dest="admin_command", required=True)
    purge = admin_commands.add_parser(
        "purge-user",
        help="delete a user's runs, threads, input requests, outbox entries and event log",
        description=admin.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    purge.add_argument("user", help="the user id (the token's sub)")
    purge.add_argument("--tenant", help="the user's tenant (default: none, as for tokens without one)")
    purge.add_argument(
        "--database-url",
        help="the registry's database (default $RUNWIRE_REGISTRY_DATABASE_URL, then $RUNWIRE_DATABASE_URL)",
    )
    purge.add_argument("--redis-url", help="also delete the user's event log from this Redis")
    purge.add_argument(
        "--redis-key-prefix", default="runwire", help="the bridge's RUNWIRE_BRIDGE_REDIS_KEY_PREFIX"
    )
    purge.add_argument("--redis-cluster", action="store_true", help="--redis-url is a Redis Cluster node")
    purge.add_argument(
        "--force", action="store_true", help="end the user's live runs as cancelled and delete them too"
    )
    purge.add_argument(
        "--settle",
        type=float,
        default=admin.DEFAULT_SETTLE_S,
        help="with --force: seconds to let executors notice their runs ended before deleting",
    )
    purge.set_defaults(func=cmd_admin_purge_user)
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    raise SystemExit(args.func(args))


if __name__ == "__main__":
    main()
