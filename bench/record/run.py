#!/usr/bin/env python3
"""nginx HTTPS keep-alive throughput, bare vs under `ftnet record`.

Placement: the server side (bare nginx master + worker, or ftnet's supervisor
plus the recorded nginx tree) is pinned to CPU 0; wrk runs on CPU 1. Both
configurations serve the same files with the same config in the same run,
alternating, RUNS times each; medians are reported.

Per workload it reports: requests/s bare and recorded and their ratio, CPU 0
seconds per request (busy time of the server's CPU from /proc/stat), and for
recorded runs the intercepted calls, hand-overs and log bytes per request.
Each recorded log is then replayed and its replay time compared with the
recording's wall time.

Usage (as root): bench/record/run.py [--runs 5] [--seconds 5]
Needs: nginx, wrk, openssl; builds ftnet in release mode.
"""
import argparse, os, re, shutil, signal, statistics, subprocess, sys, tempfile, time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
FTNET = os.path.join(ROOT, "target/release/ftnet")
PORT = 7811

CONF = """daemon off;
master_process on;
worker_processes 1;
pid {d}/state/nginx.pid;
error_log {d}/state/error.log warn;
events {{ worker_connections 512; }}
http {{
  access_log {d}/state/access.log;
  client_body_temp_path {d}/state/body;
  server {{
    listen 127.0.0.1:{port} ssl;
    ssl_certificate {d}/cert.pem;
    ssl_certificate_key {d}/key.pem;
    ssl_protocols TLSv1.2 TLSv1.3;
    ssl_session_cache shared:SSL:1m;
    root {d}/www;
    location /post {{ return 200 "posted\\n"; }}
  }}
}}
"""

MIX = """local n = 0
request = function()
  n = n + 1
  if n % 10 == 0 then return wrk.format("GET", "/big.bin")
  elseif n % 3 == 0 then return wrk.format("POST", "/post", nil, string.rep("u", 30000)) end
  return wrk.format("GET", "/index.html")
end
"""

WORKLOADS = [("small page (24 B)", "/index.html", None), ("16 KiB page", "/page16k.html", None), ("mix: pages, 3 MiB file, 30 KB POSTs", "/", "mix.lua")]


def cpu0_busy():
    with open("/proc/stat") as f:
        for line in f:
            if line.startswith("cpu0 "):
                v = [int(x) for x in line.split()[1:]]
                return (sum(v) - v[3] - v[4]) / os.sysconf("SC_CLK_TCK")
    return 0.0


def wait_port(port, limit=20):
    import socket
    end = time.time() + limit
    while time.time() < end:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {port}")


def wrk(d, path, script, seconds):
    cmd = ["taskset", "-c", "1", "wrk", "-t1", "-c8", f"-d{seconds}s"]
    if script:
        cmd += ["-s", os.path.join(d, script)]
    cmd.append(f"https://127.0.0.1:{PORT}{path}")
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 30).stdout
    reqs = int(re.search(r"(\d+) requests in", out).group(1))
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    return reqs, rps


def run_once(d, path, script, seconds, recorded):
    shutil.rmtree(os.path.join(d, "state"), ignore_errors=True)
    os.makedirs(os.path.join(d, "state"))
    os.chmod(os.path.join(d, "state"), 0o777)
    conf = os.path.join(d, "nginx.conf")
    log = os.path.join(d, "bench.log")
    if recorded:
        cmd = [FTNET, "record", "--cpu", "0", "--log", log, "--state", os.path.join(d, "state"), "--", "nginx", "-c", conf]
    else:
        cmd = ["taskset", "-c", "0", "nginx", "-c", conf]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        wait_port(PORT)
        time.sleep(0.3)
        c0, t0 = cpu0_busy(), time.time()
        reqs, rps = wrk(d, path, script, seconds)
        cpu = cpu0_busy() - c0
        wall = time.time() - t0
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            _, err = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            _, err = proc.communicate()
    res = {"reqs": reqs, "rps": rps, "cpu_per_req_us": cpu / max(reqs, 1) * 1e6}
    if recorded:
        m = re.search(r"(\d+) intercepted calls \((\d+) native\), (\d+) hand-overs.*?(\d+) log events, (\d+) log bytes, supervisor ([\d.]+) ms", err)
        if not m:
            raise RuntimeError("no ftnet summary:\n" + err)
        calls, _, hand, _, logb, sup = m.groups()
        res.update(calls_per_req=int(calls) / reqs, handovers_per_req=int(hand) / reqs, log_bytes_per_req=int(logb) / reqs,
                   sup_ns_per_call=float(sup) * 1e6 / int(calls), record_wall=wall)
        t = time.time()
        r = subprocess.run([FTNET, "replay", "--cpu", "0", "--log", log], capture_output=True, text=True, timeout=600)
        res["replay_ok"] = r.returncode == 0
        res["replay_s"] = time.time() - t
        if r.returncode != 0:
            print(r.stderr, file=sys.stderr)
    return res


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--seconds", type=int, default=5)
    a = ap.parse_args()
    subprocess.run(["cargo", "build", "--release", "--quiet"], cwd=ROOT, check=True)
    d = tempfile.mkdtemp(prefix="ftnet-bench-")
    os.chmod(d, 0o755)
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "7", "-subj", "/CN=localhost",
                    "-keyout", f"{d}/key.pem", "-out", f"{d}/cert.pem"], check=True, capture_output=True)
    os.makedirs(f"{d}/www")
    open(f"{d}/www/index.html", "w").write("<html>small page</html>\n")
    open(f"{d}/www/page16k.html", "w").write("x" * 16384)
    with open(f"{d}/www/big.bin", "wb") as f:
        f.write(os.urandom(3 << 20))
    open(f"{d}/mix.lua", "w").write(MIX)
    open(f"{d}/nginx.conf", "w").write(CONF.format(d=d, port=PORT))
    subprocess.run(["chmod", "-R", "a+rX", d])
    print(f"# nginx HTTPS keep-alive, wrk -t1 -c8 -d{a.seconds}s; server on CPU 0, wrk on CPU 1; {a.runs} runs each, medians")
    print("| workload | bare req/s | recorded req/s | ratio | CPU0 µs/req bare | CPU0 µs/req recorded | calls/req | hand-overs/req | log bytes/req | supervisor ns/call | replay s / record s |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for name, path, script in WORKLOADS:
        bare, rec = [], []
        for _ in range(a.runs):
            bare.append(run_once(d, path, script, a.seconds, False))
            rec.append(run_once(d, path, script, a.seconds, True))
        med = lambda xs, k: statistics.median(x[k] for x in xs)
        ok = all(r["replay_ok"] for r in rec)
        print(f"| {name} | {med(bare,'rps'):.0f} | {med(rec,'rps'):.0f} | {med(rec,'rps')/med(bare,'rps'):.2f} | "
              f"{med(bare,'cpu_per_req_us'):.1f} | {med(rec,'cpu_per_req_us'):.1f} | {med(rec,'calls_per_req'):.2f} | "
              f"{med(rec,'handovers_per_req'):.4f} | {med(rec,'log_bytes_per_req'):.0f} | {med(rec,'sup_ns_per_call'):.0f} | "
              f"{statistics.median(r['replay_s']/r['record_wall'] for r in rec):.2f}{'' if ok else ' (REPLAY FAILED)'} |", flush=True)
    shutil.rmtree(d, ignore_errors=True)


if __name__ == "__main__":
    main()
