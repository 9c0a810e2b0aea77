//! The embedded default: a private Postgres run from the binaries installed on the machine.
//!
//! With no `DATABASE_URL`, `serve` keeps its data under `PSYNC_DATA_DIR`:
//!
//! ```text
//! <data_dir>/pg/            PGDATA, owned by the user the server runs as
//! <data_dir>/password       the generated superuser password (0600)
//! <data_dir>/postgres.log   the server's own log
//! ```
//!
//! As root, the server runs as the `postgres` user (below), who must be able to reach the
//! data directory. When the default (`./data`) is out of its reach, typically a checkout in
//! root's 0700 home directory, [`choose_data_dir`] keeps the data under
//! `/var/lib/partnerstack-sync/<checkout>-<hash>` instead and says so; a directory set
//! explicitly is never moved.
//!
//! The server listens on 127.0.0.1 only, on a free port chosen at start, with password
//! authentication. `initdb` and `postgres` refuse to run as root, so as root the server runs
//! as the `postgres` user. The child is started from a dedicated thread that waits on it and
//! asks the kernel to stop it when that thread dies (`PR_SET_PDEATHSIG`), so a crashed or
//! killed service never leaves a stray server behind. It runs in its own process group,
//! so a terminal's Ctrl-C reaches only the service, which then shuts it down in order.

use std::fs::{self, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt, chown};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use nix::sys::signal::{Signal, kill};
use nix::unistd::{Pid, User, geteuid};
use secrecy::{ExposeSecret, SecretString};
use sqlx::Connection;
use sqlx::postgres::{PgConnectOptions, PgConnection};
use tokio::sync::oneshot;

/// The database the service uses inside the embedded server.
pub const DATABASE: &str = "partnerstack_sync";
const SUPERUSER: &str = "postgres";
/// Where, as root, the data of a checkout the `postgres` user cannot reach goes.
pub const SHARED_DATA_ROOT: &str = "/var/lib/partnerstack-sync";
const INSTALL_HINT: &str = "PostgreSQL server binaries (initdb, postgres) were not found on PATH, \
     via `pg_config --bindir`, or under /usr/lib/postgresql/*/bin. Install the server package \
     (Debian/Ubuntu: `apt-get install postgresql`; Fedora: `dnf install postgresql-server`; \
     macOS: `brew install postgresql@16`), or set DATABASE_URL to an existing server.";

/// A Postgres server owned by this process.
pub struct EmbeddedPostgres {
    bin_dir: PathBuf,
    data_dir: PathBuf,
    pgdata: PathBuf,
    port: u16,
    password: SecretString,
    run_as: Option<User>,
    settings: Vec<(String, String)>,
    running: Mutex<Option<Running>>,
}

struct Running {
    pid: Pid,
    exited: oneshot::Receiver<()>,
}

impl EmbeddedPostgres {
    /// Prepares `data_dir` (running `initdb` the first time) and starts the server.
    /// `settings` are extra `-c name=value` server settings (tests turn `fsync` off).
    pub async fn start(data_dir: &Path, settings: &[(&str, &str)]) -> anyhow::Result<Self> {
        let data_dir = data_dir.to_path_buf();
        let settings: Vec<(String, String)> = settings
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let pg = tokio::task::spawn_blocking(move || Self::prepare(&data_dir, settings))
            .await
            .context("embedded Postgres set-up panicked")??;
        pg.launch().await?;
        pg.create_database().await?;
        Ok(pg)
    }

    /// Connection options for the service's database.
    pub fn connect_options(&self) -> PgConnectOptions {
        self.options_for(DATABASE)
    }

    /// A `postgres://` URL for the service's database (for tools such as psql or pgbench).
    pub fn url(&self) -> SecretString {
        SecretString::from(format!(
            "postgres://{SUPERUSER}:{}@127.0.0.1:{}/{DATABASE}",
            self.password.expose_secret(),
            self.port
        ))
    }

    /// The TCP port the server listens on (stable across [`stop`](Self::stop) and
    /// [`resume`](Self::resume)).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The server's process id while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.lock()
            .as_ref()
            .and_then(|r| u32::try_from(r.pid.as_raw()).ok())
    }

    /// Stops the server with a fast shutdown (open sessions are ended, data is flushed).
    pub async fn stop(&self) -> anyhow::Result<()> {
        let Some(running) = self.lock().take() else {
            return Ok(());
        };
        let _ = kill(running.pid, Signal::SIGINT);
        let mut exited = running.exited;
        if tokio::time::timeout(Duration::from_secs(30), &mut exited)
            .await
            .is_err()
        {
            tracing::warn!(pid = %running.pid, "embedded Postgres ignored fast shutdown; sending SIGQUIT");
            let _ = kill(running.pid, Signal::SIGQUIT);
            let _ = tokio::time::timeout(Duration::from_secs(10), exited).await;
        }
        tracing::info!("embedded Postgres stopped");
        Ok(())
    }

    /// Starts the server again after [`stop`](Self::stop), on the same port and data.
    pub async fn resume(&self) -> anyhow::Result<()> {
        if self.lock().is_some() {
            return Ok(());
        }
        self.launch().await
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Running>> {
        // A poisoned lock only means another thread panicked while holding it; the
        // Option inside is still meaningful.
        self.running.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn options_for(&self, database: &str) -> PgConnectOptions {
        PgConnectOptions::new()
            .host("127.0.0.1")
            .port(self.port)
            .username(SUPERUSER)
            .password(self.password.expose_secret())
            .database(database)
    }

    fn prepare(data_dir: &Path, settings: Vec<(String, String)>) -> anyhow::Result<Self> {
        let bin_dir = find_bin_dir().ok_or_else(|| anyhow!(INSTALL_HINT))?;
        let run_as = server_user()?;

        fs::create_dir_all(data_dir)
            .with_context(|| format!("creating data directory {}", data_dir.display()))?;
        let data_dir = data_dir
            .canonicalize()
            .with_context(|| format!("resolving data directory {}", data_dir.display()))?;
        let pgdata = data_dir.join("pg");
        if let Some(user) = &run_as {
            check_reachable(&data_dir, user)?;
        }
        let password_file = data_dir.join("password");
        let initialised = pgdata.join("PG_VERSION").exists();
        let password = if initialised {
            let text = fs::read_to_string(&password_file).with_context(|| {
                format!(
                    "{} holds a Postgres cluster but {} is missing; restore it, or remove the data \
                     directory to start afresh",
                    pgdata.display(),
                    password_file.display()
                )
            })?;
            SecretString::from(text.trim().to_string())
        } else {
            let password = SecretString::from(random_password());
            init_cluster(&bin_dir, &data_dir, &pgdata, &password, run_as.as_ref())?;
            write_private(&password_file, password.expose_secret())?;
            password
        };
        let port = free_port()?;
        Ok(Self {
            bin_dir,
            data_dir,
            pgdata,
            port,
            password,
            run_as,
            settings,
            running: Mutex::new(None),
        })
    }

    async fn launch(&self) -> anyhow::Result<()> {
        let log_path = self.data_dir.join("postgres.log");
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .with_context(|| format!("opening {}", log_path.display()))?;
        let log_start = log.metadata().map(|m| m.len()).unwrap_or(0);

        let mut cmd = Command::new(self.bin_dir.join("postgres"));
        cmd.arg("-D")
            .arg(&self.pgdata)
            .arg("-p")
            .arg(self.port.to_string())
            .args(["-c", "listen_addresses=127.0.0.1"])
            .args(["-c", "unix_socket_directories="])
            .args(["-c", "max_connections=200"]);
        for (name, value) in &self.settings {
            cmd.arg("-c").arg(format!("{name}={value}"));
        }
        cmd.stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .process_group(0);
        if let Some(user) = &self.run_as {
            cmd.uid(user.uid.as_raw()).gid(user.gid.as_raw());
        }
        // SAFETY: prctl is async-signal-safe; this closure runs in the child between fork
        // and exec, after the uid change (which would otherwise reset the death signal).
        #[allow(unsafe_code)]
        unsafe {
            cmd.pre_exec(|| {
                nix::sys::prctl::set_pdeathsig(Signal::SIGINT).map_err(std::io::Error::from)
            });
        }

        // The thread that forks must outlive the child: the death signal fires when the
        // forking *thread* exits, so a tokio worker thread would not do.
        let (spawned_tx, spawned_rx) = std::sync::mpsc::channel();
        let (exited_tx, exited_rx) = oneshot::channel();
        std::thread::Builder::new()
            .name("embedded-postgres".into())
            .spawn(move || match cmd.spawn() {
                Ok(mut child) => {
                    let _ = spawned_tx.send(Ok(child.id()));
                    let _ = child.wait();
                    let _ = exited_tx.send(());
                }
                Err(e) => {
                    let _ = spawned_tx.send(Err(e));
                }
            })
            .context("starting the embedded Postgres supervisor thread")?;
        let pid = spawned_rx
            .recv()
            .context("embedded Postgres supervisor thread vanished")?
            .with_context(|| format!("running {}", self.bin_dir.join("postgres").display()))?;
        let pid = Pid::from_raw(pid as i32);
        *self.lock() = Some(Running {
            pid,
            exited: exited_rx,
        });

        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        loop {
            let exited = match self.lock().as_mut() {
                Some(r) => r.exited.try_recv().is_ok(),
                None => true,
            };
            if exited {
                self.lock().take();
                bail!(
                    "the embedded Postgres exited during start-up. Its log ({}) says:\n{}",
                    log_path.display(),
                    tail(&log_path, log_start)
                );
            }
            match PgConnection::connect_with(&self.options_for(SUPERUSER)).await {
                Ok(conn) => {
                    let _ = conn.close().await;
                    tracing::info!(port = self.port, data_dir = %self.data_dir.display(), "embedded Postgres is ready");
                    return Ok(());
                }
                Err(e) if tokio::time::Instant::now() > deadline => {
                    let _ = self.stop().await;
                    bail!("the embedded Postgres did not accept connections within 60s: {e}");
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    }

    async fn create_database(&self) -> anyhow::Result<()> {
        let mut conn = PgConnection::connect_with(&self.options_for(SUPERUSER)).await?;
        let exists: bool =
            crate::db::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
                .bind(DATABASE)
                .fetch_one(&mut conn)
                .await?;
        if !exists {
            // The name is a constant identifier, not input.
            crate::db::query("CREATE DATABASE partnerstack_sync")
                .execute(&mut conn)
                .await?;
        }
        conn.close().await?;
        Ok(())
    }
}

impl Drop for EmbeddedPostgres {
    fn drop(&mut self) {
        if let Some(running) = self.lock().take() {
            let _ = kill(running.pid, Signal::SIGINT);
        }
    }
}

/// Finds the directory holding `initdb` and `postgres` (and, in the usual packaging,
/// the other server tools such as `pgbench`).
pub fn find_bin_dir() -> Option<PathBuf> {
    let has_both = |dir: &Path| dir.join("initdb").is_file() && dir.join("postgres").is_file();
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            if has_both(&dir) {
                return Some(dir);
            }
        }
    }
    if let Ok(out) = Command::new("pg_config").arg("--bindir").output()
        && out.status.success()
    {
        let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if has_both(&dir) {
            return Some(dir);
        }
    }
    let mut versions: Vec<(u32, PathBuf)> = fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let version = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            has_both(&bin).then_some((version, bin))
        })
        .collect();
    versions.sort();
    versions.pop().map(|(_, dir)| dir)
}

/// The user the server runs as: `None` for the current one, `postgres` when the service
/// is root (initdb and postgres refuse to run as root).
fn server_user() -> anyhow::Result<Option<User>> {
    if !geteuid().is_root() {
        return Ok(None);
    }
    let user = User::from_name(SUPERUSER)
        .context("looking up the postgres user")?
        .ok_or_else(|| {
            anyhow!(
                "running as root: initdb and postgres refuse to run as root, and there is no \
                 `postgres` user to run them as. Create one (useradd --system postgres), run \
                 the service as an unprivileged user, or set DATABASE_URL"
            )
        })?;
    Ok(Some(user))
}

/// The data directory for the configured one.
///
/// `configured` is used as it is when it was set explicitly (`explicit`), when the service
/// is not root, when the `postgres` user can reach it, or when it already holds a cluster
/// (its data is never left behind silently; start-up then fails saying what to do). Only
/// the default, as root and out of reach, moves: to
/// `/var/lib/partnerstack-sync/<checkout>-<hash>` ([`shared_data_dir`]), which is logged.
pub fn choose_data_dir(configured: &Path, explicit: bool) -> anyhow::Result<PathBuf> {
    if explicit {
        return Ok(configured.to_path_buf());
    }
    let Some(user) = server_user()? else {
        return Ok(configured.to_path_buf());
    };
    let absolute = std::path::absolute(configured)
        .with_context(|| format!("resolving data directory {}", configured.display()))?;
    let Some((blocked, mode)) = blocked_ancestor(&absolute)? else {
        return Ok(configured.to_path_buf());
    };
    if absolute.join("pg/PG_VERSION").exists() {
        return Ok(configured.to_path_buf());
    }
    let root = Path::new(SHARED_DATA_ROOT);
    if !root.exists() {
        fs::create_dir_all(root).with_context(|| format!("creating {}", root.display()))?;
        fs::set_permissions(root, fs::Permissions::from_mode(0o755))?;
    }
    let chosen = shared_data_dir(&absolute);
    tracing::info!(
        "the embedded Postgres runs as user `{}`, who cannot enter {} (mode {mode:o}) to reach \
         the default data directory {}; keeping its data in {} instead (set PSYNC_DATA_DIR to \
         choose another place)",
        user.name,
        blocked.display(),
        absolute.display(),
        chosen.display()
    );
    Ok(chosen)
}

/// `/var/lib/partnerstack-sync/<name>-<hash>` for the absolute data directory `absolute`:
/// the name of the directory holding it (the checkout, for `./data`), made safe for a
/// file name, and the first 12 hex digits of the SHA-256 of its whole path, so two
/// checkouts of the same name never share data and a checkout always finds its own again.
pub fn shared_data_dir(absolute: &Path) -> PathBuf {
    use sha2::{Digest, Sha256};
    let name: String = absolute
        .parent()
        .and_then(Path::file_name)
        .map(|n| n.to_string_lossy())
        .unwrap_or_default()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                c
            } else {
                '_'
            }
        })
        .skip_while(|c| *c == '.')
        .take(64)
        .collect();
    let name = if name.is_empty() { "data".into() } else { name };
    let digest = Sha256::digest(absolute.as_os_str().as_encoded_bytes());
    let hash = hex::encode(&digest[..6]);
    Path::new(SHARED_DATA_ROOT).join(format!("{name}-{hash}"))
}

/// The first existing directory above `dir` that other users cannot enter, and its mode
/// (directories not created yet are skipped: they will be created 0755 or 0711).
fn blocked_ancestor(dir: &Path) -> anyhow::Result<Option<(PathBuf, u32)>> {
    for ancestor in dir.ancestors().skip(1) {
        let mode = match fs::metadata(ancestor) {
            Ok(meta) => meta.permissions().mode(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e).with_context(|| format!("inspecting {}", ancestor.display())),
        };
        if mode & 0o001 == 0 {
            return Ok(Some((ancestor.to_path_buf(), mode & 0o777)));
        }
    }
    Ok(None)
}

/// As root the server runs as another user, who must be able to reach the data directory.
fn check_reachable(data_dir: &Path, user: &User) -> anyhow::Result<()> {
    if let Some((dir, mode)) = blocked_ancestor(data_dir)? {
        bail!(
            "the embedded Postgres runs as user `{}`, who cannot enter {} (mode {mode:o}) to \
             reach the data directory {}. Set PSYNC_DATA_DIR to a directory it can reach (e.g. \
             under /var/lib or /tmp), or set DATABASE_URL",
            user.name,
            dir.display(),
            data_dir.display()
        );
    }
    fs::set_permissions(data_dir, fs::Permissions::from_mode(0o711))?;
    Ok(())
}

fn init_cluster(
    bin_dir: &Path,
    data_dir: &Path,
    pgdata: &Path,
    password: &SecretString,
    run_as: Option<&User>,
) -> anyhow::Result<()> {
    fs::create_dir_all(pgdata)?;
    fs::set_permissions(pgdata, fs::Permissions::from_mode(0o700))?;
    let pwfile = data_dir.join(".initdb-password");
    write_private(&pwfile, password.expose_secret())?;
    if let Some(user) = run_as {
        chown(pgdata, Some(user.uid.as_raw()), Some(user.gid.as_raw()))?;
        chown(&pwfile, Some(user.uid.as_raw()), Some(user.gid.as_raw()))?;
    }
    let mut cmd = Command::new(bin_dir.join("initdb"));
    cmd.arg("-D")
        .arg(pgdata)
        .args([
            "-U",
            SUPERUSER,
            "-E",
            "UTF8",
            "--locale=C",
            "--auth=scram-sha-256",
        ])
        .arg(format!("--pwfile={}", pwfile.display()))
        .stdin(Stdio::null());
    if let Some(user) = run_as {
        cmd.uid(user.uid.as_raw()).gid(user.gid.as_raw());
    }
    tracing::info!(pgdata = %pgdata.display(), "initialising the embedded Postgres cluster");
    let out = cmd.output();
    let _ = fs::remove_file(&pwfile);
    let out = out.with_context(|| format!("running {}", bin_dir.join("initdb").display()))?;
    if !out.status.success() {
        bail!(
            "initdb failed ({}):\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

fn write_private(path: &Path, contents: &str) -> anyhow::Result<()> {
    let mut f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("writing {}", path.display()))?;
    f.write_all(contents.as_bytes())?;
    Ok(())
}

fn random_password() -> String {
    let bytes: [u8; 24] = rand::random();
    hex::encode(bytes)
}

fn free_port() -> anyhow::Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").context("finding a free port")?;
    Ok(listener.local_addr()?.port())
}

/// The last lines the server wrote since `from`.
fn tail(path: &Path, from: u64) -> String {
    let mut text = String::new();
    if let Ok(mut f) = fs::File::open(path) {
        let _ = f.seek(SeekFrom::Start(from));
        let _ = f.read_to_string(&mut text);
    }
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_checkout_gets_a_shared_data_dir_of_its_own() {
        let a = shared_data_dir(Path::new("/root/partnerstack-sync/data"));
        let b = shared_data_dir(Path::new("/home/ci/partnerstack-sync/data"));
        assert_eq!(
            a,
            shared_data_dir(Path::new("/root/partnerstack-sync/data"))
        );
        assert_ne!(
            a, b,
            "two checkouts of the same name share a data directory"
        );
        for dir in [&a, &b] {
            let name = dir
                .strip_prefix(SHARED_DATA_ROOT)
                .unwrap()
                .to_str()
                .unwrap();
            let hash = name.strip_prefix("partnerstack-sync-").unwrap();
            assert_eq!(hash.len(), 12, "{name}");
            assert!(hash.chars().all(|c| c.is_ascii_hexdigit()), "{name}");
        }
    }

    #[test]
    fn the_shared_data_dir_name_is_a_plain_file_name() {
        let name = |path: &str| {
            let dir = shared_data_dir(Path::new(path));
            let name = dir.file_name().unwrap().to_str().unwrap().to_string();
            name[..name.len() - 13].to_string()
        };
        assert_eq!(name("/root/my repo/data"), "my_repo");
        assert_eq!(name("/root/.hidden/data"), "hidden");
        assert_eq!(name("/root/ünï/data"), "_n_");
        assert_eq!(name("/data"), "data");
        assert_eq!(name(&format!("/root/{}/data", "x".repeat(300))).len(), 64);
    }

    #[test]
    fn a_private_directory_blocks_what_is_below_it() {
        let private = tempfile::tempdir().unwrap();
        fs::set_permissions(private.path(), fs::Permissions::from_mode(0o700)).unwrap();
        let below = private.path().join("checkout/data");
        let (dir, mode) = blocked_ancestor(&below).unwrap().expect("blocked");
        assert_eq!((dir.as_path(), mode), (private.path(), 0o700));

        fs::set_permissions(private.path(), fs::Permissions::from_mode(0o711)).unwrap();
        assert_eq!(blocked_ancestor(&below).unwrap(), None);
    }
}
