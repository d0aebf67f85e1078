"""Redis as the head's store (``head_recovery.store: redis``): the GCS keeps the cluster's state there
(``RAY_REDIS_ADDRESS``, ``--redis-password``), so it outlives the head's processes, and with Redis on
another node, the head machine itself.

Either rayfleet runs Redis (the distribution's ``redis-server``) on a node of the fleet (default: the
head), or the fleet uses a Redis of its own (``head_recovery.redis.url``).

rayfleet's Redis: ``~/.rayfleet/NAME/redis/`` on that node holds its config (0600: the password), its
append-only file, log and pid file. Its password is made once on this machine
(``$RAYFLEET_HOME/fleets/NAME/redis-password``, 0600) and reaches the node on ssh's stdin, never a
command line. On the head it listens on 127.0.0.1 only; on another node also on that node's address,
with TLS (the node's own certificate from the fleet's CA, clients' certificates required) when
``security.tls`` is on. ``timeout 0``: an idle disconnect could crash the GCS (ray#46982).

The head reads the password from ``~/.rayfleet/NAME/head/redis-password`` (0600), shipped by ``up``.
The cluster's keys live under the namespace NAME (``RAY_external_storage_namespace``); a head started
afresh (``node_start head``) deletes them first, as it starts RocksDB on an empty directory.

Ray itself passes the password to ``gcs_server`` on its command line: any user of the head can read it
there (README: "When the head fails").
"""

from __future__ import annotations

import socket
import ssl
from pathlib import Path
from typing import TypedDict

from rayfleet.cluster import tls
from rayfleet.config.fleet import FleetSpec, NodeSpec, shell_path

__all__ = ["RedisPlan", "node", "plan", "password", "redis_dir", "start", "stop_command", "ping", "PASSWORD_FILE"]

PASSWORD_FILE = "redis-password"


class RedisPlan(TypedDict):
    """What the head needs to use the store (node_start.py)."""
    url: str                # redis://HOST:PORT or rediss://HOST:PORT, as the head reaches it
    username: str           # "" for Redis's default user
    password_file: str      # on the head ("~/" = the SSH user's home there)
    namespace: str          # the cluster's key prefix
    env: dict[str, str]     # Ray's Redis TLS variables ("~/" expanded on the head)


def node(fleet: FleetSpec) -> NodeSpec | None:
    """The node where rayfleet runs Redis; None when the fleet uses its own (``url``)."""
    r = fleet.head_recovery.redis
    if fleet.head_recovery.store != "redis" or r.url:
        return None
    if r.host is None:
        return fleet.head
    return next(n for n in fleet.nodes if n.host == r.host)


def _tls(fleet: FleetSpec) -> bool:
    """rayfleet's Redis speaks TLS when it is on another node than the head of a fleet with TLS."""
    n = node(fleet)
    return n is not None and n is not fleet.head and fleet.security.tls


def redis_dir(fleet: FleetSpec) -> str:
    return f"~/.rayfleet/{fleet.name}/redis"


def plan(fleet: FleetSpec, head_dir: str) -> RedisPlan:
    r = fleet.head_recovery.redis
    n = node(fleet)
    env: dict[str, str] = {}
    if n is None:
        url, username = _split_url(r.url)
    else:
        host = "127.0.0.1" if n is fleet.head else n.address
        url, username = f"{'rediss' if _tls(fleet) else 'redis'}://{host}:{r.port}", ""
        if _tls(fleet):
            d = tls.remote_dir(fleet)
            env = {"RAY_REDIS_CA_CERT": f"{d}/ca.crt", "RAY_REDIS_CLIENT_CERT": f"{d}/node.crt",
                   "RAY_REDIS_CLIENT_KEY": f"{d}/node.key"}
    return RedisPlan(url=url, username=username, password_file=f"{head_dir}/{PASSWORD_FILE}",
                     namespace=fleet.name, env=env)


def _split_url(url: str) -> tuple[str, str]:
    """``redis://USER@HOST:PORT`` -> (``redis://HOST:PORT``, USER)."""
    scheme, rest = url.split("://", 1)
    user, _, hostport = rest.rpartition("@")
    return f"{scheme}://{hostport}", user


def password(fleet: FleetSpec, fleet_dir: Path) -> str:
    """rayfleet's Redis: its password, made once (0600); your own: the password_file's first line."""
    r = fleet.head_recovery.redis
    if r.url:
        return Path(r.password_file).expanduser().read_text().splitlines()[0].strip() if r.password_file else ""
    import os
    import secrets
    path = fleet_dir / PASSWORD_FILE
    if not path.exists():
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_hex(32) + "\n")
    return path.read_text().strip()


def start_script(fleet: FleetSpec) -> str:
    """The shell script that starts rayfleet's Redis on its node (the password on stdin), or leaves the
    one running with the same config. Prints ``started`` or ``running``; exit 3: no redis-server."""
    n = node(fleet)
    assert n is not None
    port = fleet.head_recovery.redis.port
    d = shell_path(redis_dir(fleet))
    lines = ["protected-mode yes", "requirepass $pw", "timeout 0", "daemonize yes",
             'pidfile $d/redis.pid', 'logfile $d/redis.log', 'dir $d', "appendonly yes", 'save \\"\\"']
    cli = f"-h 127.0.0.1 -p {port}"
    if n is fleet.head:
        lines = ["bind 127.0.0.1", f"port {port}"] + lines
    elif _tls(fleet):
        lines = [f"bind 127.0.0.1 {n.address}", "port 0", f"tls-port {port}", 'tls-cert-file $t/node.crt',
                 'tls-key-file $t/node.key', 'tls-ca-cert-file $t/ca.crt', "tls-auth-clients yes"] + lines
        cli += ' --tls --cacert "$t/ca.crt" --cert "$t/node.crt" --key "$t/node.key"'
    else:
        lines = [f"bind 127.0.0.1 {n.address}", f"port {port}"] + lines
    conf = "\n".join(f'    echo "{ln}"' for ln in lines)
    return f"""set -e
umask 077
d={d}
t={shell_path(tls.remote_dir(fleet))}
command -v redis-server >/dev/null || {{ echo "redis-server is not installed" >&2; exit 3; }}
mkdir -p "$d"
IFS= read -r pw
d=$(cd "$d" && pwd)
{{
{conf}
}} > "$d/redis.conf.new"
p=$(cat "$d/redis.pid" 2>/dev/null || true)
if [ -n "$p" ] && [ "$(cat /proc/$p/comm 2>/dev/null)" = redis-server ]; then
    if cmp -s "$d/redis.conf.new" "$d/redis.conf"; then rm -f "$d/redis.conf.new"; echo running; exit 0; fi
    kill "$p"
    for i in $(seq 100); do [ -e "/proc/$p" ] || break; sleep 0.1; done
fi
mv "$d/redis.conf.new" "$d/redis.conf"
redis-server "$d/redis.conf"
for i in $(seq 100); do
    if REDISCLI_AUTH="$pw" redis-cli {cli} ping 2>/dev/null | grep -q PONG; then echo started; exit 0; fi
    sleep 0.1
done
echo "redis-server did not answer on port {port}; the end of $d/redis.log:" >&2
tail -n 5 "$d/redis.log" >&2
exit 4
"""


def stop_command(fleet: FleetSpec) -> str:
    """Shell for rayfleet's Redis node at ``down``: end it by PID (if that is a redis-server) and remove its
    files: the cluster's state goes with the cluster."""
    d = shell_path(redis_dir(fleet))
    return (f"d={d}; p=$(cat \"$d/redis.pid\" 2>/dev/null); "
            f"if [ -n \"$p\" ] && [ \"$(cat /proc/$p/comm 2>/dev/null)\" = redis-server ]; then kill $p; "
            f"for i in $(seq 50); do [ -e /proc/$p ] || break; sleep 0.1; done; fi; rm -rf \"$d\"")


def ping(url: str, password: str, username: str = "", *, ssl_files: dict[str, str] | None = None,
         timeout_s: float = 5) -> str:
    """AUTH (when there is a password) and PING on the Redis at ``url``; "" when it answers PONG, else what
    went wrong, in words."""
    scheme, hostport = url.split("://", 1)
    host, _, port = hostport.rpartition(":")
    try:
        sock = socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s)
    except OSError as e:
        return f"can't connect to {hostport}: {e.strerror or e}"
    try:
        if scheme == "rediss":
            ctx = ssl.create_default_context(cafile=(ssl_files or {}).get("RAY_REDIS_CA_CERT"))
            ctx.check_hostname = False
            if ssl_files and ssl_files.get("RAY_REDIS_CLIENT_CERT"):
                ctx.load_cert_chain(ssl_files["RAY_REDIS_CLIENT_CERT"], ssl_files.get("RAY_REDIS_CLIENT_KEY"))
            sock = ctx.wrap_socket(sock)
        f = sock.makefile("rwb")
        cmds = ([["AUTH", username, password] if username else ["AUTH", password]] if password else []) + [["PING"]]
        for cmd in cmds:
            f.write(f"*{len(cmd)}\r\n".encode() + b"".join(
                f"${len(a.encode())}\r\n".encode() + a.encode() + b"\r\n" for a in cmd))
        f.flush()
        for cmd in cmds:
            line = f.readline().decode(errors="replace").strip()
            if not line.startswith("+"):
                return line.lstrip("-") or "no answer"
        return ""
    except (OSError, ssl.SSLError) as e:
        return f"{hostport}: {e}"
    finally:
        sock.close()


def start(fleet: FleetSpec, fleet_dir: Path, known_hosts: Path | None) -> str:
    """Start rayfleet's Redis (if the fleet has one) and put its password on the head; returns what it did
    ("" when nothing: no Redis store). Raises ClusterError with the fix."""
    from rayfleet.cluster.launcher import supervisor_dir
    from rayfleet.cluster.preflight import runner_for
    from rayfleet.cluster.ssh import SSHError
    from rayfleet.errors import ClusterError

    if fleet.head_recovery.store != "redis":
        return ""
    pw = password(fleet, fleet_dir)
    n = node(fleet)
    did = ""
    if n is not None:
        try:
            r = runner_for(fleet, n, known_hosts).run(start_script(fleet), input=pw + "\n", timeout_s=60)
        except SSHError as e:
            raise ClusterError(f"Could not start Redis (head_recovery.redis) on {n.label}: {e.message}",
                               hint="Fix SSH to it ('rayfleet check') and run 'rayfleet up' again.") from e
        if r.rc == 3:
            raise ClusterError(f"head_recovery.store is redis, but {n.label} has no redis-server.",
                               hint="Install it there ('apt install redis-server' on Debian/Ubuntu), or name "
                                    "another node in head_recovery.redis.host, or use store: rocksdb.")
        if not r.ok:
            raise ClusterError(f"Redis did not start on {n.label}: {r.stderr.strip() or r.stdout.strip()}",
                               hint=f"Another process may hold port {fleet.head_recovery.redis.port} there: "
                                    "set head_recovery.redis.port, or stop it.")
        did = f"Redis {r.stdout.strip()} on {n.label}"
    try:
        runner_for(fleet, fleet.head, known_hosts).put_text(f"{supervisor_dir(fleet)}/{PASSWORD_FILE}".removeprefix("~/"), pw + "\n")
    except SSHError as e:
        raise ClusterError(f"Could not put Redis's password on the head: {e.message}",
                           hint="Fix SSH to the head ('rayfleet check') and run 'rayfleet up' again.") from e
    return did
