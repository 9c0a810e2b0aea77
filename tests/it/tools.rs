//! The outside tools some tests run (Prometheus, promtool, schemathesis, Chromium, ...),
//! where they are looked for, and the one policy for a test that cannot run for want of
//! one: [`skip`].
//!
//! libtest has no "skipped" outcome: a test that returns early reports `ok`, and what it
//! printed with `eprintln!` is captured and thrown away. So a skip is written to the
//! process's standard error directly (libtest captures only the print macros), once when
//! it happens (`SKIPPED <test>: <reason>`, beside the test's `ok` line) and again after
//! libtest's `test result:` line, where the last lines of a run name every check that did
//! not run. Under `CI=true` a skip is a failure instead: CI installs every tool
//! (`.ci/run`), so a skip there would hide a check that is supposed to run.

use std::fmt::Display;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// Where `.ci/run` keeps what it installs outside the system's packages.
pub const CI_CACHE: &str = "/var/cache/partnerstack-sync";

/// The virtualenv's `bin` (schemathesis, openapi-python-client, standardwebhooks).
pub fn venv_bin() -> PathBuf {
    Path::new(CI_CACHE).join("venv/bin")
}

/// npm's `node_modules/.bin` (openapi-typescript, tsc).
pub fn npm_bin() -> PathBuf {
    Path::new(CI_CACHE).join("npm/node_modules/.bin")
}

/// Whether this is a CI run (`CI=true`, as CI services set it), where nothing may skip.
pub fn ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v.eq_ignore_ascii_case("true") || v == "1")
}

/// `$<var>` when set, else `name` in one of `dirs`, else `name` on `PATH`.
pub fn find(var: &str, name: &str, dirs: &[PathBuf]) -> Option<PathBuf> {
    if let Some(path) = std::env::var_os(var) {
        return Some(PathBuf::from(path));
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    dirs.iter()
        .cloned()
        .chain(std::env::split_paths(&path))
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

/// Skips (the rest of) the calling test because something it needs is missing; `reason`
/// says what, and how to get it. Under `CI=true`, panics with the reason instead.
pub fn skip(reason: impl Display) {
    let test = std::thread::current()
        .name()
        .filter(|n| *n != "main")
        .unwrap_or("a test")
        .to_string();
    if ci() {
        panic!("{test} cannot run, and CI=true allows no skip: {reason}");
    }
    let line = format!("SKIPPED {test}: {reason}");
    let _ = writeln!(std::io::stderr(), "{line}");
    let mut skipped = SKIPPED.lock().unwrap_or_else(|e| e.into_inner());
    if skipped.is_empty() {
        at_exit();
    }
    skipped.push(line);
}

/// The skips of this run, for the lines printed at exit.
static SKIPPED: Mutex<Vec<String>> = Mutex::new(Vec::new());

/// Prints the skips when the process exits, after libtest's summary.
fn at_exit() {
    extern "C" fn print_skips() {
        // A test thread still running (one that timed out) must not block the exit.
        let Ok(skipped) = SKIPPED.try_lock() else {
            return;
        };
        let mut err = std::io::stderr().lock();
        let _ = writeln!(
            err,
            "\n{} check(s) did not run here (CI=true makes each a failure):",
            skipped.len()
        );
        for line in skipped.iter() {
            let _ = writeln!(err, "  {line}");
        }
    }
    // SAFETY: registers a plain function that captures nothing and only reads a static
    // behind a lock; atexit(3) is unsafe only for being foreign.
    #[allow(unsafe_code)]
    unsafe {
        libc::atexit(print_skips);
    }
}
