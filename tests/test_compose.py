"""docker-compose.yml is the production topology of DESIGN.md ("Topology").

Three nodes; each has its own PostgreSQL and its own Redis broker, a one-shot migrate, a Celery
worker consuming only its own inbox `consensus.<node>` with `-P solo`, and a web container. All
nodes agree on one peer set, and each node's broker is its own entry in that set.

The structural checks are plain functions over the loaded file, so the same checks run on the
file as PyYAML reads it, on the file as `docker compose config` resolves it (when Docker Compose
is installed), and on deliberately broken copies, to show that each check can fail.
No test here touches the database.
"""

import copy
import json
import os
import re
import shlex
import shutil
import subprocess
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml

from devcluster.localcluster import web_server_args

ROOT = Path(__file__).resolve().parent.parent
COMPOSE_FILE = ROOT / "docker-compose.yml"
NODES = ("n1", "n2", "n3")
APP_ROLES = ("migrate", "worker", "web")
ROLES = ("postgres", "redis", *APP_ROLES)
SECRETS = {
    "CONFIGSTORE_SECRET": "x" * 32,
    "DJANGO_SECRET_KEY": "y" * 32,
    "POSTGRES_PASSWORD": "p" * 32,
    "CONFIGSTORE_APP_DB_PASSWORD": "a" * 32,
    "CONFIGSTORE_REDIS_PASSWORD": "r" * 32,
}
LONG_RUNNING_ROLES = ("postgres", "redis", "worker", "web")
RESTART_POLICIES = ("unless-stopped", "always", "on-failure")


def required_variable(name: str) -> re.Pattern:
    """`${NAME:?message}` (or `${NAME?message}`): Compose refuses the file without NAME."""
    return re.compile(r"^\$\{" + re.escape(name) + r":?\?[^}]*\}$")


def load_compose() -> dict:
    """The compose file with YAML merge keys (<<:) and aliases resolved, aliases unshared."""
    data = yaml.safe_load(COMPOSE_FILE.read_text())
    assert isinstance(data, dict), "docker-compose.yml is not a mapping"
    # A JSON round trip gives every alias its own copy, so editing one service in a
    # test never silently edits another that shares an anchor.
    return json.loads(json.dumps(data))


# ------------------------------------------------------------------------------------ helpers


def service(compose: dict, role: str, node: str) -> dict:
    name = f"{role}-{node}"
    services = compose.get("services") or {}
    assert name in services, f"service {name} is missing"
    assert isinstance(services[name], dict), f"service {name} is not a mapping"
    return services[name]


def environment(svc: dict) -> dict[str, str]:
    """A service's environment as a dict, from either the mapping or the list form."""
    env = svc.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) if "=" in item else (item, None) for item in env)
    return {key: (None if value is None else str(value)) for key, value in env.items()}


def env_var(compose: dict, role: str, node: str, name: str) -> str:
    value = environment(service(compose, role, node)).get(name)
    assert value, f"{role}-{node} does not set {name}"
    return value


def tokens(command) -> list[str]:
    if command is None:
        return []
    if isinstance(command, str):
        return shlex.split(command)
    return [str(part) for part in command]


def healthcheck_tokens(svc: dict) -> list[str]:
    """The command a healthcheck runs, as tokens; [] when there is no usable healthcheck."""
    check = svc.get("healthcheck")
    if not isinstance(check, dict) or check.get("disable"):
        return []
    test = check.get("test")
    if isinstance(test, str):
        return shlex.split(test)
    test = tokens(test)
    if not test or test[0] == "NONE":
        return []
    if test[0] == "CMD":
        return test[1:]
    if test[0] == "CMD-SHELL":
        return shlex.split(" ".join(test[1:]))
    return test


def option_values(argv: list[str], *names: str) -> list[str]:
    """Every value given to any of the options `names` (`-Q x`, `--queues x`, `--queues=x`)."""
    values = []
    for i, token in enumerate(argv):
        for name in names:
            if token == name and i + 1 < len(argv):
                values.append(argv[i + 1])
            elif name.startswith("--") and token.startswith(name + "="):
                values.append(token[len(name) + 1 :])
    return values


def parse_peers(spec: str) -> list[tuple[str, str]]:
    peers = []
    for entry in spec.split(","):
        node_id, sep, url = entry.strip().partition("=")
        assert sep and node_id and url, f"malformed CONFIGSTORE_PEERS entry {entry!r}"
        peers.append((node_id, url))
    return peers


def url_host(url: str) -> str:
    host = urlsplit(url).hostname
    assert host, f"no host in {url!r}"
    return host


def named_volumes(svc: dict) -> list[str]:
    """Names of the named volumes (not bind mounts) a service mounts."""
    names = []
    for volume in svc.get("volumes") or []:
        if isinstance(volume, dict):
            if volume.get("type", "volume") == "volume" and volume.get("source"):
                names.append(volume["source"])
        else:
            source, sep, _ = str(volume).partition(":")
            if sep and not source.startswith(("/", ".", "~", "$")):
                names.append(source)
    return names


def published_ports(svc: dict) -> set[str]:
    """'host:container' for every published port, from the short or the long syntax."""
    ports = set()
    for port in svc.get("ports") or []:
        if isinstance(port, dict):
            ports.add(f"{port.get('published')}:{port.get('target')}")
        else:
            parts = str(port).split(":")
            ports.add(":".join(parts[-2:]))
    return ports


# ------------------------------------------------------------------------------------ checks


def check_every_node_has_its_services(compose: dict) -> None:
    for node in NODES:
        for role in ROLES:
            service(compose, role, node)


def check_images_and_storage(compose: dict) -> None:
    declared = set(compose.get("volumes") or {})
    seen: dict[str, str] = {}
    for node in NODES:
        postgres = service(compose, "postgres", node)
        redis = service(compose, "redis", node)
        assert str(postgres.get("image", "")).startswith("postgres:16"), f"postgres-{node} image"
        assert str(redis.get("image", "")).startswith("redis:7"), f"redis-{node} image"
        redis_argv = tokens(redis.get("command"))
        assert option_values(redis_argv, "--appendonly") == ["yes"], (
            f"redis-{node} must run with --appendonly yes"
        )
        for svc, role in ((postgres, "postgres"), (redis, "redis")):
            volumes = named_volumes(svc)
            assert volumes, f"{role}-{node} keeps its data in no named volume"
            for volume in volumes:
                assert volume in declared, f"volume {volume} of {role}-{node} is not declared"
                assert volume not in seen, (
                    f"{role}-{node} shares volume {volume} with {seen.get(volume)}"
                )
                seen[volume] = f"{role}-{node}"


def database_location(url: str) -> str:
    """A database URL without its user and password: which database, not as whom."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.hostname}:{parts.port}{parts.path}"


def check_each_node_has_its_own_database_and_broker(compose: dict) -> None:
    databases, brokers = {}, {}
    for node in NODES:
        node_dbs = {
            database_location(env_var(compose, role, node, "DATABASE_URL")) for role in APP_ROLES
        }
        node_brokers = {env_var(compose, role, node, "CELERY_BROKER_URL") for role in APP_ROLES}
        assert len(node_dbs) == 1, f"{node}'s services disagree on DATABASE_URL: {node_dbs}"
        assert len(node_brokers) == 1, f"{node}'s services disagree on the broker: {node_brokers}"
        (databases[node],) = node_dbs
        (brokers[node],) = node_brokers
        assert url_host(databases[node]) == f"postgres-{node}", (
            f"{node}'s DATABASE_URL is not its own postgres-{node}: {databases[node]}"
        )
        assert url_host(brokers[node]) == f"redis-{node}", (
            f"{node}'s CELERY_BROKER_URL is not its own redis-{node}: {brokers[node]}"
        )
    db_hosts = {url_host(url) for url in databases.values()}
    broker_hosts = {url_host(url) for url in brokers.values()}
    assert len(db_hosts) == len(NODES), f"nodes share a database host: {databases}"
    assert len(broker_hosts) == len(NODES), f"nodes share a broker host: {brokers}"


def check_peers_are_identical_and_name_the_three_nodes(compose: dict) -> None:
    specs = {
        f"{role}-{node}": env_var(compose, role, node, "CONFIGSTORE_PEERS")
        for node in NODES
        for role in APP_ROLES
    }
    assert len(set(specs.values())) == 1, f"CONFIGSTORE_PEERS differs between services: {specs}"
    peers = parse_peers(next(iter(specs.values())))
    ids = [node_id for node_id, _ in peers]
    assert sorted(ids) == sorted(NODES), f"CONFIGSTORE_PEERS names {ids}, not exactly {NODES}"
    services = compose.get("services") or {}
    for node_id, url in peers:
        assert urlsplit(url).scheme == "redis", f"peer {node_id} is not a redis:// URL: {url}"
        assert url_host(url) in services, f"peer {node_id}'s broker {url} is no service"


def check_broker_is_the_nodes_own_peer_entry(compose: dict) -> None:
    for node in NODES:
        for role in APP_ROLES:
            peers = dict(parse_peers(env_var(compose, role, node, "CONFIGSTORE_PEERS")))
            broker = env_var(compose, role, node, "CELERY_BROKER_URL")
            assert peers.get(node) == broker, (
                f"{role}-{node}: CELERY_BROKER_URL {broker} is not {node}'s entry "
                f"in CONFIGSTORE_PEERS ({peers.get(node)})"
            )


def check_node_ids(compose: dict) -> None:
    for node in NODES:
        for role in APP_ROLES:
            assert env_var(compose, role, node, "CONFIGSTORE_NODE_ID") == node, (
                f"{role}-{node} has CONFIGSTORE_NODE_ID "
                f"{env_var(compose, role, node, 'CONFIGSTORE_NODE_ID')}"
            )


def check_healthchecks(compose: dict) -> None:
    for node in NODES:
        for role in ("postgres", "redis", "web", "worker"):
            argv = healthcheck_tokens(service(compose, role, node))
            assert argv, f"{role}-{node} has no healthcheck"
        assert "pg_isready" in healthcheck_tokens(service(compose, "postgres", node))
        redis_check = healthcheck_tokens(service(compose, "redis", node))
        assert "redis-cli" in redis_check and "ping" in redis_check, f"redis-{node} healthcheck"
        web_check = " ".join(healthcheck_tokens(service(compose, "web", node)))
        assert "http://127.0.0.1:8000/healthz" in web_check, f"web-{node} healthcheck"
        worker_check = healthcheck_tokens(service(compose, "worker", node))
        worker_argv = tokens(service(compose, "worker", node).get("command"))
        assert "inspect" in worker_check and "ping" in worker_check, f"worker-{node} healthcheck"
        names = option_values(worker_argv, "-n", "--hostname")
        assert len(names) == 1, f"worker-{node} does not set its node name with -n"
        destinations = option_values(worker_check, "-d", "--destination")
        assert destinations == names, (
            f"worker-{node}'s healthcheck pings {destinations}, but the worker is named {names}"
        )


def check_worker_commands(compose: dict) -> None:
    for node in NODES:
        argv = tokens(service(compose, "worker", node).get("command"))
        assert argv[:1] == ["celery"] and "worker" in argv, f"worker-{node} runs {argv}"
        assert option_values(argv, "-A", "--app") == ["configstore"], f"worker-{node} app"
        queues = [q for value in option_values(argv, "-Q", "--queues") for q in value.split(",")]
        assert queues == [f"consensus.{node}"], (
            f"worker-{node} consumes {queues}, not only its inbox consensus.{node}"
        )
        assert option_values(argv, "-P", "--pool") == ["solo"], f"worker-{node} is not -P solo"


def check_web_and_migrate_commands(compose: dict) -> None:
    for index, node in enumerate(NODES, start=1):
        web = service(compose, "web", node)
        argv = tokens(web.get("command"))
        # The web server runcluster runs (granian with its timeouts, configstore.asgi), on
        # the container's port: the arrangement that slow and waiting clients cannot exhaust.
        assert argv == web_server_args("0.0.0.0", 8000), f"web-{node} runs {argv}"
        assert f"800{index}:8000" in published_ports(web), f"web-{node} not on host port 800{index}"
        migrate = service(compose, "migrate", node)
        assert tokens(migrate.get("command"))[:3] == ["python", "manage.py", "migrate"], (
            f"migrate-{node} does not run manage.py migrate"
        )
        assert str(migrate.get("restart", "no")) == "no", f"migrate-{node} must run once"


def check_secrets_come_from_the_environment(compose: dict) -> None:
    required = {
        name: required_variable(name) for name in ("CONFIGSTORE_SECRET", "DJANGO_SECRET_KEY")
    }
    for node in NODES:
        for role in APP_ROLES:
            for name, pattern in required.items():
                value = env_var(compose, role, node, name)
                assert pattern.match(value), (
                    f"{role}-{node}: {name} must be the required variable ${{{name}:?...}} "
                    f"from the environment, not {value!r}"
                )


OWNER = "configstore"  # postgres-nN's POSTGRES_USER: owns the tables, migrates
APP_DB_ROLE = "configstore_app"  # web-nN and worker-nN connect as it


def check_only_migrate_connects_as_the_owner(compose: dict) -> None:
    """migrate-nN connects as the owner (its server's POSTGRES_USER) and grants the app role
    (CONFIGSTORE_APP_DB_ROLE); web-nN and worker-nN connect as that app role."""
    for node in NODES:
        owner = env_var(compose, "postgres", node, "POSTGRES_USER")
        assert owner == OWNER, f"postgres-{node}'s user is {owner!r}, not {OWNER!r}"
        migrate = urlsplit(env_var(compose, "migrate", node, "DATABASE_URL"))
        assert migrate.username == owner, f"migrate-{node} connects as {migrate.username!r}"
        granted = env_var(compose, "migrate", node, "CONFIGSTORE_APP_DB_ROLE")
        assert granted == APP_DB_ROLE, f"migrate-{node} grants {granted!r}, not {APP_DB_ROLE!r}"
        for role in ("worker", "web"):
            user = urlsplit(env_var(compose, role, node, "DATABASE_URL")).username
            assert user == APP_DB_ROLE, (
                f"{role}-{node} connects as {user!r}, not the app role {APP_DB_ROLE!r}"
            )
            assert not environment(service(compose, role, node)).get("CONFIGSTORE_APP_DB_ROLE"), (
                f"{role}-{node} would grant privileges: only migrate-{node} runs as the owner"
            )


def check_passwords_are_required(compose: dict) -> None:
    """Every node's PostgreSQL and Redis require a password that only the environment gives
    (no default anywhere), and every URL that reaches them carries it: the owner's for
    migrate, the app role's (set by migrate) for web and worker."""
    postgres_password = "${POSTGRES_PASSWORD}"
    app_password = "${CONFIGSTORE_APP_DB_PASSWORD}"
    redis_password = "${CONFIGSTORE_REDIS_PASSWORD}"
    for node in NODES:
        value = env_var(compose, "postgres", node, "POSTGRES_PASSWORD")
        assert required_variable("POSTGRES_PASSWORD").match(value), (
            f"postgres-{node}: POSTGRES_PASSWORD must be ${{POSTGRES_PASSWORD:?...}}, not {value!r}"
        )
        redis = service(compose, "redis", node)
        required = option_values(tokens(redis.get("command")), "--requirepass")
        assert len(required) == 1, f"redis-{node} runs without --requirepass"
        assert required_variable("CONFIGSTORE_REDIS_PASSWORD").match(required[0]), (
            f"redis-{node}: --requirepass {required[0]!r} is not the required variable"
        )
        # redis-cli reads REDISCLI_AUTH: the healthcheck's ping must authenticate.
        assert environment(redis).get("REDISCLI_AUTH") == required[0], (
            f"redis-{node}'s healthcheck does not authenticate (REDISCLI_AUTH)"
        )
        value = env_var(compose, "migrate", node, "CONFIGSTORE_APP_DB_PASSWORD")
        assert required_variable("CONFIGSTORE_APP_DB_PASSWORD").match(value), (
            f"migrate-{node}: CONFIGSTORE_APP_DB_PASSWORD must be the required variable, "
            f"not {value!r}"
        )
        for role in APP_ROLES:
            database = urlsplit(env_var(compose, role, node, "DATABASE_URL"))
            expected = postgres_password if role == "migrate" else app_password
            assert database.password == expected, (
                f"{role}-{node}: DATABASE_URL's password is {database.password!r}, not {expected}"
            )
            urls = [env_var(compose, role, node, "CELERY_BROKER_URL")]
            urls += [
                url for _, url in parse_peers(env_var(compose, role, node, "CONFIGSTORE_PEERS"))
            ]
            for url in urls:
                assert urlsplit(url).password == redis_password, (
                    f"{role}-{node}: broker URL {url} does not carry {redis_password}"
                )
    text = json.dumps(compose)
    defaults = re.findall(
        r"\$\{(?:POSTGRES_PASSWORD|CONFIGSTORE_APP_DB_PASSWORD|CONFIGSTORE_REDIS_PASSWORD)"
        r":?[-=+][^}]*\}",
        text,
    )
    assert not defaults, f"a password with a default or alternative: {defaults}"


def allowed_hosts(value: str) -> list[str]:
    """DJANGO_ALLOWED_HOSTS as the settings split it, `${VAR:-default}` taken at its default."""
    match = re.fullmatch(r"\$\{[A-Z_]+:?-([^}]*)\}", value)
    return [host.strip() for host in (match.group(1) if match else value).split(",")]


def check_allowed_hosts_are_named(compose: dict) -> None:
    """The web servers answer only to named hosts: no `*`, no domain wildcard; the names that
    reach them on this network and from the Docker host (the healthcheck's 127.0.0.1)."""
    for node in NODES:
        for role in APP_ROLES:
            hosts = allowed_hosts(env_var(compose, role, node, "DJANGO_ALLOWED_HOSTS"))
            wild = [h for h in hosts if not h or "*" in h or h.startswith(".")]
            assert not wild, f"{role}-{node}: DJANGO_ALLOWED_HOSTS has wildcards {wild}"
            for needed in ("127.0.0.1", "localhost", f"web-{node}"):
                assert needed in hosts, f"{role}-{node}: DJANGO_ALLOWED_HOSTS lacks {needed}"


def check_restart_policies(compose: dict) -> None:
    """Docker restarts every long-running service that exits; the one-shot migrate runs once."""
    for node in NODES:
        for role in LONG_RUNNING_ROLES:
            policy = str(service(compose, role, node).get("restart", "no"))
            assert policy.split(":")[0] in RESTART_POLICIES, (
                f"{role}-{node} is not restarted when it exits (restart: {policy})"
            )


def check_depends_on_own_node(compose: dict) -> None:
    wanted = {
        "postgres": "service_healthy",
        "redis": "service_healthy",
        "migrate": "service_completed_successfully",
    }
    for node in NODES:
        for role in ("web", "worker"):
            depends = service(compose, role, node).get("depends_on")
            assert isinstance(depends, dict), (
                f"{role}-{node}: depends_on must be a mapping with conditions, not {depends!r}"
            )
            for dep_role, condition in wanted.items():
                dep = f"{dep_role}-{node}"
                got = (depends.get(dep) or {}).get("condition")
                assert got == condition, f"{role}-{node} waits for {dep} with {got!r}"
            foreign = [d for d in depends if not d.endswith(f"-{node}")]
            assert not foreign, f"{role}-{node} depends on another node's services: {foreign}"
        migrate_depends = service(compose, "migrate", node).get("depends_on")
        assert isinstance(migrate_depends, dict), f"migrate-{node} depends_on"
        assert (migrate_depends.get(f"postgres-{node}") or {}).get("condition") == (
            "service_healthy"
        ), f"migrate-{node} does not wait for a healthy postgres-{node}"


def check_metrics_token_comes_from_the_environment(compose: dict) -> None:
    """Prometheus scrapes /metrics from outside the web container: every web server takes
    CONFIGSTORE_METRICS_TOKEN from the environment (optional), never a literal."""
    for node in NODES:
        value = environment(service(compose, "web", node)).get("CONFIGSTORE_METRICS_TOKEN")
        assert value == "${CONFIGSTORE_METRICS_TOKEN:-}", (
            f"web-{node}: CONFIGSTORE_METRICS_TOKEN must be ${{CONFIGSTORE_METRICS_TOKEN:-}} "
            f"from the environment, not {value!r}"
        )


STRUCTURE_CHECKS = [
    check_every_node_has_its_services,
    check_images_and_storage,
    check_each_node_has_its_own_database_and_broker,
    check_peers_are_identical_and_name_the_three_nodes,
    check_broker_is_the_nodes_own_peer_entry,
    check_node_ids,
    check_healthchecks,
    check_worker_commands,
    check_web_and_migrate_commands,
    check_depends_on_own_node,
    check_allowed_hosts_are_named,
    check_restart_policies,
]
ALL_CHECKS = [
    *STRUCTURE_CHECKS,
    check_secrets_come_from_the_environment,
    check_metrics_token_comes_from_the_environment,
    check_passwords_are_required,
    check_only_migrate_connects_as_the_owner,
]


@pytest.mark.parametrize("check", ALL_CHECKS, ids=lambda check: check.__name__[len("check_") :])
def test_compose_file(check):
    check(load_compose())


# ------------------------------------------------------------------- each check can fail


def _env(compose, name):
    return compose["services"][name]["environment"]


def _set_command(name, argv):
    def mutate(compose):
        compose["services"][name]["command"] = argv

    return mutate


def _peers_everywhere(spec):
    def mutate(compose):
        for node in NODES:
            for role in APP_ROLES:
                _env(compose, f"{role}-{node}")["CONFIGSTORE_PEERS"] = spec

    return mutate


PEERS = ",".join(
    f"{node}=redis://:${{CONFIGSTORE_REDIS_PASSWORD}}@redis-{node}:6379/0" for node in NODES
)
WORKER_N1 = ["celery", "-A", "configstore", "worker", "-n", "celery@n1", "-P", "solo"]

BREAKAGES = {
    "missing redis-n2": (
        lambda c: c["services"].pop("redis-n2"),
        check_every_node_has_its_services,
    ),
    "postgres-n2 shares n1's volume": (
        lambda c: c["services"]["postgres-n2"].update(
            volumes=["postgres-n1:/var/lib/postgresql/data"]
        ),
        check_images_and_storage,
    ),
    "redis without appendonly": (
        _set_command("redis-n3", ["redis-server"]),
        check_images_and_storage,
    ),
    "worker-n3 on n1's database": (
        lambda c: _env(c, "worker-n3").update(
            DATABASE_URL="postgresql://configstore:pw@postgres-n1:5432/configstore"
        ),
        check_each_node_has_its_own_database_and_broker,
    ),
    "all of n2 on n1's database": (
        lambda c: [
            _env(c, f"{role}-n2").update(
                DATABASE_URL="postgresql://configstore:pw@postgres-n1:5432/configstore"
            )
            for role in APP_ROLES
        ],
        check_each_node_has_its_own_database_and_broker,
    ),
    "web-n2 on n1's broker": (
        lambda c: _env(c, "web-n2").update(CELERY_BROKER_URL="redis://redis-n1:6379/0"),
        check_broker_is_the_nodes_own_peer_entry,
    ),
    "broker not the peer entry": (
        lambda c: [
            _env(c, f"{role}-n3").update(CELERY_BROKER_URL="redis://redis-n3:6379/1")
            for role in APP_ROLES
        ],
        check_broker_is_the_nodes_own_peer_entry,
    ),
    "worker-n1 peers without n3": (
        lambda c: _env(c, "worker-n1").update(CONFIGSTORE_PEERS=PEERS.rsplit(",", 1)[0]),
        check_peers_are_identical_and_name_the_three_nodes,
    ),
    "a fourth peer everywhere": (
        _peers_everywhere(PEERS + ",n4=redis://redis-n3:6379/0"),
        check_peers_are_identical_and_name_the_three_nodes,
    ),
    "a duplicated peer everywhere": (
        _peers_everywhere(PEERS.replace("n3=", "n2=")),
        check_peers_are_identical_and_name_the_three_nodes,
    ),
    "web-n3 claims to be n1": (
        lambda c: _env(c, "web-n3").update(CONFIGSTORE_NODE_ID="n1"),
        check_node_ids,
    ),
    "postgres-n2 without healthcheck": (
        lambda c: c["services"]["postgres-n2"].pop("healthcheck"),
        check_healthchecks,
    ),
    "web-n1 healthcheck disabled": (
        lambda c: c["services"]["web-n1"].update(healthcheck={"disable": True}),
        check_healthchecks,
    ),
    "worker-n2 healthcheck pings n1": (
        lambda c: c["services"]["worker-n2"]["healthcheck"].update(
            test=["CMD", "celery", "-A", "configstore", "inspect", "ping", "-d", "celery@n1"]
        ),
        check_healthchecks,
    ),
    "worker-n1 consumes n2's inbox": (
        _set_command("worker-n1", [*WORKER_N1, "-Q", "consensus.n2"]),
        check_worker_commands,
    ),
    "worker-n1 consumes an extra queue": (
        _set_command("worker-n1", [*WORKER_N1, "-Q", "consensus.n1,celery"]),
        check_worker_commands,
    ),
    "worker-n1 prefork pool": (
        _set_command("worker-n1", "celery -A configstore worker -n celery@n1 -Q consensus.n1"),
        check_worker_commands,
    ),
    "web-n3 with gunicorn's sync worker": (
        _set_command("web-n3", "gunicorn configstore.wsgi:application --bind 0.0.0.0:8000"),
        check_web_and_migrate_commands,
    ),
    "web-n1 without granian's header timeout": (
        _set_command(
            "web-n1",
            [
                a
                for a in web_server_args("0.0.0.0", 8000)
                if a not in ("--http1-header-read-timeout", "10000")
            ],
        ),
        check_web_and_migrate_commands,
    ),
    "web-n2 on the wrong host port": (
        lambda c: c["services"]["web-n2"].update(ports=["8001:8000"]),
        check_web_and_migrate_commands,
    ),
    "literal cluster secret": (
        lambda c: _env(c, "worker-n2").update(CONFIGSTORE_SECRET="hunter2"),
        check_secrets_come_from_the_environment,
    ),
    "cluster secret with a default": (
        lambda c: _env(c, "web-n1").update(CONFIGSTORE_SECRET="${CONFIGSTORE_SECRET:-hunter2}"),
        check_secrets_come_from_the_environment,
    ),
    "literal metrics token": (
        lambda c: _env(c, "web-n3").update(CONFIGSTORE_METRICS_TOKEN="scrape-me"),
        check_metrics_token_comes_from_the_environment,
    ),
    "web-n2 without a metrics token": (
        lambda c: _env(c, "web-n2").pop("CONFIGSTORE_METRICS_TOKEN"),
        check_metrics_token_comes_from_the_environment,
    ),
    "web-n1 only waits for postgres to start": (
        lambda c: c["services"]["web-n1"]["depends_on"]["postgres-n1"].update(
            condition="service_started"
        ),
        check_depends_on_own_node,
    ),
    "worker-n3 depends_on as a list": (
        lambda c: c["services"]["worker-n3"].update(depends_on=["postgres-n3", "redis-n3"]),
        check_depends_on_own_node,
    ),
    "worker-n2 waits for n1's redis": (
        lambda c: c["services"]["worker-n2"]["depends_on"].update(
            {"redis-n1": {"condition": "service_healthy"}}
        ),
        check_depends_on_own_node,
    ),
    "web-n3 does not wait for migrate": (
        lambda c: c["services"]["web-n3"]["depends_on"].pop("migrate-n3"),
        check_depends_on_own_node,
    ),
    "redis-n2 without a password": (
        _set_command("redis-n2", ["redis-server", "--appendonly", "yes"]),
        check_passwords_are_required,
    ),
    "redis-n1 with a literal password": (
        _set_command("redis-n1", ["redis-server", "--appendonly", "yes", "--requirepass", "pw"]),
        check_passwords_are_required,
    ),
    "redis-n3 healthcheck without the password": (
        lambda c: _env(c, "redis-n3").pop("REDISCLI_AUTH"),
        check_passwords_are_required,
    ),
    "postgres password with a default": (
        lambda c: _env(c, "postgres-n1").update(
            POSTGRES_PASSWORD="${POSTGRES_PASSWORD:-configstore}"
        ),
        check_passwords_are_required,
    ),
    "DATABASE_URL with a literal password": (
        lambda c: _env(c, "web-n2").update(
            DATABASE_URL="postgresql://configstore:configstore@postgres-n2:5432/configstore"
        ),
        check_passwords_are_required,
    ),
    "DATABASE_URL whose password has a default": (
        lambda c: _env(c, "migrate-n3").update(
            DATABASE_URL="postgresql://configstore:${POSTGRES_PASSWORD-x}@postgres-n3:5432/configstore"
        ),
        check_passwords_are_required,
    ),
    "web-n2 as the owner": (
        lambda c: _env(c, "web-n2").update(
            DATABASE_URL="postgresql://configstore:${POSTGRES_PASSWORD}@postgres-n2:5432/configstore"
        ),
        check_only_migrate_connects_as_the_owner,
    ),
    "migrate-n1 as the app role": (
        lambda c: _env(c, "migrate-n1").update(
            DATABASE_URL="postgresql://configstore_app:${CONFIGSTORE_APP_DB_PASSWORD}@postgres-n1:5432/configstore"
        ),
        check_only_migrate_connects_as_the_owner,
    ),
    "migrate-n3 grants no app role": (
        lambda c: _env(c, "migrate-n3").pop("CONFIGSTORE_APP_DB_ROLE"),
        check_only_migrate_connects_as_the_owner,
    ),
    "the app role's password with a default": (
        lambda c: _env(c, "migrate-n2").update(
            CONFIGSTORE_APP_DB_PASSWORD="${CONFIGSTORE_APP_DB_PASSWORD:-configstore}"
        ),
        check_passwords_are_required,
    ),
    "worker-n3 with the owner's password": (
        lambda c: _env(c, "worker-n3").update(
            DATABASE_URL="postgresql://configstore_app:${POSTGRES_PASSWORD}@postgres-n3:5432/configstore"
        ),
        check_passwords_are_required,
    ),
    "worker-n1's broker URL without the password": (
        lambda c: _env(c, "worker-n1").update(CELERY_BROKER_URL="redis://redis-n1:6379/0"),
        check_passwords_are_required,
    ),
    "a peer without the password everywhere": (
        _peers_everywhere(PEERS.replace(":${CONFIGSTORE_REDIS_PASSWORD}@redis-n3", "redis-n3")),
        check_passwords_are_required,
    ),
    "any host allowed": (
        lambda c: _env(c, "web-n1").update(DJANGO_ALLOWED_HOSTS="*"),
        check_allowed_hosts_are_named,
    ),
    "any host allowed by default": (
        lambda c: _env(c, "web-n2").update(DJANGO_ALLOWED_HOSTS="${CONFIGSTORE_ALLOWED_HOSTS:-*}"),
        check_allowed_hosts_are_named,
    ),
    "a domain wildcard": (
        lambda c: _env(c, "worker-n3").update(
            DJANGO_ALLOWED_HOSTS="localhost,127.0.0.1,web-n3,.example.com"
        ),
        check_allowed_hosts_are_named,
    ),
    "web-n3's own name not allowed": (
        lambda c: _env(c, "web-n3").update(DJANGO_ALLOWED_HOSTS="localhost,127.0.0.1"),
        check_allowed_hosts_are_named,
    ),
    "worker-n2 never restarted": (
        lambda c: c["services"]["worker-n2"].pop("restart"),
        check_restart_policies,
    ),
    "postgres-n3 restart: no": (
        lambda c: c["services"]["postgres-n3"].update(restart="no"),
        check_restart_policies,
    ),
}


@pytest.mark.parametrize("breakage", list(BREAKAGES))
def test_check_fails_on_broken_compose_file(breakage):
    mutate, check = BREAKAGES[breakage]
    compose = load_compose()
    check(copy.deepcopy(compose))  # the intact file passes this check...
    mutate(compose)
    with pytest.raises(AssertionError):  # ...and the broken one does not
        check(compose)


# --------------------------------------------------------------- docker compose, if present


def _compose_unavailable_reason() -> str | None:
    docker = shutil.which("docker")
    if docker is None:
        return "no `docker` binary on PATH"
    try:
        result = subprocess.run(
            [docker, "compose", "version"], capture_output=True, text=True, timeout=60
        )
    except (OSError, subprocess.TimeoutExpired) as error:
        return f"`docker compose version` could not run: {error}"
    if result.returncode != 0:
        return (
            "the docker client has no compose plugin "
            f"(`docker compose version` exited {result.returncode})"
        )
    return None


@pytest.fixture(scope="module")
def docker_compose(tmp_path_factory):
    """Runs `docker compose ... ARGS` on the file with only the given variables set."""
    reason = _compose_unavailable_reason()
    if reason:
        pytest.skip(reason)
    empty_env_file = tmp_path_factory.mktemp("compose") / "empty.env"
    empty_env_file.write_text("")

    def run(*args: str, variables: dict[str, str]) -> subprocess.CompletedProcess:
        # Nothing from the caller's environment or a developer's .env decides the outcome.
        env = {
            key: value
            for key, value in os.environ.items()
            if not key.startswith("COMPOSE_") and key not in {*SECRETS, "CONFIGSTORE_ALLOWED_HOSTS"}
        }
        env.update(variables)
        argv = ["docker", "compose", "-f", str(COMPOSE_FILE), "--project-directory", str(ROOT)]
        argv += ["--env-file", str(empty_env_file), *args]
        return subprocess.run(argv, capture_output=True, text=True, timeout=120, env=env)

    return run


def test_docker_compose_config_is_valid(docker_compose):
    result = docker_compose("config", "-q", variables=SECRETS)
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("missing", sorted(SECRETS))
def test_docker_compose_requires_the_secrets(docker_compose, missing):
    variables = {k: v for k, v in SECRETS.items() if k != missing}
    result = docker_compose("config", "-q", variables=variables)
    assert result.returncode != 0, f"compose accepted the file without {missing}"
    assert missing in result.stderr, result.stderr


@pytest.fixture(scope="module")
def resolved_compose(docker_compose):
    """The file as Docker Compose itself reads it: anchors, merge keys and variables resolved."""
    result = docker_compose("config", "--format", "json", variables=SECRETS)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


@pytest.mark.parametrize("check", STRUCTURE_CHECKS, ids=lambda c: c.__name__[len("check_") :])
def test_docker_compose_resolves_to_the_same_topology(resolved_compose, check):
    """Compose's reading of the anchors and merge keys gives the topology checked above."""
    check(copy.deepcopy(resolved_compose))
