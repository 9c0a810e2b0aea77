//! Network namespaces for tests of a replica cut off from the network: each namespace is
//! joined to this one by a veth pair, and a replica runs inside it. Cutting the pair's
//! link drops every packet both ways, as a failed switch or a partitioned host would.
//! Needs root and `ip` (iproute2); [`Namespace::create`] says why when it cannot.

use std::net::{Ipv4Addr, SocketAddr};
use std::process::{Command, Stdio};

use tokio::net::{TcpListener, TcpStream};
use tokio::task::{JoinHandle, JoinSet};

/// Runs `ip` with `args`; its complaint when it fails.
fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run `ip`: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "`ip {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// A network namespace with a point-to-point link to this one; removed on drop.
pub struct Namespace {
    pub name: String,
    /// This side's end of the link.
    link: String,
    /// This side's address on the link: what the namespace reaches us at.
    pub host: Ipv4Addr,
    /// The namespace's address on the link.
    pub inside: Ipv4Addr,
}

impl Namespace {
    /// Namespace number `n` (0–63) of this test process, on its own /30 in 10.213.x.0/24.
    pub fn create(n: u8) -> Result<Namespace, String> {
        let pid = std::process::id();
        let subnet = (pid % 250) as u8 + 1;
        let base = n.checked_mul(4).ok_or("too many namespaces")?;
        let ns = Namespace {
            name: format!("psync-{pid}-{n}"),
            link: format!("ps{}n{n}", pid % 100_000),
            host: Ipv4Addr::new(10, 213, subnet, base + 1),
            inside: Ipv4Addr::new(10, 213, subnet, base + 2),
        };
        ip(&["netns", "add", &ns.name])?;
        // From here on, drop removes what was made.
        let peer = format!("{}p", ns.link);
        let host = format!("{}/30", ns.host);
        let inside = format!("{}/30", ns.inside);
        ip(&[
            "link", "add", &ns.link, "type", "veth", "peer", "name", &peer, "netns", &ns.name,
        ])?;
        ip(&["addr", "add", &host, "dev", &ns.link])?;
        ip(&["link", "set", &ns.link, "up"])?;
        ip(&["-n", &ns.name, "addr", "add", &inside, "dev", &peer])?;
        ip(&["-n", &ns.name, "link", "set", &peer, "up"])?;
        ip(&["-n", &ns.name, "link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// `cmd`, run inside the namespace (`ip netns exec` execs it: same process).
    pub fn wrap(&self, cmd: &Command) -> Command {
        let mut wrapped = Command::new("ip");
        wrapped
            .args(["netns", "exec", &self.name])
            .arg(cmd.get_program())
            .args(cmd.get_args());
        for (k, v) in cmd.get_envs() {
            match v {
                Some(v) => wrapped.env(k, v),
                None => wrapped.env_remove(k),
            };
        }
        wrapped
    }

    /// Takes the link down: nothing gets in or out, and no peer is told.
    pub fn cut(&self) -> Result<(), String> {
        ip(&["link", "set", &self.link, "down"])
    }

    /// Brings the link back up.
    pub fn mend(&self) -> Result<(), String> {
        ip(&["link", "set", &self.link, "up"])
    }
}

impl Drop for Namespace {
    fn drop(&mut self) {
        // Deleting the namespace deletes its end of the pair, and with it ours.
        let _ = ip(&["netns", "del", &self.name]);
    }
}

/// Forwards TCP connections from `listen` to `to` (a namespace reaches a server that
/// listens on 127.0.0.1 here). When either side closes, both are closed. Stops, closing
/// every connection, when the handle is aborted.
pub async fn forward(listen: SocketAddr, to: SocketAddr) -> JoinHandle<()> {
    let listener = TcpListener::bind(listen)
        .await
        .unwrap_or_else(|e| panic!("listen on {listen}: {e}"));
    tokio::spawn(async move {
        let mut connections = JoinSet::new();
        while let Ok((mut inbound, _)) = listener.accept().await {
            connections.spawn(async move {
                let Ok(mut outbound) = TcpStream::connect(to).await else {
                    return;
                };
                let (mut in_read, mut in_write) = inbound.split();
                let (mut out_read, mut out_write) = outbound.split();
                tokio::select! {
                    _ = tokio::io::copy(&mut in_read, &mut out_write) => {}
                    _ = tokio::io::copy(&mut out_read, &mut in_write) => {}
                }
            });
            // Reap finished connections so the set stays small.
            while connections.try_join_next().is_some() {}
        }
    })
}
