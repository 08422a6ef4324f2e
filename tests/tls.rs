//! TLS between the hosts of a fleet, on real servers with certificates from a CA the test
//! makes: the broker connection (`amqps://` to a RabbitMQ node of the test's own, listening with
//! TLS only and asking for a client certificate), the inbound listener's STARTTLS, and the
//! refusals an operator meets (a wrong CA, an expired certificate, a wrong host name, no
//! client certificate), each named.

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use support::Env;
use support::pki::Pki;
use support::rabbit::{Cluster, NodeTls};
use tidings_common::tls::AmqpTls;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};

const SETTLE: Duration = Duration::from_secs(30);

fn tls_of(ca: &std::path::Path, client: Option<&support::pki::Pair>) -> AmqpTls {
    AmqpTls::load(
        Some(ca),
        client.map(|c| c.cert.as_path()),
        client.map(|c| c.key.as_path()),
    )
    .unwrap()
}

/// Why connecting to `url` with `tls` failed (it must fail).
async fn refusal(url: &str, tls: &AmqpTls) -> String {
    match tidings_common::amqp::connect_with(url, "tls test", tls).await {
        Ok(_) => panic!("{url}: connected, but should have been refused"),
        Err(e) => e.to_string(),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_pipeline_runs_over_verified_broker_tls_and_each_refusal_is_named() {
    let env = Env::new("1s");
    let pki = Pki::new(&env.root().join("pki"), "fleet");
    let server = pki.issue("broker", &["localhost"], false);
    let client = pki.issue("client", &["tidings-worker"], false);
    let node = tokio::task::block_in_place(|| {
        Cluster::start(
            &env.root().join("broker"),
            1,
            Some(NodeTls {
                ca: pki.ca(),
                cert: server.cert.clone(),
                key: server.key.clone(),
                require_client_cert: true,
                plain_port: None,
            }),
        )
    });
    let url = node.url(0, "localhost");
    let ca = pki.ca().display().to_string();
    let (cert, key) = (
        client.cert.display().to_string(),
        client.key.display().to_string(),
    );

    // Every role over amqps, verifying the node against the CA and showing its certificate.
    let _tidings = env.spawn_named(
        "all",
        &["all"],
        &[
            ("TIDINGS_AMQP_URL", &url),
            ("TIDINGS_AMQP_CA", &ca),
            ("TIDINGS_AMQP_CLIENT_CERT", &cert),
            ("TIDINGS_AMQP_CLIENT_KEY", &key),
        ],
    );
    env.wait_for_api().await;
    let ann = env.user("Ann").await;
    let bob = env.user("Bob").await;
    let (_, item, conv) = env.ticket("Over TLS").await;
    env.follow_item(item, ann).await;
    env.follow_item(item, bob).await;
    let message = env
        .post(conv, ann, "Sent through an encrypted broker", false)
        .await;
    let d = env.settled(message, SETTLE).await;
    assert!(
        d["recipients"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["email_state"] == "sent"),
        "{d}"
    );
    assert_eq!(env.mails_to("bob@example.com").len(), 1);
    let connections = node.ctl(
        0,
        &[
            "-q",
            "list_connections",
            "ssl",
            "ssl_protocol",
            "peer_cert_subject",
        ],
    );
    assert!(
        connections.lines().filter(|l| l.contains("true")).count() >= 2
            && connections.lines().all(|l| !l.starts_with("false")),
        "every connection is TLS: {connections}"
    );
    assert!(
        connections.contains("tidings-worker"),
        "the roles showed their client certificate: {connections}"
    );

    // The refusals, each naming what failed.
    let good = tls_of(&pki.ca(), Some(&client));
    let no_client = refusal(&url, &tls_of(&pki.ca(), None)).await;
    println!("no client certificate: {no_client}");
    assert!(no_client.contains("client certificate"), "{no_client}");

    let other = Pki::new(&env.root().join("pki"), "other");
    let wrong_ca = refusal(&url, &tls_of(&other.ca(), Some(&client))).await;
    println!("wrong CA: {wrong_ca}");
    assert!(
        wrong_ca.contains("not signed by a trusted CA"),
        "{wrong_ca}"
    );

    let wrong_host = refusal(&node.url(0, "127.0.0.1"), &good).await;
    println!("wrong host name: {wrong_host}");
    assert!(
        wrong_host.contains("does not name the host"),
        "{wrong_host}"
    );

    // The node's certificate replaced in place by an expired one.
    pki.issue("broker", &["localhost"], true);
    node.clear_pem_cache(0);
    let expired = refusal(&url, &good).await;
    println!("expired certificate: {expired}");
    assert!(expired.contains("has expired"), "{expired}");
    assert!(
        !expired.contains("guest:guest"),
        "no password in the error: {expired}"
    );

    // A CA file that is not one stops the start, naming the variable.
    let out = env
        .command(&["migrate"])
        .env("TIDINGS_AMQP_CA", cert.replace(".pem", ".key"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("TIDINGS_AMQP_CA") && stderr.contains("no certificate"),
        "{stderr}"
    );
}

/// Reads one SMTP reply (all its lines); returns its last line.
async fn reply<R: AsyncRead + Unpin>(lines: &mut BufReader<R>) -> String {
    let mut all = String::new();
    loop {
        let mut line = String::new();
        let n = tokio::time::timeout(Duration::from_secs(10), lines.read_line(&mut line))
            .await
            .expect("a reply within 10 s")
            .unwrap();
        if n == 0 {
            return all;
        }
        all.push_str(&line);
        if line.len() < 4 || line.as_bytes()[3] == b' ' {
            return all;
        }
    }
}

async fn say<S: AsyncRead + AsyncWrite + Unpin>(stream: &mut BufReader<S>, line: &str) -> String {
    stream
        .get_mut()
        .write_all(format!("{line}\r\n").as_bytes())
        .await
        .unwrap();
    reply(stream).await
}

fn client_config(ca: &std::path::Path) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in tidings_common::tls::read_certificates(ca).unwrap() {
        roots.add(cert).unwrap();
    }
    tidings_common::tls::client_config(roots).unwrap()
}

/// Connects, says EHLO and STARTTLS (plus `injected`, sent in the same packet), and completes
/// the handshake; the TLS stream and the certificate the server showed.
async fn start_tls(
    port: u16,
    ca: &std::path::Path,
    injected: &str,
) -> (
    BufReader<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>,
    Vec<u8>,
) {
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    let mut plain = BufReader::new(tcp);
    assert!(reply(&mut plain).await.starts_with("220"));
    let ehlo = say(&mut plain, "EHLO relay.test").await;
    assert!(ehlo.contains("250-STARTTLS"), "STARTTLS offered: {ehlo}");
    let go = say(&mut plain, &format!("STARTTLS{injected}")).await;
    assert!(go.starts_with("220 "), "{go}");
    assert!(plain.buffer().is_empty(), "nothing after the 220");
    let connector = tokio_rustls::TlsConnector::from(client_config(ca));
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let tls = connector.connect(name, plain.into_inner()).await.unwrap();
    let shown = tls.get_ref().1.peer_certificates().unwrap()[0].to_vec();
    (BufReader::new(tls), shown)
}

#[tokio::test(flavor = "multi_thread")]
async fn inbound_starttls_is_offered_required_reloaded_and_bounded() {
    let root = std::env::temp_dir().join(format!("tidings-tls-{}", std::process::id()));
    let pki = Pki::new(&root.join("pki"), "mx");
    let server = pki.issue("listener", &["localhost"], false);
    let env = Env::with(
        "1s",
        &[
            (
                "TIDINGS_INBOUND_TLS_CERT",
                &server.cert.display().to_string(),
            ),
            ("TIDINGS_INBOUND_TLS_KEY", &server.key.display().to_string()),
            ("TIDINGS_INBOUND_REQUIRE_TLS", "yes"),
            ("TIDINGS_INBOUND_SESSION_TIMEOUT", "3s"),
        ],
        &[],
    );
    let _tidings = env.spawn(&["all"]);
    env.wait_for_api().await;
    let port = env.inbound_port;

    // Without TLS, MAIL is refused (and the relay's plain attempt is told why).
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    let mut plain = BufReader::new(tcp);
    assert!(reply(&mut plain).await.starts_with("220"));
    assert!(
        say(&mut plain, "EHLO relay.test")
            .await
            .contains("STARTTLS")
    );
    let mail = say(&mut plain, "MAIL FROM:<carol@example.com>").await;
    assert!(mail.starts_with("530 5.7.0"), "{mail}");
    drop(plain);

    // With TLS: a new ticket arrives. A command sent right after STARTTLS, before the
    // handshake, is dropped unread (no injection into the encrypted session).
    let (mut tls, shown) = start_tls(port, &pki.ca(), "\r\nMAIL FROM:<injected@example.com>").await;
    assert_eq!(shown, cert_der(&server.cert));
    let ehlo = say(&mut tls, "EHLO relay.test").await;
    assert!(
        ehlo.starts_with("250-"),
        "the first reply answers EHLO: {ehlo}"
    );
    assert!(!ehlo.contains("STARTTLS"), "not offered twice: {ehlo}");
    assert!(
        say(&mut tls, "MAIL FROM:<carol@example.com>")
            .await
            .starts_with("250")
    );
    let rcpt = format!("RCPT TO:<support@{}>", support::REPLY_DOMAIN);
    assert!(say(&mut tls, &rcpt).await.starts_with("250"));
    assert!(say(&mut tls, "DATA").await.starts_with("354"));
    let queued = say(
        &mut tls,
        "From: Carol <carol@example.com>\r\nTo: support@reply.test.localhost\r\n\
         Subject: Sent over STARTTLS\r\nMessage-ID: <tls-1@example.com>\r\n\r\n\
         My invoice is wrong.\r\n.",
    )
    .await;
    assert!(queued.starts_with("250"), "{queued}");
    assert!(say(&mut tls, "QUIT").await.starts_with("221"));
    let deadline = Instant::now() + SETTLE;
    while env.sql("SELECT count(*) FROM conversations WHERE subject = 'Sent over STARTTLS'") != "1"
    {
        assert!(
            Instant::now() < deadline,
            "the email became no ticket{}",
            support::log_tails(env.root(), 30)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // A renewed certificate is used from the next handshake on, without a restart.
    let renewed = pki.issue("listener", &["localhost"], false);
    assert_ne!(cert_der(&renewed.cert), shown);
    let (mut tls, shown) = start_tls(port, &pki.ca(), "").await;
    assert_eq!(shown, cert_der(&renewed.cert), "the renewed certificate");
    assert!(say(&mut tls, "EHLO relay.test").await.starts_with("250"));

    // A client that never starts its handshake is cut off within the session's bound.
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    let mut stalled = BufReader::new(tcp);
    reply(&mut stalled).await;
    say(&mut stalled, "EHLO relay.test").await;
    assert!(say(&mut stalled, "STARTTLS").await.starts_with("220"));
    let started = Instant::now();
    let mut rest = Vec::new();
    let read = tokio::time::timeout(
        Duration::from_secs(15),
        tokio::io::AsyncReadExt::read_to_end(&mut stalled, &mut rest),
    )
    .await;
    assert!(read.is_ok(), "still open after 15 s");
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "closed after {:?}",
        started.elapsed()
    );
    drop(_tidings);
    drop(env);
    let _ = std::fs::remove_dir_all(&root);
}

fn cert_der(path: &std::path::Path) -> Vec<u8> {
    tidings_common::tls::read_certificates(path).unwrap()[0].to_vec()
}

/// A PostgreSQL cluster of the test's own (Debian's `pg_createcluster`), on a free loopback
/// port with `ssl = on` and the test CA's certificate; dropped, with its files, at the end.
struct PgCluster {
    version: String,
    name: String,
    port: u16,
    conf: std::path::PathBuf,
}

impl PgCluster {
    fn root_command(name: &str) -> Option<std::process::Command> {
        match support::system::as_root(name) {
            Ok(cmd) => Some(cmd),
            Err(why) => {
                println!("skipping the PostgreSQL TLS test: {why}");
                None
            }
        }
    }

    fn run(name: &str, args: &[&str]) {
        let out = Self::root_command(name)
            .expect("root was available a moment ago")
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{name} {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// A new cluster serving `server`'s certificate; `None` when this user cannot be root.
    fn start(server: &support::pki::Pair) -> Option<PgCluster> {
        Self::root_command("true")?;
        let version = std::fs::read_dir("/usr/lib/postgresql")
            .ok()?
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .filter(|v| v.parse::<u32>().is_ok())
            .max_by_key(|v| v.parse::<u32>().unwrap())?;
        let name = format!("tidings_tls_{}", std::process::id());
        let cluster = PgCluster {
            conf: format!("/etc/postgresql/{version}/{name}").into(),
            port: support::free_port(),
            name,
            version,
        };
        let port = cluster.port.to_string();
        let cert = cluster.conf.join("tidings-server.pem");
        let key = cluster.conf.join("tidings-server.key");
        Self::run(
            "pg_createcluster",
            &[
                &cluster.version,
                &cluster.name,
                "-p",
                &port,
                "-o",
                "ssl=on",
                "-o",
                &format!("ssl_cert_file={}", cert.display()),
                "-o",
                &format!("ssl_key_file={}", key.display()),
                "--",
                "--auth-host=trust",
                "--auth-local=trust",
            ],
        );
        cluster.install(server);
        Self::run(
            "pg_ctlcluster",
            &[
                "--skip-systemctl-redirect",
                &cluster.version,
                &cluster.name,
                "start",
            ],
        );
        Some(cluster)
    }

    /// Puts `pair` in place as the server's certificate and key (owned by postgres).
    fn install(&self, pair: &support::pki::Pair) {
        for (from, to, mode) in [
            (&pair.cert, "tidings-server.pem", "644"),
            (&pair.key, "tidings-server.key", "600"),
        ] {
            Self::run(
                "install",
                &[
                    "-o",
                    "postgres",
                    "-g",
                    "postgres",
                    "-m",
                    mode,
                    &from.display().to_string(),
                    &self.conf.join(to).display().to_string(),
                ],
            );
        }
    }

    fn reload(&self) {
        Self::run(
            "pg_ctlcluster",
            &[
                "--skip-systemctl-redirect",
                &self.version,
                &self.name,
                "reload",
            ],
        );
    }

    fn url(&self, host: &str, ca: &std::path::Path) -> String {
        format!(
            "postgres://postgres@{host}:{}/tidings_tls?sslmode=verify-full&sslrootcert={}",
            self.port,
            ca.display()
        )
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        if let Some(mut cmd) = Self::root_command("pg_dropcluster") {
            let _ = cmd.args(["--stop", &self.version, &self.name]).output();
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_database_over_verify_full_tls_and_each_refusal_is_named() {
    let env = Env::new("1s");
    let pki = Pki::new(&env.root().join("pki"), "db");
    let server = pki.issue("postgres", &["localhost"], false);
    let Some(cluster) = tokio::task::block_in_place(|| PgCluster::start(&server)) else {
        return;
    };
    let url = cluster.url("localhost", &pki.ca());
    let migrate = |url: &str| {
        let out = env
            .command(&["migrate"])
            .env("TIDINGS_DATABASE_URL", url)
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    };
    let (ok, stderr) = migrate(&url);
    assert!(ok, "migrate over verify-full: {stderr}");

    // A role's pooled connections are TLS.
    let mut api = env.spawn_named("api", &["api"], &[("TIDINGS_DATABASE_URL", &url)]);
    env.wait_for_api().await;
    env.user("Ann").await;
    let psql = |sql: &str| {
        let out = std::process::Command::new(support::system::program("psql"))
            .args(["-qAt", "-d", &url, "-c", sql])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    let seen = psql(
        "SELECT count(*) FILTER (WHERE s.ssl), count(*) FILTER (WHERE NOT s.ssl) \
         FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) \
         WHERE a.datname = 'tidings_tls' AND a.pid <> pg_backend_pid()",
    );
    let (tls, plain) = seen.split_once('|').unwrap();
    assert!(
        tls.parse::<u32>().unwrap() >= 1 && plain == "0",
        "TLS/plain connections: {seen}"
    );
    api.terminate();

    let other = Pki::new(&env.root().join("pki"), "other");
    let (ok, wrong_ca) = migrate(&cluster.url("localhost", &other.ca()));
    println!("wrong CA: {wrong_ca}");
    assert!(
        !ok && wrong_ca.contains("certificate verify failed")
            && wrong_ca.contains("not signed by a trusted CA (check sslrootcert"),
        "{wrong_ca}"
    );

    let (ok, wrong_host) = migrate(&cluster.url("127.0.0.1", &pki.ca()));
    println!("wrong host name: {wrong_host}");
    assert!(
        !ok && wrong_host.contains("does not match host name"),
        "{wrong_host}"
    );

    cluster.install(&pki.issue("postgres", &["localhost"], true));
    cluster.reload();
    let (ok, expired) = migrate(&url);
    println!("expired certificate: {expired}");
    assert!(
        !ok && expired.contains("certificate has expired"),
        "{expired}"
    );
    // `tidings status` says the same.
    let out = env
        .command(&["status"])
        .env("TIDINGS_DATABASE_URL", &url)
        .output()
        .unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        !out.status.success() && said.contains("certificate has expired"),
        "{said}"
    );
}

/// A TLS-terminating front for the test's `smtp-sink` (which speaks no TLS): what an
/// `smtps://` relay on port 465 looks like to the mailer. Returns its port.
async fn smtps_front(pair: &support::pki::Pair, sink: Arc<std::sync::OnceLock<u16>>) -> u16 {
    let chain = tidings_common::tls::read_certificates(&pair.cert).unwrap();
    let key = tidings_common::tls::read_private_key(&pair.key).unwrap();
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(chain, key)
    .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        // Bounded: the test sends a handful of emails over a few connections.
        for _ in 0..64 {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let (acceptor, sink) = (acceptor.clone(), sink.clone());
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let Some(port) = sink.get().copied() else {
                    return;
                };
                let Ok(mut plain) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await
                else {
                    return;
                };
                let _ = tokio::io::copy_bidirectional(&mut tls, &mut plain).await;
            });
        }
    });
    port
}

#[tokio::test(flavor = "multi_thread")]
async fn smtps_is_verified_against_tidings_smtp_ca() {
    let root = std::env::temp_dir().join(format!("tidings-smtps-{}", std::process::id()));
    let pki = Pki::new(&root.join("pki"), "relay");
    let front = pki.issue("relay", &["localhost"], false);
    let sink_port = Arc::new(std::sync::OnceLock::new());
    let port = smtps_front(&front, sink_port.clone()).await;
    let url = format!("smtps://localhost:{port}");
    let env = Env::with(
        "1s",
        &[
            ("TIDINGS_SMTP_URL", &url),
            ("TIDINGS_SMTP_CA", &pki.ca().display().to_string()),
            ("TIDINGS_RETRY_TIERS", "1s,1s,1s"),
        ],
        &[],
    );
    sink_port.set(env.sink.port).unwrap();
    let mut tidings = env.spawn(&["all"]);
    env.wait_for_api().await;
    let ann = env.user("Ann").await;
    let bob = env.user("Bob").await;
    let (_, item, conv) = env.ticket("Over smtps").await;
    env.follow_item(item, bob).await;
    for n in 0..3 {
        let message = env
            .post(conv, ann, &format!("Wrapped in TLS {n}"), false)
            .await;
        let d = env.settled(message, SETTLE).await;
        assert!(
            d["recipients"][0]["smtp_reply"]
                .as_str()
                .is_some_and(|r| r.starts_with("250")),
            "{d}"
        );
    }
    assert_eq!(env.mails_to("bob@example.com").len(), 3);
    tidings.terminate();

    // A relay whose certificate the configured CA did not sign: deferred, saying why.
    let other = Pki::new(&root.join("pki"), "other");
    let _tidings = env.spawn_named(
        "all-other-ca",
        &["all"],
        &[("TIDINGS_SMTP_CA", &other.ca().display().to_string())],
    );
    env.wait_for_api().await;
    let message = env.post(conv, ann, "Refused by the CA check", false).await;
    let deadline = Instant::now() + SETTLE;
    let log = loop {
        let log = env
            .ok("GET", &format!("/email-log?message_id={message}"), None)
            .await;
        if let Some(row) = log
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["status"] == "deferred")
        {
            break row.to_string();
        }
        assert!(Instant::now() < deadline, "never deferred: {log}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    println!("wrong CA for smtps: {log}");
    assert!(
        log.contains("not signed by a trusted CA (check TIDINGS_SMTP_CA)"),
        "{log}"
    );
    drop(_tidings);
    drop(env);
    let _ = std::fs::remove_dir_all(&root);
}
