//! RabbitMQ nodes of a test's own on loopback, next to any RabbitMQ already running: each
//! node with its own name, ports, data and log folders, configuration and plugin files, and a
//! scratch HOME holding the cookie; several nodes are joined into a cluster. Nodes can listen
//! with TLS only (a certificate from the test's own CA). Every node is started with the real
//! launcher and stopped by its PID.

#![allow(dead_code)]

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use super::system;

/// A node's TLS listener: its certificate, key and the CA it verifies clients with; a client
/// certificate is required when `require_client_cert`.
#[derive(Clone, Debug)]
pub struct NodeTls {
    pub ca: std::path::PathBuf,
    pub cert: std::path::PathBuf,
    pub key: std::path::PathBuf,
    pub require_client_cert: bool,
    /// A plain listener too, on this port (to compare the two on one node).
    pub plain_port: Option<u16>,
}

/// Nodes of a test's own (a cluster when more than one).
pub struct Cluster {
    root: std::path::PathBuf,
    tag: String,
    size: usize,
    tls: Option<NodeTls>,
    /// Each node's (AMQP, distribution) ports.
    ports: Vec<(u16, u16)>,
    nodes: Vec<Option<std::process::Child>>,
}

impl Cluster {
    pub fn name(&self, n: usize) -> String {
        format!("tidings-{}-{n}@localhost", self.tag)
    }

    pub fn port(&self, n: usize) -> u16 {
        self.ports[n].0
    }

    fn env(&self, n: usize) -> Vec<(String, String)> {
        let dir = self.root.join(format!("n{n}"));
        let (port, dist) = self.ports[n];
        [
            ("HOME", self.root.join("home").display().to_string()),
            ("RABBITMQ_NODENAME", self.name(n)),
            ("RABBITMQ_NODE_PORT", port.to_string()),
            ("RABBITMQ_DIST_PORT", dist.to_string()),
            (
                "RABBITMQ_MNESIA_BASE",
                dir.join("mnesia").display().to_string(),
            ),
            ("RABBITMQ_LOG_BASE", dir.join("log").display().to_string()),
            (
                "RABBITMQ_CONFIG_FILE",
                dir.join("rabbitmq.conf").display().to_string(),
            ),
            (
                "RABBITMQ_ADVANCED_CONFIG_FILE",
                dir.join("advanced.config").display().to_string(),
            ),
            (
                "RABBITMQ_ENABLED_PLUGINS_FILE",
                dir.join("enabled_plugins").display().to_string(),
            ),
            (
                "RABBITMQ_CONF_ENV_FILE",
                dir.join("rabbitmq-env.conf").display().to_string(),
            ),
            ("RABBITMQ_PID_FILE", dir.join("pid").display().to_string()),
            // Run the VM in place of the launcher, so its PID is the node's.
            ("RUNNING_UNDER_SYSTEMD", "true".into()),
            ("ERL_EPMD_ADDRESS", "127.0.0.1".into()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
    }

    /// `size` nodes, joined into one cluster; with `tls`, each listens with TLS only.
    pub fn start(root: &std::path::Path, size: usize, tls: Option<NodeTls>) -> Cluster {
        let tag = format!("{}", std::process::id());
        std::fs::create_dir_all(root.join("home")).unwrap();
        let cookie = root.join("home/.erlang.cookie");
        std::fs::write(&cookie, format!("TIDINGSCLUSTERTEST{tag}")).unwrap();
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&cookie, std::fs::Permissions::from_mode(0o400)).unwrap();
        }
        let mut cluster = Cluster {
            root: root.to_path_buf(),
            tag,
            size,
            tls,
            // From the tests' own free-port counter, fixed per node across restarts.
            ports: (0..size)
                .map(|_| (super::free_port(), super::free_port()))
                .collect(),
            nodes: (0..size).map(|_| None).collect(),
        };
        for n in 0..size {
            let dir = root.join(format!("n{n}"));
            std::fs::create_dir_all(&dir).unwrap();
            let listeners = match &cluster.tls {
                None => format!("listeners.tcp.1 = 127.0.0.1:{}\n", cluster.port(n)),
                Some(tls) => format!(
                    "{}listeners.ssl.1 = 127.0.0.1:{}\n\
                     ssl_options.cacertfile = {}\nssl_options.certfile = {}\n\
                     ssl_options.keyfile = {}\nssl_options.verify = verify_peer\n\
                     ssl_options.fail_if_no_peer_cert = {}\n",
                    match tls.plain_port {
                        Some(port) => format!("listeners.tcp.1 = 127.0.0.1:{port}\n"),
                        None => "listeners.tcp = none\n".into(),
                    },
                    cluster.port(n),
                    tls.ca.display(),
                    tls.cert.display(),
                    tls.key.display(),
                    tls.require_client_cert
                ),
            };
            std::fs::write(
                dir.join("rabbitmq.conf"),
                format!(
                    "{listeners}cluster_partition_handling = pause_minority\n\
                     loopback_users = none\nlog.console = false\nlog.file.level = warning\n"
                ),
            )
            .unwrap();
            std::fs::write(dir.join("advanced.config"), "[].\n").unwrap();
            std::fs::write(dir.join("enabled_plugins"), "[].\n").unwrap();
            std::fs::write(dir.join("rabbitmq-env.conf"), "").unwrap();
            cluster.launch(n);
        }
        for n in 0..size {
            cluster.await_startup(n);
        }
        for n in 1..size {
            cluster.ctl(n, &["stop_app"]);
            cluster.ctl(n, &["join_cluster", &cluster.name(0)]);
            cluster.ctl(n, &["start_app"]);
            cluster.await_startup(n);
        }
        cluster
    }

    pub fn launch(&mut self, n: usize) {
        let log = std::fs::File::create(self.root.join(format!("n{n}.out"))).unwrap();
        let child = Command::new(Path::new(system::RABBITMQ_BIN).join("rabbitmq-server"))
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .envs(self.env(n))
            .stdin(std::process::Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("rabbitmq-server (Debian package rabbitmq-server)");
        self.nodes[n] = Some(child);
    }

    /// A CLI call on node `n`, with a timeout; its output.
    pub fn ctl_with(&self, tool: &str, n: usize, args: &[&str]) -> std::process::Output {
        Command::new(Path::new(system::RABBITMQ_BIN).join(tool))
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .envs(self.env(n))
            .args(["-n", &self.name(n), "--timeout", "60"])
            .args(args)
            .output()
            .unwrap()
    }

    pub fn ctl(&self, n: usize, args: &[&str]) -> String {
        let out = self.ctl_with("rabbitmqctl", n, args);
        assert!(
            out.status.success(),
            "rabbitmqctl {args:?} on node {n}: {}{}",
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout)
        );
        String::from_utf8_lossy(&out.stdout).to_string()
    }

    pub fn await_startup(&self, n: usize) {
        for attempt in 0..5 {
            let out = self.ctl_with("rabbitmqctl", n, &["await_startup"]);
            if out.status.success() {
                return;
            }
            eprintln!(
                "cluster: node {n} not started yet (attempt {attempt}): {}",
                String::from_utf8_lossy(&out.stderr)
                    .lines()
                    .next()
                    .unwrap_or_default()
            );
            std::thread::sleep(Duration::from_secs(2));
        }
        panic!(
            "node {n} did not start; see {}",
            self.root.join(format!("n{n}.out")).display()
        );
    }

    /// The node URIs, starting at node `first` (`amqps://guest:guest@localhost:…` with TLS).
    pub fn urls(&self, first: usize) -> String {
        (0..self.size)
            .map(|i| {
                let n = (first + i) % self.size;
                self.url(
                    n,
                    if self.tls.is_some() {
                        "localhost"
                    } else {
                        "127.0.0.1"
                    },
                )
            })
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Node `n`'s URI with host `host`.
    pub fn url(&self, n: usize, host: &str) -> String {
        let scheme = if self.tls.is_some() { "amqps" } else { "amqp" };
        format!("{scheme}://guest:guest@{host}:{}/%2f", self.port(n))
    }

    /// Empties the node's cache of certificate files, so that a certificate file rewritten
    /// in place is read again by the next handshake.
    pub fn clear_pem_cache(&self, n: usize) {
        self.ctl(n, &["eval", "ssl:clear_pem_cache()."]);
    }

    pub fn alive(&self) -> usize {
        (0..self.size).find(|n| self.nodes[*n].is_some()).unwrap()
    }

    /// The node leading quorum queue `queue`.
    pub fn leader_of(&self, queue: &str) -> usize {
        let out = self.ctl(self.alive(), &["-q", "list_queues", "name", "leader"]);
        let leader = out
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{queue}\t")))
            .unwrap_or_else(|| panic!("{queue} not listed: {out}"))
            .trim()
            .to_string();
        (0..self.size)
            .find(|n| self.name(*n) == leader)
            .unwrap_or_else(|| panic!("leader {leader:?} is no node of ours"))
    }

    /// The node process `pid`'s first broker connection is on.
    pub fn node_of(&self, pid: u32) -> usize {
        let out = self.ctl(
            self.alive(),
            &["-q", "list_connections", "pid", "client_properties"],
        );
        let line = out
            .lines()
            .find(|l| l.contains(&format!("(pid {pid})")))
            .unwrap_or_else(|| panic!("no connection of process {pid}: {out}"));
        (0..self.size)
            .find(|n| line.starts_with(&format!("<{}.", self.name(*n))))
            .unwrap_or_else(|| panic!("connection on no node of ours: {line}"))
    }

    pub fn kill9(&mut self, n: usize) {
        if let Some(mut child) = self.nodes[n].take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for n in 0..self.size {
            self.kill9(n);
        }
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.root);
        } else {
            eprintln!("cluster files kept in {}", self.root.display());
        }
    }
}
