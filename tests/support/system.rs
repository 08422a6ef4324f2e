//! System programs the tests and the bench run (`psql`, `smtp-sink`, `rabbitmqctl`,
//! `pg_ctlcluster`, `chromedriver`, …), found the same way everywhere: the `PATH`, then the
//! folders where Debian puts programs outside an ordinary user's `PATH`. A program that needs
//! root runs directly as root, through password-less `sudo` otherwise, and a test that can
//! have neither says in one line that it is skipped and why. `scripts/lib/system.sh` is the
//! same lookup for the shell scripts.

#![allow(dead_code)]

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

/// RabbitMQ's own scripts, which run as the calling user (the `/usr/sbin` wrappers of the
/// same names switch to the `rabbitmq` user): for a broker node of a test's own.
pub const RABBITMQ_BIN: &str = "/usr/lib/rabbitmq/bin";

/// Where Debian installs programs that an ordinary user's `PATH` does not name.
const SYSTEM_DIRS: &[&str] = &[
    "/usr/local/sbin",
    "/usr/sbin",
    "/sbin",
    "/usr/lib/postfix/sbin",
    "/usr/lib/rabbitmq/bin",
];

/// The full path of system program `name`: the first match on the `PATH`, then in
/// [`SYSTEM_DIRS`]. A name that is found nowhere comes back as it is, so the error of
/// running it names the program.
pub fn program(name: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(SYSTEM_DIRS.iter().map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|p| is_executable(p))
        .unwrap_or_else(|| name.into())
}

fn is_executable(path: &Path) -> bool {
    path.metadata()
        .is_ok_and(|m| m.is_file() && m.mode() & 0o111 != 0)
}

/// Whether this process runs as root (the owner of `/proc/self` is the effective user).
pub fn is_root() -> bool {
    std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

/// Whether `sudo` runs a command without asking for a password (checked once).
fn sudo_works() -> bool {
    static WORKS: OnceLock<bool> = OnceLock::new();
    *WORKS.get_or_init(|| {
        Command::new(program("sudo"))
            .args(["-n", "true"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    })
}

/// A command running system program `name` as root: directly when this process is root,
/// through `sudo -n` when that works without a password. `Err` says why it cannot run, for
/// the test's "skipping" line.
pub fn as_root(name: &str) -> Result<Command, String> {
    let path = program(name);
    if is_root() {
        Ok(Command::new(path))
    } else if sudo_works() {
        let mut cmd = Command::new(program("sudo"));
        cmd.arg("-n").arg(path);
        Ok(cmd)
    } else {
        Err(format!(
            "{name} needs root, and this user is not root and has no password-less sudo"
        ))
    }
}

/// Like [`as_root`], printing the one "skipping" line a test gives when it cannot run.
pub fn as_root_or_skip(name: &str, what: &str) -> Option<Command> {
    as_root(name)
        .inspect_err(|why| eprintln!("skipping {what}: {why}"))
        .ok()
}
