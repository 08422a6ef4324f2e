//! Test environment against the real services: each test gets its own PostgreSQL database,
//! its own RabbitMQ names (a unique queue prefix), its own `smtp-sink` on a free port writing
//! one file per message, and `tidings` processes started from the built binary. Everything is
//! removed when the environment is dropped, even after a failed assertion.

#![allow(dead_code)]

pub mod live;
pub mod pki;
pub mod rabbit;
pub mod system;
pub mod zone;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use serde_json::{Value, json};

pub const TOKEN: &str = "test-api-token-0123456789";
pub const SECRET: &str = "test-secret-0123456789";
pub const REPLY_DOMAIN: &str = "reply.test.localhost";

const DATABASE_SERVER: &str = "postgres://postgres@127.0.0.1:5432";
pub const AMQP_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

/// Polls `check` every 100 ms until it holds, failing the test after 60 s with the last
/// lines of every role's log under `logs`.
pub async fn wait_for<F: AsyncFn() -> bool>(logs: &Path, what: &str, check: F) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !check().await {
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}{}",
            log_tails(logs, 40)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn unique(prefix: &str) -> String {
    format!(
        "{prefix}_{}_{:08x}",
        std::process::id(),
        rand::random::<u32>()
    )
}

/// A port no other test of this run was given and nothing listens on. Ports come from a
/// counter in 20000–31999, below the kernel's ephemeral range (so no outgoing connection
/// holds one), starting at an offset of this process's id (so test binaries running side by
/// side start far apart); each is checked by binding it before it is handed out.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    const FIRST: u32 = 20_000;
    const SPAN: u32 = 12_000;
    let start = (std::process::id() * 97) % SPAN;
    for _ in 0..SPAN {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = (FIRST + (start + n) % SPAN) as u16;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port in {FIRST}..{}", FIRST + SPAN);
}

/// The last `lines` lines of every role's log under `root`, for failure messages.
pub fn log_tails(root: &Path, lines: usize) -> String {
    let mut out = String::new();
    let Ok(entries) = std::fs::read_dir(root) else {
        return out;
    };
    let mut logs: Vec<PathBuf> = entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "log"))
        .collect();
    logs.sort();
    for log in logs {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        let tail = &all[all.len().saturating_sub(lines)..];
        out.push_str(&format!(
            "\n--- last {} lines of {} ---\n{}",
            tail.len(),
            log.display(),
            tail.join("\n")
        ));
    }
    out
}

/// Postfix's smtp-sink writing every message it accepts to its own file.
pub struct Sink {
    pub port: u16,
    pub dir: PathBuf,
    child: Child,
}

impl Sink {
    /// Starts a sink; `extra` are smtp-sink options such as `-r RCPT` (4xx on RCPT).
    pub fn start(port: u16, dir: &Path, extra: &[&str]) -> Sink {
        std::fs::create_dir_all(dir).unwrap();
        let mut cmd = Command::new(system::program("smtp-sink"));
        if system::is_root() {
            // smtp-sink drops privileges to this user, which must be able to write the folder.
            set_mode(dir, 0o777);
            cmd.args(["-u", "nobody"]);
        }
        cmd.args(extra)
            .arg("-d")
            .arg(format!("{}/%Y%m%d%H%M%S.", dir.display()))
            .arg(format!("127.0.0.1:{port}"))
            .arg("256")
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let child = cmd
            .spawn()
            .expect("smtp-sink (Debian package postfix) must be installed");
        let deadline = Instant::now() + Duration::from_secs(5);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "smtp-sink did not start on port {port}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Sink {
            port,
            dir: dir.to_path_buf(),
            child,
        }
    }

    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        self.stop();
    }
}

fn set_mode(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// One email as smtp-sink stored it.
#[derive(Debug, Clone)]
pub struct SunkMail {
    pub file: PathBuf,
    pub received: SystemTime,
    pub rcpt: String,
    pub raw: Vec<u8>,
}

impl SunkMail {
    pub fn parsed(&self) -> mail_parser::Message<'_> {
        mail_parser::MessageParser::default()
            .parse(&self.raw)
            .expect("sink file parses as email")
    }

    /// The envelope sender (MAIL FROM) smtp-sink recorded for the message.
    pub fn return_path(&self) -> String {
        String::from_utf8_lossy(&self.raw)
            .lines()
            .find_map(|l| {
                l.strip_prefix("X-Mail-Args: <")
                    .map(|a| a.split('>').next().unwrap_or_default().to_string())
            })
            .expect("smtp-sink records the envelope sender")
    }

    /// A header of the message; `None` also for a file that holds no message (smtp-sink
    /// writes a file for a transaction the client abandoned after DATA).
    pub fn header(&self, name: &str) -> Option<String> {
        let parsed = mail_parser::MessageParser::default().parse(&self.raw)?;
        parsed
            .header_raw(name)
            .map(|v| v.split_whitespace().collect::<Vec<_>>().join(" "))
    }
}

/// A running `tidings` process; killed with SIGKILL when dropped.
pub struct Process {
    child: Child,
    pub roles: String,
    /// The test folder holding this process's log.
    root: PathBuf,
}

impl Process {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "tidings {} did not stop after SIGTERM{}",
                self.roles,
                log_tails(&self.root, 40)
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.kill9();
    }
}

pub struct Env {
    pub database: String,
    pub prefix: String,
    pub http_port: u16,
    pub inbound_port: u16,
    pub sink: Sink,
    pub window: Duration,
    vars: HashMap<String, String>,
    http: reqwest::Client,
    root: PathBuf,
}

impl Env {
    /// A fresh database (migrated with `tidings migrate`), queue prefix and sink.
    pub fn new(window: &str) -> Env {
        Self::with(window, &[], &[])
    }

    /// Like [`Env::new`], with extra `TIDINGS_*` variables and smtp-sink options.
    pub fn with(window: &str, vars: &[(&str, &str)], sink_args: &[&str]) -> Env {
        let database = unique("tidings_test");
        let prefix = unique("t");
        let root = std::env::temp_dir().join(unique("tidings-test"));
        let sink = Sink::start(free_port(), &root.join("mail"), sink_args);
        let http_port = free_port();
        let inbound_port = free_port();
        let mut map: HashMap<String, String> = [
            (
                "TIDINGS_DATABASE_URL",
                format!("{DATABASE_SERVER}/{database}"),
            ),
            ("TIDINGS_AMQP_URL", AMQP_URL.to_string()),
            (
                "TIDINGS_SMTP_URL",
                format!("smtp://127.0.0.1:{}", sink.port),
            ),
            ("TIDINGS_HTTP_ADDR", format!("127.0.0.1:{http_port}")),
            ("TIDINGS_INBOUND_ADDR", format!("127.0.0.1:{inbound_port}")),
            ("TIDINGS_API_TOKEN", TOKEN.to_string()),
            ("TIDINGS_TOKEN_SECRET", SECRET.to_string()),
            ("TIDINGS_REPLY_DOMAIN", REPLY_DOMAIN.to_string()),
            ("TIDINGS_SEEN_WINDOW", window.to_string()),
            ("TIDINGS_QUEUE_PREFIX", prefix.clone()),
            (
                "TIDINGS_TEMPLATES_DIR",
                concat!(env!("CARGO_MANIFEST_DIR"), "/templates").to_string(),
            ),
            ("TIDINGS_SWEEP_INTERVAL", "2s".to_string()),
            ("TIDINGS_LOG", "info,lapin=warn".to_string()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        for (k, v) in vars {
            map.insert(k.to_string(), v.to_string());
        }
        let window =
            tidings_common::config::parse_positive_duration(&map["TIDINGS_SEEN_WINDOW"]).unwrap();
        let env = Env {
            database,
            prefix,
            http_port,
            inbound_port,
            sink,
            window,
            vars: map,
            http: reqwest::Client::new(),
            root,
        };
        let out = env.command(&["migrate"]).output().unwrap();
        assert!(
            out.status.success(),
            "migrate failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        // Welcome emails would add one mail per created user to every test's mailbox; the
        // messaging-center tests switch them back on through the API.
        env.sql("UPDATE system_notifications SET enabled = false WHERE event = 'user_created'");
        env
    }

    /// Runs SQL on this test's database with psql; returns its unaligned output.
    pub fn sql(&self, query: &str) -> String {
        let out = Command::new(system::program("psql"))
            .args([
                "-qAt",
                "-v",
                "ON_ERROR_STOP=1",
                "-h",
                "127.0.0.1",
                "-U",
                "postgres",
                "-d",
                &self.database,
                "-c",
                query,
            ])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{query}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// The root folder of this test's files.
    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn var(&self, name: &str) -> &str {
        &self.vars[name]
    }

    /// A `tidings` command with this environment's variables.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_tidings"));
        cmd.args(args).env_clear();
        for key in ["PATH", "HOME"] {
            if let Ok(v) = std::env::var(key) {
                cmd.env(key, v);
            }
        }
        cmd.envs(&self.vars);
        cmd
    }

    /// Starts `tidings run <roles>`; its log goes to a file under the test folder.
    pub fn spawn(&self, roles: &[&str]) -> Process {
        self.spawn_named(&roles.join("-"), roles, &[])
    }

    /// Like [`Env::spawn`], with extra variables, logging to `<name>.log`.
    pub fn spawn_named(&self, name: &str, roles: &[&str], vars: &[(&str, &str)]) -> Process {
        let name = name.to_string();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.root.join(format!("{name}.log")))
            .unwrap();
        let mut args = vec!["run"];
        args.extend(roles);
        let child = self
            .command(&args)
            .envs(vars.iter().copied())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        Process {
            child,
            roles: name,
            root: self.root.clone(),
        }
    }

    pub fn log_of(&self, roles: &[&str]) -> String {
        std::fs::read_to_string(self.root.join(format!("{}.log", roles.join("-"))))
            .unwrap_or_default()
    }

    pub fn base(&self) -> String {
        format!("http://127.0.0.1:{}", self.http_port)
    }

    /// Waits until the api answers.
    pub async fn wait_for_api(&self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if self
                .http
                .get(self.base() + "/people/0")
                .send()
                .await
                .is_ok()
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "api did not start on port {}{}",
                self.http_port,
                log_tails(&self.root, 40)
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Calls the api with the token; returns the status and JSON body.
    pub async fn call(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        self.call_as(TOKEN, method, path, body).await
    }

    /// Calls the api and expects success; returns the body.
    pub async fn ok(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let (status, value) = self.call(method, path, body).await;
        assert!(
            (200..300).contains(&status),
            "{method} {path}: {status} {value}"
        );
        value
    }

    /// A person token for `person` (`POST /people/{id}/sessions`).
    pub async fn session(&self, person: i64) -> String {
        let s = self
            .ok("POST", &format!("/people/{person}/sessions"), None)
            .await;
        s["token"].as_str().unwrap().to_string()
    }

    /// Calls the api with a person token; returns the status and JSON body.
    pub async fn call_as(
        &self,
        token: &str,
        method: &str,
        path: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let mut req = self
            .http
            .request(method, self.base() + path)
            .bearer_auth(token);
        if let Some(body) = body {
            req = req.json(&body);
        }
        let resp = req.send().await.expect("api reachable");
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap();
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    pub async fn user(&self, name: &str) -> i64 {
        self.person("users", name).await
    }

    pub async fn customer(&self, name: &str) -> i64 {
        self.person("customers", name).await
    }

    async fn person(&self, kind: &str, name: &str) -> i64 {
        let email = format!("{}@example.com", name.to_lowercase());
        let v = self
            .ok(
                "POST",
                &format!("/{kind}"),
                Some(json!({"name": name, "email": email})),
            )
            .await;
        v["id"].as_i64().unwrap()
    }

    /// A project with a ticket and its conversation; returns (project, item, conversation).
    pub async fn ticket(&self, subject: &str) -> (i64, i64, i64) {
        let project = self
            .ok("POST", "/projects", Some(json!({"name": "Support"})))
            .await;
        let project = project["id"].as_i64().unwrap();
        let item = self
            .ok(
                "POST",
                "/items",
                Some(json!({"project_id": project, "kind": "ticket", "title": subject})),
            )
            .await;
        let item = item["id"].as_i64().unwrap();
        let conv = self
            .ok(
                "POST",
                "/conversations",
                Some(json!({"subject": subject, "item_id": item})),
            )
            .await;
        (project, item, conv["id"].as_i64().unwrap())
    }

    pub async fn follow_item(&self, item: i64, person: i64) {
        self.ok("PUT", &format!("/items/{item}/followers/{person}"), None)
            .await;
    }

    pub async fn add_participant(&self, conversation: i64, person: i64) {
        self.ok(
            "PUT",
            &format!("/conversations/{conversation}/participants/{person}"),
            None,
        )
        .await;
    }

    pub async fn post(&self, conversation: i64, author: i64, body: &str, internal: bool) -> i64 {
        let v = self
            .ok(
                "POST",
                &format!("/conversations/{conversation}/messages"),
                Some(json!({"author_id": author, "body": body, "internal": internal})),
            )
            .await;
        v["id"].as_i64().unwrap()
    }

    pub async fn deliveries(&self, message: i64) -> Value {
        self.ok("GET", &format!("/messages/{message}/deliveries"), None)
            .await
    }

    /// Waits until the message is dispatched and every notification is sent, skipped or failed.
    pub async fn settled(&self, message: i64, timeout: Duration) -> Value {
        let deadline = Instant::now() + timeout;
        loop {
            let d = self.deliveries(message).await;
            let done = d["dispatched"] == json!(true)
                && d["recipients"].as_array().unwrap().iter().all(|r| {
                    matches!(
                        r["email_state"].as_str(),
                        Some("sent" | "skipped" | "failed")
                    )
                });
            if done {
                return d;
            }
            assert!(
                Instant::now() < deadline,
                "message {message} not settled: {d}{}",
                log_tails(&self.root, 40)
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits until dispatch has written the message's notifications.
    pub async fn dispatched(&self, message: i64) -> Value {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let d = self.deliveries(message).await;
            if d["dispatched"] == json!(true) {
                return d;
            }
            assert!(
                Instant::now() < deadline,
                "message {message} not dispatched: {d}{}",
                log_tails(&self.root, 40)
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Every email the sink holds.
    pub fn mails(&self) -> Vec<SunkMail> {
        let mut out = Vec::new();
        let Ok(entries) = std::fs::read_dir(&self.sink.dir) else {
            return out;
        };
        for entry in entries.flatten() {
            let raw = std::fs::read(entry.path()).unwrap();
            let text = String::from_utf8_lossy(&raw);
            let rcpt = text
                .lines()
                .find_map(|l| l.strip_prefix("X-Rcpt-Args: <"))
                .map(|r| r.trim_end_matches('>').to_string())
                .unwrap_or_default();
            out.push(SunkMail {
                file: entry.path(),
                received: entry.metadata().unwrap().modified().unwrap(),
                rcpt,
                raw,
            });
        }
        out.sort_by_key(|m| m.received);
        out
    }

    pub fn mails_to(&self, address: &str) -> Vec<SunkMail> {
        self.mails()
            .into_iter()
            .filter(|m| m.rcpt == address)
            .collect()
    }

    /// Speaks SMTP to the inbound listener, as a relay would: returns each reply's first line
    /// (greeting, EHLO, MAIL, each RCPT, DATA, and the end of data if DATA was accepted).
    pub async fn smtp(&self, from: &str, rcpts: &[&str], message: &str) -> Vec<String> {
        smtp_to(self.inbound_port, from, rcpts, message).await
    }
}

/// Speaks SMTP to 127.0.0.1:`port` (see [`Env::smtp`]).
pub async fn smtp_to(port: u16, from: &str, rcpts: &[&str], message: &str) -> Vec<String> {
    {
        use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
        let stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .expect("SMTP server reachable");
        let (read, mut write) = stream.into_split();
        let mut lines = BufReader::new(read).lines();
        let mut reply = async || {
            let mut first = None;
            loop {
                let line = lines.next_line().await.unwrap().unwrap_or_default();
                first.get_or_insert_with(|| line.clone());
                if line.len() < 4 || line.as_bytes()[3] == b' ' {
                    return first.unwrap();
                }
            }
        };
        let mut commands = vec!["EHLO relay.test".to_string(), format!("MAIL FROM:<{from}>")];
        commands.extend(rcpts.iter().map(|r| format!("RCPT TO:<{r}>")));
        commands.push("DATA".into());
        let mut out = vec![reply().await];
        for command in commands {
            write
                .write_all(format!("{command}\r\n").as_bytes())
                .await
                .unwrap();
            out.push(reply().await);
        }
        if out.last().is_some_and(|r| r.starts_with("354")) {
            let stuffed: Vec<String> = message
                .replace("\r\n", "\n")
                .split('\n')
                .map(|l| {
                    if l.starts_with('.') {
                        format!(".{l}")
                    } else {
                        l.to_string()
                    }
                })
                .collect();
            let data = format!("{}\r\n.\r\n", stuffed.join("\r\n"));
            write.write_all(data.as_bytes()).await.unwrap();
            out.push(reply().await);
        }
        write.write_all(b"QUIT\r\n").await.unwrap();
        out
    }
}

impl Env {
    /// A broker channel for publishing or inspecting this test's queues directly.
    pub async fn channel(&self) -> (lapin::Connection, lapin::Channel) {
        let conn = lapin::Connection::connect(AMQP_URL, lapin::ConnectionProperties::default())
            .await
            .unwrap();
        let channel = conn.create_channel().await.unwrap();
        (conn, channel)
    }

    /// Waits until the roles have declared every exchange and queue.
    pub async fn wait_for_topology(&self) {
        let topology = self.topology();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let (conn, channel) = self.channel().await;
            let mut ready = true;
            for queue in [
                topology.dead_queue(),
                topology.due_queue(),
                topology.dispatch_queue(),
            ] {
                let passive = lapin::options::QueueDeclareOptions {
                    passive: true,
                    ..Default::default()
                };
                if channel
                    .queue_declare(queue.into(), passive, Default::default())
                    .await
                    .is_err()
                {
                    ready = false;
                    break;
                }
            }
            let _ = conn.close(200, "bye".into()).await;
            if ready {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "topology was not declared{}",
                log_tails(&self.root, 40)
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub fn topology(&self) -> tidings_common::amqp::Topology {
        let config = tidings_common::Config::from_lookup(|k| self.vars.get(k).cloned()).unwrap();
        tidings_common::amqp::Topology::from_config(&config)
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        self.sink.stop();
        let topology = self.topology();
        let database = self.database.clone();
        // Clean up from a thread with its own runtime: Drop may run inside or outside one.
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                if let Ok(conn) =
                    lapin::Connection::connect(AMQP_URL, lapin::ConnectionProperties::default())
                        .await
                {
                    if let Ok(channel) = conn.create_channel().await {
                        let _ = topology.delete(&channel).await;
                    }
                    let _ = conn.close(200, "bye".into()).await;
                }
            });
            let _ = Command::new(system::program("psql"))
                .args([
                    "-q",
                    "-h",
                    "127.0.0.1",
                    "-U",
                    "postgres",
                    "-d",
                    "postgres",
                    "-c",
                    &format!("DROP DATABASE IF EXISTS \"{database}\" WITH (FORCE)"),
                ])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        })
        .join()
        .unwrap();
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.root);
        } else {
            eprintln!("test files kept in {}", self.root.display());
        }
    }
}
