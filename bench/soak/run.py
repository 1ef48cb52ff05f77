#!/usr/bin/env python3
"""Soak: a live pair serving many short connections, watched for growth.

One isolated topology (netns-scripts/topo). ftnet up on a (primary) and b
(backup) serving redis; one client connection stays open the whole time,
while a client opens short connections as fast as the pair answers (connect,
INCR, QUIT, read until the server closes) for --seconds. Every --every seconds the
driver samples each daemon's resident memory (VmRSS of the `ftnet up`
process, not the replica) and CPU seconds, and b's `connections_tracked`.
At the end host a is killed; the open connection must answer from b.

What it shows: whether memory, CPU per connection or tracked state grow with
the number of connections served (they must level off: ended connections
are forgotten a minute after they end, so a run shorter than ~90 s cannot
tell). Growth is reported per 10,000 connections served (MiB, tracked
connections) and CPU µs per connection, for each half of the run.

Usage (as root): bench/soak/run.py [--seconds 180] [--every 10]
                 [--ftnet PATH]    # another build, e.g. an older commit's
Writes the samples to bench/soak/last.json. Needs redis-server, python3.
"""
import argparse, importlib.util, json, os, subprocess, sys, time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
spec = importlib.util.spec_from_file_location("pair_bench", os.path.join(ROOT, "bench/pair/run.py"))
pair = importlib.util.module_from_spec(spec)
spec.loader.exec_module(pair)

CLIENT = r"""
import os, socket, sys, time
host, stop = sys.argv[1], sys.argv[2]
keep = socket.create_connection((host, 6379), timeout=10)
def incr(s):
    s.sendall(b"INCR soak\r\n")
    r = s.recv(64)
    if not r.startswith(b":"): raise SystemExit(f"bad reply {r!r}")
    return int(r[1:])
incr(keep)
n = errors = 0
last = time.time()
while not os.path.exists(stop):
    try:
        # INCR, then QUIT: the server closes first, so TIME_WAIT stays on
        # the server and the client's ports never run out.
        s = socket.create_connection((host, 6379), timeout=10)
        incr(s)
        s.sendall(b"QUIT\r\n")
        while s.recv(64):
            pass
        s.close()
        n += 1
    except OSError as e:
        errors += 1
        print("error", repr(e), flush=True)
        time.sleep(0.1)
    if time.time() - last >= 1:
        print("served", n, "errors", errors, flush=True)
        last = time.time()
print("served", n, "errors", errors, flush=True)
while not os.path.exists(stop + ".failover"):
    time.sleep(0.05)
v = incr(keep)
print("kept connection answered", v, flush=True)
"""


def proc(pid):
    """(VmRSS MiB, CPU seconds) of a process."""
    rss = 0.0
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1]) / 1024
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    tick = os.sysconf("SC_CLK_TCK")
    return rss, (int(fields[11]) + int(fields[12])) / tick


def served(out):
    lines = [l for l in open(out).read().splitlines() if l.startswith("served")]
    return int(lines[-1].split()[1]) if lines else 0


def per_conn(part, key, scale):
    """Change of `key` per connection served across `part`, times `scale`."""
    if len(part) < 2 or part[-1]["served"] <= part[0]["served"] or part[0][key] is None or part[-1][key] is None:
        return None
    return round((part[-1][key] - part[0][key]) * scale / (part[-1]["served"] - part[0]["served"]), 2)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=int, default=180)
    ap.add_argument("--every", type=int, default=10)
    ap.add_argument("--ftnet", help="the ftnet binary (default: a release build of this tree)")
    a = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("bench/soak/run.py: run as root (namespaces, NFQUEUE, ptrace)")
    if a.ftnet:
        pair.FTNET = os.path.abspath(a.ftnet)
    else:
        pair.sh("cargo", "build", "--release", "--quiet", cwd=ROOT)
    work = pair.work_dir("ftnet-bench-soak.")
    os.makedirs(f"{work}/files")
    with open(f"{work}/client.py", "w") as f:
        f.write(CLIENT)
    samples = []
    result = {"ftnet": pair.FTNET, "seconds": a.seconds, "kernel": os.uname().release}
    try:
        with pair.Topo(work) as t:
            t.install("redis")
            pair.start_pair(t, "redis")
            pids = {"a": t.procs[0].pid, "b": t.procs[1].pid}
            stop = f"{work}/stop"
            out = f"{work}/client.out"
            c = t.bg("client", ["python3", f"{work}/client.py", pair.VIP, stop], out)
            t0 = time.time()
            while time.time() - t0 < a.seconds:
                time.sleep(a.every)
                st = pair.status(t, "b")
                (ra, ca), (rb, cb) = proc(pids["a"]), proc(pids["b"])
                s = {"t": round(time.time() - t0, 1), "served": served(out), "a_rss_mib": round(ra, 1), "b_rss_mib": round(rb, 1),
                     "a_cpu_s": ca, "b_cpu_s": cb, "b_tracked": st.get("connections_tracked"), "b_state": st.get("state")}
                samples.append(s)
                print(json.dumps(s), flush=True)
            open(stop, "w").close()
            time.sleep(1)
            pair.sh(pair.TOPO, "kill", f"{t.name}-a")
            pair.wait(lambda: pair.status(t, "b").get("state") == "live", 20, "b live")
            open(stop + ".failover", "w").close()
            c.wait(30)
            text = open(out).read()
            result["client_tail"] = text.splitlines()[-2:]
            result["kept_connection_ok"] = "kept connection answered" in text
            result["errors"] = int(text.split("errors")[-1].split()[0]) if "errors" in text else None
    finally:
        subprocess.run(["rm", "-rf", work])
    result["samples"] = samples
    end = samples[-1]["t"]
    halves = {"first_half": [s for s in samples if s["t"] <= end / 2], "second_half": [s for s in samples if s["t"] >= end / 2]}
    for name, part in halves.items():
        for key in ("a_rss_mib", "b_rss_mib", "b_tracked"):
            result[f"{key}_per_10k_conns_{name}"] = per_conn(part, key, 10000)
        for h in "ab":
            result[f"{h}_cpu_us_per_conn_{name}"] = per_conn(part, f"{h}_cpu_s", 1e6)
    print(json.dumps({k: v for k, v in result.items() if k != "samples"}, indent=1))
    last = samples[-1]
    print(f"connections served: {last['served']} ({last['served'] / last['t']:.0f}/s)")
    with open(os.path.join(HERE, "last.json"), "w") as f:
        json.dump(result, f, indent=1)
    if not result.get("kept_connection_ok"):
        sys.exit("the connection kept open did not answer after the failover")


if __name__ == "__main__":
    main()
