//! The deployment as users run it, for tests: Debian's PgBouncer in transaction mode in
//! front of a test database, and Debian's nginx in front of replicas. Each runs from its
//! own configuration in a temporary directory, on free loopback ports, never as a system
//! service; both stop when dropped. [`Tools::find`] says why when they are missing.

use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::common::{free_port, shared_temp_dir};

/// The two programs, found on this machine.
pub struct Tools {
    pgbouncer: PathBuf,
    nginx: PathBuf,
}

impl Tools {
    /// The tools, or why a test cannot run: it prints the reason and returns, or fails
    /// under `CI=true` (where `.ci/run` installs them).
    pub fn find(test: &str) -> Option<Tools> {
        let found = which("pgbouncer").zip(which("nginx"));
        match found {
            Some((pgbouncer, nginx)) => Some(Tools { pgbouncer, nginx }),
            None => {
                let why = "nginx and pgbouncer are needed (apt-get install nginx pgbouncer)";
                assert!(
                    std::env::var("CI").as_deref() != Ok("true"),
                    "[{test}] {why}; CI installs them"
                );
                println!("[{test}] SKIPPED: {why}");
                None
            }
        }
    }
}

fn which(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/sbin")])
        .map(|dir| dir.join(program))
        .find(|p| p.is_file())
}

/// A child process in a process group of its own, the whole group killed (and the child
/// reaped) on drop: nginx's workers outlive a killed master otherwise.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let group = nix::unistd::Pid::from_raw(self.0.id() as i32);
        let _ = nix::sys::signal::killpg(group, nix::sys::signal::Signal::SIGKILL);
        let _ = self.0.wait();
    }
}

fn write(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o644)).unwrap();
}

/// PgBouncer in transaction mode in front of the server a test database is on.
pub struct PgBouncer {
    pub port: u16,
    dir: PathBuf,
    _process: Running,
}

impl PgBouncer {
    /// Starts it in front of the server `db_url` names; clients reach any database of that
    /// server through it, as the server's user (PgBouncer logs in with the URL's password).
    pub async fn start(tools: &Tools, db_url: &str) -> PgBouncer {
        let url = reqwest::Url::parse(db_url).unwrap();
        let port = free_port();
        let dir = shared_temp_dir("pgbouncer");
        let user = url.username();
        let password = url.password().unwrap_or_default();
        let ini = format!(
            "[databases]\n\
             * = host=127.0.0.1 port={server} user={user} password={password}\n\
             [pgbouncer]\n\
             listen_addr = 127.0.0.1\n\
             listen_port = {port}\n\
             unix_socket_dir =\n\
             auth_type = any\n\
             pool_mode = transaction\n\
             default_pool_size = 20\n\
             max_client_conn = 1000\n\
             server_reset_query =\n\
             server_check_delay = 1\n\
             log_connections = 0\n\
             log_disconnections = 0\n\
             logfile = {dir}/pgbouncer.log\n\
             pidfile = {dir}/pgbouncer.pid\n",
            server = url.port().unwrap_or(5432),
            dir = dir.display(),
        );
        write(&dir.join("pgbouncer.ini"), &ini);
        // PgBouncer refuses to run as root; the test server's own user runs it.
        let postgres = nix::unistd::User::from_name("postgres")
            .unwrap()
            .expect("a `postgres` user (the tests' Postgres runs as it)");
        // Its log and pid file are written as that user.
        std::os::unix::fs::chown(
            &dir,
            Some(postgres.uid.as_raw()),
            Some(postgres.gid.as_raw()),
        )
        .unwrap();
        let mut cmd = Command::new(&tools.pgbouncer);
        cmd.arg("--quiet")
            .arg(dir.join("pgbouncer.ini"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .process_group(0)
            .uid(postgres.uid.as_raw())
            .gid(postgres.gid.as_raw());
        let bouncer = PgBouncer {
            port,
            _process: Running(cmd.spawn().expect("start pgbouncer")),
            dir,
        };
        bouncer.wait_listening().await;
        bouncer
    }

    /// `db_url` with its host and port replaced by PgBouncer's.
    pub fn url_for(&self, db_url: &str) -> String {
        let mut url = reqwest::Url::parse(db_url).unwrap();
        url.set_port(Some(self.port)).unwrap();
        url.to_string()
    }

    async fn wait_listening(&self) {
        for _ in 0..100 {
            if tokio::net::TcpStream::connect(("127.0.0.1", self.port))
                .await
                .is_ok()
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("pgbouncer did not listen: {}", self.log());
    }

    /// Its log, for a failure's message.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("pgbouncer.log")).unwrap_or_default()
    }
}

impl Drop for PgBouncer {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// nginx balancing over replicas, configured as `deploy/nginx.conf` advises.
pub struct Nginx {
    pub port: u16,
    dir: PathBuf,
    _process: Running,
}

impl Nginx {
    /// Starts it in front of `upstreams` (replicas' `host:port`).
    pub async fn start(tools: &Tools, upstreams: &[std::net::SocketAddr]) -> Nginx {
        let port = free_port();
        let dir = shared_temp_dir("nginx");
        for sub in ["body", "proxy", "fastcgi", "uwsgi", "scgi"] {
            let path = dir.join(sub);
            std::fs::create_dir_all(&path).unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o777)).unwrap();
        }
        let servers: String = upstreams
            .iter()
            .map(|a| format!("    server {a} max_fails=1 fail_timeout=2s;\n"))
            .collect();
        let conf = format!(
            "worker_processes 1;\n\
             daemon off;\n\
             pid {dir}/nginx.pid;\n\
             error_log {dir}/error.log warn;\n\
             events {{ worker_connections 1024; }}\n\
             http {{\n\
             access_log off;\n\
             client_body_temp_path {dir}/body;\n\
             proxy_temp_path {dir}/proxy;\n\
             fastcgi_temp_path {dir}/fastcgi;\n\
             uwsgi_temp_path {dir}/uwsgi;\n\
             scgi_temp_path {dir}/scgi;\n\
             upstream psync {{\n{servers}    keepalive 32;\n    keepalive_timeout 60s;\n}}\n\
             server {{\n\
             listen 127.0.0.1:{port};\n\
             {locations}\n\
             }}\n\
             }}\n",
            dir = dir.display(),
            locations = PROXY_LOCATIONS,
        );
        write(&dir.join("nginx.conf"), &conf);
        let mut cmd = Command::new(&tools.nginx);
        cmd.arg("-p")
            .arg(&dir)
            .arg("-c")
            .arg(dir.join("nginx.conf"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0);
        let nginx = Nginx {
            port,
            _process: Running(cmd.spawn().expect("start nginx")),
            dir,
        };
        for _ in 0..100 {
            if tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_ok()
            {
                return nginx;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("nginx did not listen: {}", nginx.log());
    }

    /// Its error log, for a failure's message.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("error.log")).unwrap_or_default()
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The `location` blocks of `deploy/nginx.conf`, which the test runs as they are there.
const PROXY_LOCATIONS: &str = include_str!("../../deploy/nginx/locations.conf");
