//! Unmodified servers from Debian's packages recorded under real load and
//! replayed: nginx (HTTPS, TLS 1.2 and 1.3, master + workers), redis-server
//! (pipelined benchmark plus EXPIRE and RANDOMKEY), `openssl s_server -WWW`.
//! Replay must consume the whole log and match every output digest. A served
//! file changed between record and replay must be named.
//! Needs root, nginx, redis-server, redis-tools, openssl, curl and wrk.

#[path = "support/ftnet.rs"]
mod cli;

use cli::*;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

fn cert(dir: &Path) {
    let st = Command::new("openssl")
        .args(["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "30", "-subj", "/CN=localhost"])
        .arg("-keyout")
        .arg(dir.join("key.pem"))
        .arg("-out")
        .arg(dir.join("cert.pem"))
        .stderr(Stdio::null())
        .status()
        .expect("openssl runs");
    assert!(st.success(), "certificate generation failed");
}

fn curl(args: &[&str]) -> Vec<u8> {
    let out = Command::new("curl").args(["-sk", "--max-time", "20"]).args(args).output().expect("curl runs");
    assert!(out.status.success(), "curl {args:?} failed: {}", text(&out.stderr));
    out.stdout
}

fn sha256(b: &[u8]) -> String {
    let mut c = Command::new("sha256sum").stdin(Stdio::piped()).stdout(Stdio::piped()).spawn().expect("sha256sum");
    use std::io::Write;
    c.stdin.take().expect("stdin").write_all(b).expect("write");
    text(&c.wait_with_output().expect("wait").stdout).split_whitespace().next().unwrap_or("").to_string()
}

const MIX_LUA: &str = r#"
local n = 0
request = function()
  n = n + 1
  if n % 10 == 0 then
    return wrk.format("GET", "/big.bin")
  elseif n % 3 == 0 then
    return wrk.format("POST", "/post", {["Content-Type"] = "application/octet-stream"}, string.rep("u", 30000))
  end
  return wrk.format("GET", "/index.html")
end
"#;

#[test]
fn nginx_https_master_and_workers_under_load() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let (www, state) = (d.join("www"), d.join("state"));
    std::fs::create_dir_all(&www).expect("www");
    std::fs::create_dir_all(&state).expect("state");
    cert(d);
    let big = content(3 << 20, 7);
    std::fs::write(www.join("big.bin"), &big).expect("big");
    std::fs::write(www.join("index.html"), "<html>small page</html>\n").expect("index");
    Command::new("chmod").args(["-R", "a+rwX"]).arg(d).status().expect("chmod");
    let port = free_port();
    let conf = format!(
        r#"daemon off;
master_process on;
worker_processes 2;
pid {s}/nginx.pid;
error_log {s}/error.log info;
events {{ worker_connections 256; }}
http {{
  access_log {s}/access.log;
  client_body_temp_path {s}/body;
  proxy_temp_path {s}/proxy;
  fastcgi_temp_path {s}/fastcgi;
  uwsgi_temp_path {s}/uwsgi;
  scgi_temp_path {s}/scgi;
  server {{
    listen 127.0.0.1:{port} ssl;
    ssl_certificate {d}/cert.pem;
    ssl_certificate_key {d}/key.pem;
    ssl_protocols TLSv1.2 TLSv1.3;
    ssl_session_cache shared:SSL:1m;
    root {w};
    location /post {{ return 200 "posted\n"; }}
  }}
}}
"#,
        s = state.display(),
        d = d.display(),
        w = www.display()
    );
    let conf_path = d.join("nginx.conf");
    std::fs::write(&conf_path, conf).expect("conf");
    let log = d.join("nginx.log");
    let rec = record_bg(&log, &[&state], &["nginx", "-c", conf_path.to_str().expect("utf8")]);
    wait_port(port, Duration::from_secs(20));
    let url = format!("https://127.0.0.1:{port}");
    assert_eq!(curl(&["--tlsv1.3", &format!("{url}/index.html")]), b"<html>small page</html>\n");
    assert_eq!(curl(&["--tlsv1.2", "--tls-max", "1.2", &format!("{url}/index.html")]), b"<html>small page</html>\n");
    assert_eq!(sha256(&curl(&[&format!("{url}/big.bin")])), sha256(&big));
    assert_eq!(curl(&["--data-binary", "hello", &format!("{url}/post")]), b"posted\n");
    let lua = d.join("mix.lua");
    std::fs::write(&lua, MIX_LUA).expect("lua");
    let wrk = Command::new("wrk")
        .args(["-t2", "-c8", "-d3s", "-s"])
        .arg(&lua)
        .arg(format!("{url}/"))
        .output()
        .expect("wrk runs");
    let report = text(&wrk.stdout);
    assert!(report.contains("requests in"), "wrk: {report} {}", text(&wrk.stderr));
    assert!(!report.contains("Non-2xx"), "wrk saw errors: {report}");
    rec.signal("TERM");
    let out = rec.wait(Duration::from_secs(60));
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_replays(&log);
    // A served file changed between record and replay is named.
    std::fs::write(www.join("index.html"), "<html>SMALL page</html>\n").expect("change");
    let r = replay(&log);
    assert_eq!(r.status.code(), Some(3), "{}", text(&r.stderr));
    assert!(text(&r.stderr).contains(&format!("{}/index.html", www.display())), "{}", text(&r.stderr));
}

#[test]
fn redis_pipelined_mix() {
    let dir = tempfile::tempdir().expect("tempdir");
    let state = dir.path().join("state");
    std::fs::create_dir(&state).expect("state");
    let port = free_port().to_string();
    let log = dir.path().join("redis.log");
    let rec = record_bg(
        &log,
        &[&state],
        &[
            "redis-server",
            "--port",
            &port,
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            state.to_str().expect("utf8"),
            "--daemonize",
            "no",
        ],
    );
    wait_port(port.parse().expect("port"), Duration::from_secs(20));
    let bench = Command::new("redis-benchmark")
        .args(["-p", &port, "-q", "-n", "20000", "-P", "16", "-c", "4", "-r", "1000", "-t", "set,get,incr,lpush"])
        .output()
        .expect("redis-benchmark runs");
    assert!(bench.status.success(), "{}", text(&bench.stderr));
    let cli = |args: &[&str]| {
        let o = Command::new("redis-cli").args(["-p", &port]).args(args).output().expect("redis-cli");
        text(&o.stdout).trim().to_string()
    };
    assert_eq!(cli(&["set", "k", "v"]), "OK");
    assert_eq!(cli(&["expire", "k", "100"]), "1");
    assert!(!cli(&["randomkey"]).is_empty());
    assert_eq!(cli(&["incrby", "counter", "5"]), "5");
    rec.signal("TERM");
    let out = rec.wait(Duration::from_secs(60));
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_replays(&log);
}

#[test]
fn openssl_s_server_www() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    cert(d);
    let big = content(500_000, 3);
    std::fs::write(d.join("big.bin"), &big).expect("big");
    std::fs::write(d.join("index.html"), "s_server page\n").expect("index");
    let port = free_port().to_string();
    let log = d.join("ossl.log");
    let mut c = Command::new(ftnet());
    c.current_dir(d).args(["record", "--cpu", &cpu(), "--log"]).arg(&log);
    c.args(["--", "openssl", "s_server", "-WWW", "-accept", &port, "-cert", "cert.pem", "-key", "key.pem"]);
    c.stdout(Stdio::piped()).stderr(Stdio::piped());
    let rec = Guard(Some(c.spawn().expect("spawn")));
    wait_port(port.parse().expect("port"), Duration::from_secs(20));
    let url = format!("https://127.0.0.1:{port}");
    for _ in 0..3 {
        assert_eq!(curl(&["--tlsv1.3", &format!("{url}/index.html")]), b"s_server page\n");
        assert_eq!(sha256(&curl(&[&format!("{url}/big.bin")])), sha256(&big));
    }
    assert_eq!(curl(&["--tlsv1.2", "--tls-max", "1.2", &format!("{url}/index.html")]), b"s_server page\n");
    rec.signal("TERM");
    let out = rec.wait(Duration::from_secs(60));
    assert_eq!(out.status.code(), Some(143), "s_server dies of SIGTERM: {}", text(&out.stderr));
    let mut c = Command::new(ftnet());
    c.current_dir(d).args(["replay", "--cpu", &cpu(), "--log"]).arg(&log);
    let r = c.output().expect("replay");
    assert_eq!(r.status.code(), Some(0), "{}", text(&r.stderr));
}
