//! The service under test: the release binary in its own process.

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

pub const WEBHOOK_TOKEN: &str = "bench-webhook-token-0123456789";
/// The token of the API client `bench`, which has every scope.
pub const API_TOKEN: &str = "bench-api-token-0123456789";

/// The service's binary: this build's, or `PSYNC_BENCH_BINARY` (a build with debug
/// information for `perf`, say).
pub fn binary() -> String {
    std::env::var("PSYNC_BENCH_BINARY")
        .unwrap_or_else(|_| env!("CARGO_BIN_EXE_partnerstack-sync").to_string())
}

pub struct Service {
    child: Child,
    pub addr: SocketAddr,
    /// Time from spawn to the first 200 from /readyz.
    pub ready_in: Duration,
}

impl Service {
    /// Starts `serve` on `database_url` with the given extra environment.
    pub async fn start(database_url: &str, extra_env: &[(&str, &str)]) -> anyhow::Result<Service> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse()?;
        let started = Instant::now();
        let mut cmd = Command::new(binary());
        cmd.arg("serve")
            .env("DATABASE_URL", database_url)
            .env("PSYNC_LISTEN", addr.to_string())
            .env("PSYNC_WEBHOOK_TOKENS", WEBHOOK_TOKEN)
            .env("PSYNC_API_CLIENT_BENCH_TOKEN", API_TOKEN)
            .env("PSYNC_API_CLIENT_BENCH_SCOPES", "read,write,admin")
            .env("PSYNC_RECONCILE_INTERVAL", "off")
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit());
        for (k, v) in extra_env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().context("starting partnerstack-sync")?;
        let mut service = Service {
            child,
            addr,
            ready_in: Duration::ZERO,
        };
        service.ready_in = service.wait_ready(started).await?;
        Ok(service)
    }

    async fn wait_ready(&mut self, started: Instant) -> anyhow::Result<Duration> {
        let http = partnerstack::http::builder().build()?;
        let url = format!("http://{}/readyz", self.addr);
        while started.elapsed() < Duration::from_secs(60) {
            if let Some(status) = self.child.try_wait()? {
                bail!("partnerstack-sync exited during start-up: {status}");
            }
            if let Ok(r) = http.get(&url).send().await
                && r.status() == 200
            {
                return Ok(started.elapsed());
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        bail!("partnerstack-sync was not ready within 60 s")
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Resident set size now, in MiB.
    pub fn rss_mib(&self) -> f64 {
        rss_mib(self.pid())
    }

    /// Graceful stop (SIGTERM), bounded.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        let _ = kill(Pid::from_raw(self.child.id() as i32), Signal::SIGTERM);
        for _ in 0..300 {
            if self.child.try_wait()?.is_some() {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        self.child.kill()?;
        bail!("partnerstack-sync did not stop within 30 s")
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
        }
    }
}

/// VmRSS of a process, in MiB (0 when it is gone).
pub fn rss_mib(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

/// Samples a process's RSS every 100 ms until told to stop; returns the peak, MiB.
pub fn sample_peak_rss(
    pid: u32,
) -> (
    tokio::task::JoinHandle<f64>,
    tokio::sync::oneshot::Sender<()>,
) {
    let (stop, mut stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        let mut peak: f64 = 0.0;
        loop {
            peak = peak.max(rss_mib(pid));
            tokio::select! {
                _ = &mut stopped => break,
                _ = tokio::time::sleep(Duration::from_millis(100)) => {}
            }
        }
        peak
    });
    (task, stop)
}

/// CPU time a process has used so far (user + system, all its threads), seconds; 0 when
/// it is gone. From `/proc/<pid>/stat`, in clock ticks of 10 ms.
pub fn cpu_seconds(pid: u32) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    // The command name is in parentheses and may hold spaces: count fields after it.
    let Some((_, rest)) = stat.rsplit_once(')') else {
        return 0.0;
    };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after the name.
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (ticks(11) + ticks(12)) / CLOCK_TICKS
}

/// `sysconf(_SC_CLK_TCK)` on Linux.
const CLOCK_TICKS: f64 = 100.0;

/// CPU time used so far by Postgres: the postmaster `pid` and its children (backends and
/// background processes) that are alive now, seconds. A process that exits between two
/// readings takes its time with it, so differences are a floor; the service's pooled
/// sessions live through a measurement.
pub fn postgres_cpu_seconds(pid: u32) -> f64 {
    let mut total = cpu_seconds(pid);
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return total;
    };
    for entry in dir.flatten() {
        let Some(child) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        let parent = std::fs::read_to_string(format!("/proc/{child}/stat"))
            .ok()
            .and_then(|s| {
                let (_, rest) = s.rsplit_once(')')?;
                rest.split_whitespace().nth(1)?.parse::<u32>().ok()
            });
        if parent == Some(pid) {
            total += cpu_seconds(child);
        }
    }
    total
}

impl Service {
    /// CPU time the service process has used so far, seconds.
    pub fn cpu_seconds(&self) -> f64 {
        cpu_seconds(self.pid())
    }
}
