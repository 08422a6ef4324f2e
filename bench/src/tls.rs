//! `BENCH_ONLY=tls`: the pipeline in plain text and over TLS, on one RabbitMQ node of the
//! bench's own (with a plain and a TLS listener, a certificate from a CA made for the run) and
//! the PostgreSQL server (`sslmode=disable` against `sslmode=require`). Each mode is a whole
//! `BENCH_ONLY=pipeline` run of this binary, with its own baseline measured over the same
//! connection kind; the row compares their ratios.

use std::path::Path;
use std::process::{Command, Stdio};

use anyhow::{Context, bail};

// What the node module takes from its parent, as in the tests.
use super::{free_port, system};

#[path = "../../tests/support/pki.rs"]
mod pki;
#[path = "../../tests/support/rabbit.rs"]
mod rabbit;

/// One mode's figures, read from its run's JSON.
struct Mode {
    name: &'static str,
    baseline: f64,
    fan1: f64,
    fan10: f64,
}

impl Mode {
    fn ratio1(&self) -> f64 {
        self.fan1 / self.baseline
    }

    fn ratio10(&self) -> f64 {
        self.fan10 / self.baseline
    }
}

pub async fn tls_phase() -> anyhow::Result<()> {
    let root = std::env::temp_dir().join(format!("tidings-bench-tls-{}", std::process::id()));
    let pki = pki::Pki::new(&root.join("pki"), "bench");
    let server = pki.issue("broker", &["localhost"], false);
    let plain_port = free_port();
    eprintln!("bench: starting a RabbitMQ node with a plain and a TLS listener");
    let node = tokio::task::block_in_place(|| {
        rabbit::Cluster::start(
            &root.join("broker"),
            1,
            Some(rabbit::NodeTls {
                ca: pki.ca(),
                cert: server.cert.clone(),
                key: server.key.clone(),
                require_client_cert: false,
                plain_port: Some(plain_port),
            }),
        )
    });
    let plain_url = format!("amqp://guest:guest@127.0.0.1:{plain_port}/%2f");
    let tls_url = node.url(0, "localhost");
    let ca = pki.ca();
    let result = (|| -> anyhow::Result<Vec<Mode>> {
        Ok(vec![
            run_mode(&root, "plain", &plain_url, "sslmode=disable", None)?,
            run_mode(&root, "TLS", &tls_url, "sslmode=require", Some(&ca))?,
        ])
    })();
    drop(node);
    let modes = result?;
    let _ = std::fs::remove_dir_all(&root);
    println!();
    println!("Tidings over TLS: broker and database connections, plain against TLS, one node");
    super::row("measure".into(), "value".into(), "ratio".into());
    for mode in &modes {
        super::row(
            format!("{}: baseline raw AMQP through the delay", mode.name),
            super::per_s(mode.baseline),
            "1.00x".into(),
        );
        super::row(
            format!("{}: pipeline fan-out 1", mode.name),
            super::per_s(mode.fan1),
            format!("{:.2}x", mode.ratio1()),
        );
        super::row(
            format!("{}: pipeline fan-out 10", mode.name),
            super::per_s(mode.fan10),
            format!("{:.2}x", mode.ratio10()),
        );
    }
    let (plain, tls) = (&modes[0], &modes[1]);
    super::row(
        "TLS ratio / plain ratio, fan-out 1".into(),
        String::new(),
        format!("{:.2}", tls.ratio1() / plain.ratio1()),
    );
    super::row(
        "TLS ratio / plain ratio, fan-out 10".into(),
        String::new(),
        format!("{:.2}", tls.ratio10() / plain.ratio10()),
    );
    super::row(
        "TLS rate / plain rate, fan-out 1 and 10".into(),
        String::new(),
        format!(
            "{:.2} / {:.2}",
            tls.fan1 / plain.fan1,
            tls.fan10 / plain.fan10
        ),
    );
    Ok(())
}

/// A `BENCH_ONLY=pipeline` run of this binary against `amqp_url` and the database with
/// `ssl` (a libpq `sslmode`).
fn run_mode(
    root: &Path,
    name: &'static str,
    amqp_url: &str,
    ssl: &str,
    ca: Option<&Path>,
) -> anyhow::Result<Mode> {
    eprintln!("bench: the pipeline, {name}");
    let out = root.join(format!("{}.json", name.to_lowercase()));
    let mut child = Command::new(std::env::current_exe()?);
    child
        .env("BENCH_ONLY", "pipeline")
        .env("BENCH_AMQP_URL", amqp_url)
        .env("BENCH_DATABASE_OPTIONS", ssl)
        .env("BENCH_OUT", &out)
        .env_remove("TIDINGS_AMQP_CA")
        .stdout(Stdio::null());
    if let Some(ca) = ca {
        child.env("TIDINGS_AMQP_CA", ca);
    }
    let status = child.status().context("the pipeline run")?;
    if !status.success() {
        bail!("the {name} pipeline run failed ({status})");
    }
    let report: serde_json::Value = serde_json::from_slice(&std::fs::read(&out)?)?;
    let get = |key: &str| {
        report[key]
            .as_f64()
            .with_context(|| format!("{key} missing from {}", out.display()))
    };
    Ok(Mode {
        name,
        baseline: get("baseline_rate")?,
        fan1: get("fanout1_rate")?,
        fan10: get("fanout10_rate")?,
    })
}
