#!/usr/bin/env python3
"""The live pair against the bare server, and failover stalls.

Everything runs in one isolated topology per measurement (netns-scripts/topo:
client, a, b, a switch; no link to the machine's own interfaces).

throughput  nginx HTTPS keep-alive (wrk -t1 -c8, small page; and -c1 for the
            latency one request at a time sees) and redis
            (redis-benchmark SET/GET, -c 8) against the bare server on host a
            (the VIP added by hand, no ftnet) and against the ftnet pair (a
            records, b replays, output held until b acknowledges). Bare and
            pair alternate, RUNS times each, in the same run; medians and
            their ratios are reported. The server side is pinned to CPU 0
            (bare server, or a's replica), b's replica to CPU 1, the load
            tool is not pinned: on this 2-core machine the backup and the
            client share a core, which a real pair (two hosts) would not.
failover    KILLS times: a fresh pair, a keep-alive HTTPS request loop (one
            request every 10 ms on one connection), `topo kill` of host a
            (links cut, processes frozen then SIGKILLed), wait until b is
            live and the loop has run 2 s more. Per kill: detect_ms (silence
            before b decided, from b's status), takeover_ms (decision to
            live), and the stall the client saw (the longest gap between two
            responses minus the 10 ms pacing). Reports min/median/p90/max.
            --guard picks what settles a cut network: the policy
            prefer-availability (default), an `ftnet witness` or a
            one-member etcd on host w (then b also waits for a's lease to
            lapse before it promotes).

Usage (as root): bench/pair/run.py [--runs 3] [--seconds 8] [--kills 20]
                 [--only throughput|failover] [--guard policy|witness|etcd]
Prints a table and writes the raw figures to bench/pair/last.json (with a
witness: last-witness.json, last-etcd.json).
Needs nginx, redis-server, redis-tools, wrk, openssl, python3; builds ftnet.
"""
import argparse, json, os, re, statistics, subprocess, sys, tempfile, time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
FTNET = os.path.join(ROOT, "target/release/ftnet")
TOPO = os.path.join(ROOT, "netns-scripts/topo")
VIP = "10.77.0.100"
S = "/var/lib/ftnet-test"  # the per-host private state directory topo mounts

NGINX = f"""daemon off;
master_process on;
worker_processes 1;
pid {S}/nginx.pid;
error_log {S}/error.log warn;
events {{ worker_connections 512; }}
http {{
  access_log off;
  keepalive_timeout 300s;
  keepalive_requests 100000000;
  server {{
    listen {VIP}:443 ssl;
    ssl_certificate {S}/cert.pem;
    ssl_certificate_key {S}/key.pem;
    ssl_protocols TLSv1.2 TLSv1.3;
    root {S}/www;
  }}
}}
"""

LOOP = r"""
import http.client, ssl, sys, time
ctx = ssl.create_default_context(); ctx.check_hostname = False; ctx.verify_mode = ssl.CERT_NONE
conn = http.client.HTTPSConnection(sys.argv[1], 443, context=ctx, timeout=30)
stop = sys.argv[2]; ok = errors = 0; ports = set(); last = None; gap = 0.0
import os
while not os.path.exists(stop):
    try:
        conn.request("GET", "/index.html"); r = conn.getresponse(); b = r.read()
        ports.add(conn.sock.getsockname()[1])
        if r.status == 200 and b == b"<html>ftnet bench</html>\n": ok += 1
        else: errors += 1
    except Exception as e:
        errors += 1; print("error", repr(e), flush=True); conn.close()
    now = time.time()
    if last is not None: gap = max(gap, now - last - 0.01)
    last = now
    if ok == 1: print("first", flush=True)
    time.sleep(0.01)
print(f"ok {ok} errors {errors} connections {len(ports)} max_gap_ms {gap * 1000:.1f}", flush=True)
"""


def sh(*argv, check=True, **kw):
    return subprocess.run(argv, check=check, text=True, capture_output=True, **kw)


def ex(name, host, *argv, check=True, timeout=None):
    return sh(TOPO, "exec", f"{name}-{host}", "--", *argv, check=check, timeout=timeout)


class Topo:
    """One topology, always removed."""

    n = 0

    def __init__(self, work):
        Topo.n += 1
        self.name = f"bp{os.getpid() % 100000}n{Topo.n}"
        self.work = work
        self.procs = []
        sh(TOPO, "up", self.name)

    def bg(self, host, argv, out):
        f = open(out, "w")
        p = subprocess.Popen([TOPO, "exec", f"{self.name}-{host}", "--", *argv], stdout=f, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        self.procs.append(p)
        return p

    def install(self, server):
        for h in ("a", "b"):
            ex(self.name, h, "sh", "-c", f"cp -a {self.work}/files/. {S}/ && chmod -R a+rX {S} && chmod 777 {S}")

    def close(self):
        for p in self.procs:
            if p.poll() is None:
                p.kill()
                try:
                    p.wait(5)
                except subprocess.TimeoutExpired:
                    pass
        sh(TOPO, "down", self.name, check=False)

    def __enter__(self):
        return self

    def __exit__(self, *a):
        self.close()


def command(server):
    if server == "nginx":
        return ["nginx", "-c", f"{S}/nginx.conf"]
    return ["redis-server", "--bind", VIP, "--port", "6379", "--save", "", "--appendonly", "no", "--dir", S, "--protected-mode", "no"]


def port(server):
    return 443 if server == "nginx" else 6379


WITNESS = "10.77.0.20"


def guard_toml(guard):
    """The configuration's answer to a cut network: a policy or a witness."""
    if guard == "witness":
        return f'[witness]\nkind = "ftnet"\naddress = "{WITNESS}:7800"\n'
    if guard == "etcd":
        return f'[witness]\nkind = "etcd"\nendpoints = ["http://{WITNESS}:2379"]\n'
    return ""


def configs(work, server, policy="prefer-availability", guard="policy"):
    top = f'policy = "{policy}"\n' if guard == "policy" else ""
    for n, me, peer, mes, peers, cpu in (("a", "10.78.0.1", "10.78.0.2", "10.77.0.1", "10.77.0.2", 0), ("b", "10.78.0.2", "10.78.0.1", "10.77.0.2", "10.77.0.1", 1)):
        with open(f"{work}/{n}.toml", "w") as f:
            f.write(f"""{top}[service]
command = {json.dumps(command(server))}
vip = "{VIP}/24"
interface = "svc0"
ports = [{port(server)}]
[link]
key_file = "{work}/key"
{guard_toml(guard)}[node]
name = "{n}"
link = "{me}:7700"
peer_link = "{peer}:7700"
service = "{mes}:7701"
peer_service = "{peers}:7701"
control_socket = "{work}/{n}.sock"
cpu = {cpu}
""")


def work_dir(prefix):
    """A fresh working directory (readable by the hosts) holding the pair's key."""
    work = tempfile.mkdtemp(prefix=prefix)
    os.chmod(work, 0o755)
    with open(f"{work}/key", "wb") as f:
        f.write(os.urandom(32))
    os.chmod(f"{work}/key", 0o600)
    return work


def status(t, host):
    r = ex(t.name, host, FTNET, "status", "--json", "--socket", f"{t.work}/{host}.sock", check=False)
    try:
        return json.loads(r.stdout)
    except ValueError:
        return {}


def wait(pred, limit, what):
    end = time.time() + limit
    while time.time() < end:
        if pred():
            return
        time.sleep(0.05)
    raise RuntimeError(f"timed out waiting for {what}")


def wait_port(t, p):
    def up():
        return ex(t.name, "client", "python3", "-c", f"import socket; socket.create_connection(('{VIP}', {p}), timeout=0.5).close()", check=False).returncode == 0

    wait(up, 30, f"{VIP}:{p}")


def start_bare(t, server):
    ex(t.name, "a", "ip", "addr", "add", f"{VIP}/24", "dev", "svc0")
    t.bg("a", ["taskset", "-c", "0", *command(server)], f"{t.work}/bare.log")
    wait_port(t, port(server))


def start_witness(t, guard):
    """`ftnet witness` or a one-member etcd on host w; waits until it answers."""
    if guard == "witness":
        t.bg("w", [FTNET, "witness", "--init", "--listen", f"{WITNESS}:7800", "--key", f"{t.work}/key", "--state", f"{t.work}/{t.name}.witness"], f"{t.work}/witness.log")
        time.sleep(0.2)
    elif guard == "etcd":
        d = f"{t.work}/{t.name}.etcd"
        peer = "http://127.0.0.1:2380"
        t.bg("w", ["etcd", "--data-dir", d, "--listen-client-urls", f"http://{WITNESS}:2379", "--advertise-client-urls", f"http://{WITNESS}:2379",
                   "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer, "--initial-cluster", f"default={peer}",
                   "--heartbeat-interval", "20", "--election-timeout", "100"], f"{t.work}/witness.log")
        probe = f"import urllib.request; urllib.request.urlopen('http://{WITNESS}:2379/health', timeout=1)"
        wait(lambda: ex(t.name, "w", "python3", "-c", probe, check=False).returncode == 0, 20, "etcd")


def start_pair(t, server, policy="prefer-availability", guard="policy"):
    configs(t.work, server, policy, guard)
    t.bg("a", [FTNET, "up", "--config", f"{t.work}/a.toml", "--role", "primary"], f"{t.work}/a.log")
    time.sleep(0.2)
    t.bg("b", [FTNET, "up", "--config", f"{t.work}/b.toml", "--role", "backup"], f"{t.work}/b.log")
    try:
        wait(lambda: status(t, "a").get("state") == "replicating" and status(t, "b").get("state") == "replicating", 60, "the pair")
    except RuntimeError:
        for h in "ab":
            sys.stderr.write(open(f"{t.work}/{h}.log").read()[-3000:])
        raise
    wait_port(t, port(server))


def wrk(t, seconds, conns=8):
    r = ex(t.name, "client", "wrk", "-t1", f"-c{conns}", f"-d{seconds}s", "--latency", f"https://{VIP}/index.html", timeout=seconds + 60)
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", r.stdout).group(1))

    def ms(label):
        m = re.search(rf"^\s+{label}%\s+([\d.]+)(us|ms|s)\s*$", r.stdout, re.M)
        v = float(m.group(1))
        return v / 1000 if m.group(2) == "us" else v * 1000 if m.group(2) == "s" else v

    errors = re.search(r"Non-2xx or 3xx responses: (\d+)|Socket errors: .*", r.stdout)
    return {"rps": rps, "p50_ms": ms("50"), "p99_ms": ms("99"), "errors": errors.group(0) if errors else None}


def redis_bench(t, n):
    r = ex(t.name, "client", "redis-benchmark", "-h", VIP, "-p", "6379", "-c", "8", "-n", str(n), "-t", "set,get", "--csv", timeout=300)
    out = {}
    rows = [line.replace('"', "").split(",") for line in r.stdout.strip().splitlines()]
    head = rows[0]
    for row in rows[1:]:
        d = dict(zip(head, row))
        out[d["test"]] = {"rps": float(d["rps"]), "p50_ms": float(d["p50_latency_ms"]), "p99_ms": float(d["p99_latency_ms"])}
    return out


def throughput(work, runs, seconds):
    res = {"nginx": {"bare": [], "pair": []}, "nginx_c1": {"bare": [], "pair": []}, "redis": {"bare": [], "pair": []}}
    for i in range(runs):
        for server in ("nginx", "redis"):
            for mode in ("bare", "pair"):
                with Topo(work) as t:
                    t.install(server)
                    (start_bare if mode == "bare" else start_pair)(t, server)
                    if server == "nginx":
                        wrk(t, 1)  # warm-up: handshakes, caches
                        r = wrk(t, seconds)
                        c1 = wrk(t, max(2, seconds // 2), conns=1)
                        res["nginx_c1"][mode].append(c1)
                        print(f"run {i + 1} nginx -c1 {mode}: {json.dumps(c1)}", flush=True)
                    else:
                        redis_bench(t, 2000)
                        r = redis_bench(t, 40000)
                    res[server][mode].append(r)
                    print(f"run {i + 1} {server} {mode}: {json.dumps(r)}", flush=True)
    return res


def failover(work, kills, guard):
    out = []
    for i in range(kills):
        with Topo(work) as t:
            t.install("nginx")
            start_witness(t, guard)
            start_pair(t, "nginx", guard=guard)
            stop = f"{work}/stop"
            if os.path.exists(stop):
                os.unlink(stop)
            with open(f"{work}/loop.py", "w") as f:
                f.write(LOOP)
            p = t.bg("client", ["python3", f"{work}/loop.py", VIP, stop], f"{work}/loop.out")
            wait(lambda: "first" in open(f"{work}/loop.out").read(), 20, "the request loop")
            time.sleep(1.0)
            sh(TOPO, "kill", f"{t.name}-a")
            wait(lambda: status(t, "b").get("state") == "live", 20, "b live")
            time.sleep(2.0)
            open(stop, "w").close()
            p.wait(40)
            last = open(f"{work}/loop.out").read().strip().splitlines()[-1]
            st = status(t, "b")
            m = re.match(r"ok (\d+) errors (\d+) connections (\d+) max_gap_ms ([\d.]+)", last)
            row = {"detect_ms": st.get("detect_ms"), "takeover_ms": st.get("takeover_ms"), "stall_ms": float(m.group(4)), "errors": int(m.group(2)), "connections": int(m.group(3))}
            out.append(row)
            print(f"kill {i + 1}: {json.dumps(row)}", flush=True)
    return out


def dist(xs):
    xs = sorted(x for x in xs if x is not None)
    if not xs:
        return "n/a"
    p90 = xs[min(len(xs) - 1, int(round(0.9 * (len(xs) - 1))))]
    return f"min {xs[0]:.0f}  median {statistics.median(xs):.0f}  p90 {p90:.0f}  max {xs[-1]:.0f}  (n={len(xs)})"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--seconds", type=int, default=8)
    ap.add_argument("--kills", type=int, default=20)
    ap.add_argument("--only", choices=["throughput", "failover"])
    ap.add_argument("--guard", choices=["policy", "witness", "etcd"], default="policy",
                    help="failover: prefer-availability (no witness), an ftnet witness, or etcd on host w")
    a = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("bench/pair/run.py: run as root (namespaces, NFQUEUE, ptrace)")
    sh("cargo", "build", "--release", "--quiet", cwd=ROOT)
    work = work_dir("ftnet-bench-pair.")
    os.makedirs(f"{work}/files/www")
    sh("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "7", "-subj", "/CN=ftnet-bench", "-keyout", f"{work}/files/key.pem", "-out", f"{work}/files/cert.pem")
    with open(f"{work}/files/nginx.conf", "w") as f:
        f.write(NGINX)
    with open(f"{work}/files/www/index.html", "w") as f:
        f.write("<html>ftnet bench</html>\n")
    result = {"machine": sh("nproc").stdout.strip() + " CPUs", "kernel": os.uname().release}
    if a.only in (None, "throughput"):
        t = throughput(work, a.runs, a.seconds)
        result["throughput"] = t
        print("\n== throughput (medians of %d runs; ratio = pair / bare)" % a.runs)
        med = lambda rows, k: statistics.median(r[k] for r in rows)
        for key, label in (("nginx", "nginx https -c8"), ("nginx_c1", "nginx https -c1")):
            n = t[key]
            for k in ("rps", "p50_ms", "p99_ms"):
                b, p = med(n["bare"], k), med(n["pair"], k)
                print(f"{label} {k:7} bare {b:10.2f}  pair {p:10.2f}  ratio {p / b:.3f}")
        for test in ("SET", "GET"):
            for k in ("rps", "p50_ms", "p99_ms"):
                b = statistics.median(r[test][k] for r in t["redis"]["bare"])
                p = statistics.median(r[test][k] for r in t["redis"]["pair"])
                print(f"redis {test} {k:7} bare {b:10.2f}  pair {p:10.2f}  ratio {p / b:.3f}")
    if a.only in (None, "failover"):
        f = failover(work, a.kills, a.guard)
        result["failover"] = f
        result["guard"] = a.guard
        print(f"\n== failover over {len(f)} kills of host a (ms), guard: {a.guard}")
        print("detect   ", dist([r["detect_ms"] for r in f]))
        print("takeover ", dist([r["takeover_ms"] for r in f]))
        print("stall    ", dist([r["stall_ms"] for r in f]))
        print("client errors", sum(r["errors"] for r in f), "reconnects", sum(r["connections"] - 1 for r in f))
    name = "last.json" if a.guard == "policy" else f"last-{a.guard}.json"
    with open(os.path.join(ROOT, "bench/pair", name), "w") as fh:
        json.dump(result, fh, indent=1)
    subprocess.run(["rm", "-rf", work])


if __name__ == "__main__":
    main()
