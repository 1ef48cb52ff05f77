//! The control socket: `ftnet status` and `ftnet promote` talk to the
//! running daemon over a unix socket (mode 0600), one request line and one
//! JSON reply per connection.
//!
//! Requests: `status`, `promote`, `promote --force`, `signal N`.

use super::shared::{NodeEvent, Shared};
use crate::link::Role;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::sync::Arc;

/// Serves the control socket on its own thread.
pub fn spawn(shared: Arc<Shared>, status: Arc<dyn Fn() -> serde_json::Value + Send + Sync>) -> std::io::Result<()> {
    let path = shared.cfg.node.control_socket.clone();
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let _ = std::fs::remove_file(&path);
    let listener = UnixListener::bind(&path)?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
    std::thread::Builder::new().name("ftnet-control".into()).spawn(move || {
        for conn in listener.incoming().flatten() {
            let _ = serve(&shared, &status, conn);
        }
    })?;
    Ok(())
}

fn serve(
    shared: &Shared,
    status: &Arc<dyn Fn() -> serde_json::Value + Send + Sync>,
    conn: UnixStream,
) -> std::io::Result<()> {
    let _ = conn.set_read_timeout(Some(std::time::Duration::from_secs(5)));
    let mut line = String::new();
    BufReader::new(&conn).read_line(&mut line)?;
    let words: Vec<&str> = line.split_whitespace().collect();
    let reply = match words.as_slice() {
        ["status"] => status(),
        ["promote"] if shared.role() == Role::Primary => serde_json::json!({
            "ok": false,
            "error": "this node is the primary: run `ftnet promote` on the backup (or `ftnet promote --force` here to go on alone without a backup)"
        }),
        ["promote", "--force"] if shared.role() == Role::Primary => {
            shared.event(NodeEvent::GoAlone);
            serde_json::json!({"ok": true, "requested": "go on alone"})
        }
        ["promote"] => {
            shared.event(NodeEvent::PromoteRequested { force: false });
            serde_json::json!({"ok": true, "requested": "promote"})
        }
        ["promote", "--force"] => {
            shared.event(NodeEvent::PromoteRequested { force: true });
            serde_json::json!({"ok": true, "requested": "promote --force"})
        }
        ["signal", n] => match n.parse::<i32>() {
            Ok(sig) if (1..=64).contains(&sig) => {
                shared.event(NodeEvent::SignalRequested(sig));
                serde_json::json!({"ok": true, "requested": format!("signal {sig}")})
            }
            _ => serde_json::json!({"ok": false, "error": format!("bad signal number {n}")}),
        },
        _ => serde_json::json!({"ok": false, "error": format!("unknown request {:?}", line.trim())}),
    };
    let mut w = &conn;
    writeln!(w, "{reply}")
}

/// Client side: sends `request` to the daemon at `socket` and returns the
/// JSON reply.
pub fn request(socket: &Path, request: &str) -> Result<serde_json::Value, String> {
    let mut s =
        UnixStream::connect(socket).map_err(|e| format!("{}: {e} (is `ftnet up` running?)", socket.display()))?;
    let _ = s.set_read_timeout(Some(std::time::Duration::from_secs(10)));
    writeln!(s, "{request}").map_err(|e| format!("{}: {e}", socket.display()))?;
    let mut line = String::new();
    BufReader::new(&s).read_line(&mut line).map_err(|e| format!("{}: {e}", socket.display()))?;
    serde_json::from_str(&line).map_err(|e| format!("{}: bad reply {line:?}: {e}", socket.display()))
}
