# rayfleet check's probe: NOT imported. preflight.py (through probe_session.py) sends this file's source to each
# host (`python -c`, the fleet venv's Python), where it talks to rayfleet over the SSH
# session's stdin/stdout, one JSON object per line.
import json, os, platform, selectors, shutil, socket, subprocess, sys, threading, time
cfg = json.loads(sys.argv[1])
mark = None
def bye():
    if mark:
        try:
            os.unlink(mark)
        except OSError:
            pass
    os._exit(0)
threading.Timer(cfg["hold_s"], bye).start()
def start(args):
    try:
        return subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, text=True)
    except OSError as e:
        return str(e)
def collect(p, timeout):
    if p is None:
        return None
    if isinstance(p, str):
        return {"rc": 127, "out": p}
    if isinstance(p, dict):
        return p
    try:
        out, _ = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        p.kill()
        return {"rc": -1, "out": f"timed out after {timeout} s"}
    return {"rc": p.returncode, "out": out}
def ray_version():
    # What `bin/ray --version` prints, without its ~3 s CPU of imports, when bin/ray is pip's
    # launcher for this Python: click's version_option prints the 'ray' distribution's version.
    try:
        import importlib.metadata, importlib.util
        with open(cfg["ray"]) as f:
            text = f.read(4096)
        first, _, body = text.partition("\n")
        if not (first.startswith("#!") and os.path.samefile(first[2:].strip(), sys.executable)):
            return None
        if "from ray.scripts.scripts import main" not in body or not os.access(cfg["ray"], os.X_OK):
            return None
        spec = importlib.util.find_spec("ray")
        if spec is None or not os.path.isfile(os.path.join(os.path.dirname(spec.origin), "scripts", "scripts.py")):
            return None
        return {"rc": 0, "out": "ray, version " + importlib.metadata.version("ray"), "how": "metadata"}
    except Exception:
        return None
if cfg["ray"]:
    cfg["ray"] = os.path.expanduser(cfg["ray"])
ray_p = (ray_version() or start([cfg["ray"], "--version"])) if cfg["ray"] else None
gpu_p = start(["nvidia-smi", "-L"]) if cfg["gpus"] else None
out = {"python": platform.python_version(), "machine": platform.machine()}
rt = cfg.get("runtime")
if rt:  # the runtime rayfleet ships: this lock's installed? others?
    root = os.path.expanduser(rt["root"])
    try:
        names = sorted(os.listdir(root))
    except OSError:
        names = []
    done = [n for n in names if os.path.isfile(os.path.join(root, n, rt["mark"]))]
    out["runtime"] = {"installed": rt["digest"] in done, "others": [n for n in done if n != rt["digest"]]}
try:
    import rayfleet
    out["rayfleet"] = rayfleet.__version__
except Exception as e:
    out["rayfleet_error"] = repr(e)
names = {}
for name in cfg.get("names") or []:   # the fleet's host names, as this node resolves them (IPv4 first)
    try:
        infos = socket.getaddrinfo(name, None, type=socket.SOCK_STREAM)
        v4 = [i[4][0] for i in infos if i[0] == socket.AF_INET]
        names[name] = (v4 or [infos[0][4][0]])[0]
    except (OSError, UnicodeError):
        names[name] = None
out["names"] = names
d = cfg["temp_dir"]
while not os.path.isdir(d):
    d = os.path.dirname(d)
st = os.statvfs(d)
out["disk_free_kib"] = st.f_bavail * st.f_frsize // 1024
taken, socks = [], []
for name, port in cfg["ports"].items():
    free = True
    for addr in ("0.0.0.0", cfg["ip"]):
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((addr, port))
        except OSError:
            free = False
        s.close()
        if not free:
            break
    if not free:
        taken.append(f"{name} {port}")
        continue
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        s.bind((cfg["ip"], port))
        s.listen(128)
        socks.append(s)
    except OSError:
        s.close()
out["taken"] = taken
out["listening"] = [s.getsockname()[1] for s in socks]
conns = []
def serve():
    # Accepted connections stay open until the probe exits: the connecting side closes
    # first, so TIME_WAIT lands on its ephemeral port, not on the Ray port checked here
    # (a later bind of that port without SO_REUSEADDR would fail for a minute).
    sel = selectors.DefaultSelector()
    for s in socks:
        sel.register(s, selectors.EVENT_READ)
    while socks:
        for key, _ in sel.select():
            try:
                conns.append(key.fileobj.accept()[0])
            except OSError:
                pass
threading.Thread(target=serve, daemon=True).start()
if cfg["storage"]:
    if not os.path.isdir(cfg["storage"]):
        out["storage"] = "does not exist"
    else:
        try:
            with open(os.path.join(cfg["storage"], cfg["mark"]), "w") as f:
                f.write(cfg["nonce"] + "\n")
            mark = os.path.join(cfg["storage"], cfg["mark"])
            out["storage"] = ""
        except OSError:
            out["storage"] = "not writable"
if cfg.get("gcs_store"):
    # head recovery's RocksDB directory: writable, and on a local filesystem (RocksDB on NFS corrupts)
    store = os.path.expanduser(cfg["gcs_store"])
    near = store
    while not os.path.exists(near) and os.path.dirname(near) != near:
        near = os.path.dirname(near)
    real = os.path.realpath(near)
    fstype, best = "?", ""
    try:
        with open("/proc/mounts") as f:
            for entry in f:
                parts = entry.split()
                mnt = parts[1].replace("\\040", " ")
                if (real == mnt or real.startswith(mnt.rstrip("/") + "/")) and len(mnt) >= len(best):
                    best, fstype = mnt, parts[2]
    except OSError:
        pass
    out["gcs_store"] = {"path": store, "fstype": fstype, "writable": os.access(near, os.W_OK)}
if cfg.get("redis_server"):
    # rayfleet runs the head's store here (head_recovery.store: redis): the distribution's redis-server
    try:
        out["redis"] = {"server": subprocess.run(["redis-server", "--version"], capture_output=True, text=True,
                                                 timeout=10).stdout.strip()}
    except (OSError, subprocess.SubprocessError):
        out["redis"] = {"server": ""}
if cfg.get("prometheus"):
    # monitoring on: the Prometheus binary rayfleet runs on the head (a path, or a name on PATH)
    want = os.path.expanduser(cfg["prometheus"])
    exe = want if "/" in want else (shutil.which(want) or shutil.which(want, path="/usr/bin:/usr/local/bin:/usr/sbin"))
    try:
        version = subprocess.run([exe, "--version"], capture_output=True, text=True, timeout=10) if exe else None
        out["prometheus"] = {"want": cfg["prometheus"], "version": (version.stdout + version.stderr).strip()
                             .splitlines()[0] if version and version.returncode == 0 else ""}
    except (OSError, subprocess.SubprocessError, IndexError):
        out["prometheus"] = {"want": cfg["prometheus"], "version": ""}
if cfg.get("redis_url"):
    # the fleet's own Redis, seen from the head: it answers (a PING; the password is checked by `up`)
    host, _, port = cfg["redis_url"].split("://", 1)[1].rpartition(":")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=3) as c:
            c.settimeout(3)
            if cfg["redis_url"].startswith("rediss://"):
                answer = "TLS"   # a TLS port: the connection is enough here
            else:
                c.sendall(b"PING\r\n")
                answer = c.recv(200).decode(errors="replace").strip()
        out["redis"] = {"url": cfg["redis_url"], "answer": answer}
    except (OSError, ValueError) as e:
        out["redis"] = {"url": cfg["redis_url"], "error": str(e)}
print(json.dumps(out), flush=True)
line = sys.stdin.readline()
if not line:
    bye()
print(json.dumps({"clock": time.time()}), flush=True)
go = json.loads(line)
bad = {}
def connect(i, host, port):
    try:
        socket.create_connection((host, port), timeout=3).close()
    except OSError as e:
        bad[i] = f"{host}:{port} ({e.strerror or e})"
ts = [threading.Thread(target=connect, args=(i, h, p)) for i, (h, p) in enumerate(go["targets"])]
for t in ts:
    t.start()
for t in ts:
    t.join()
res = {"unreachable": [bad[i] for i in sorted(bad)]}
if mark:
    try:
        seen = set(os.listdir(cfg["storage"]))
        res["seen"] = [m for m in go["marks"] if m in seen]
    except OSError as e:
        res["storage_error"] = f"can't list it: {e}"
res["ray"] = collect(ray_p, 60)
res["gpus"] = collect(gpu_p, 30)
print(json.dumps(res), flush=True)
sys.stdin.read()
bye()
