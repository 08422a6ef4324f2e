//! DKIM signing cost: notification emails built and formatted per CPU-second without signing
//! (the baseline, in the same run), then signed with an RSA-2048 key, an Ed25519 key, and both
//! side by side (the usual pair). Keys are made with openssl for the run.

use super::*;

use tidings_common::config::{DkimKeyFile, MailAuth};
use tidings_common::dkim::Dkim;
use tidings_common::mail::{OutboundEmail, build_email};
use tidings_common::templates::RenderedEmail;

/// Emails per CPU-second: unsigned, and with each key set.
pub(crate) struct Signing {
    pub(crate) unsigned: f64,
    pub(crate) signed: Vec<(&'static str, f64)>,
}

fn key(dir: &std::path::Path, name: &str, algorithm: &str) -> anyhow::Result<DkimKeyFile> {
    let path = dir.join(name);
    let mut cmd = Command::new(system::program("openssl"));
    cmd.args(["genpkey", "-algorithm", algorithm, "-out"])
        .arg(&path);
    if algorithm == "RSA" {
        cmd.args(["-pkeyopt", "rsa_keygen_bits:2048"]);
    }
    let out = cmd.output().context("openssl")?;
    if !out.status.success() {
        bail!("openssl genpkey: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(DkimKeyFile {
        selector: name.trim_end_matches(".pem").into(),
        path,
    })
}

/// A notification email as the mailer builds one: threading headers, an unsubscribe link,
/// a text part of about 1 kB and an HTML part of about 4 kB.
fn email(n: usize) -> OutboundEmail {
    let text = "Ann wrote in \"Printer on fire\":\n\nIs the printer fixed? It smells of smoke again and the tray is jammed.\n\n".repeat(8);
    let html = format!(
        "<html><body><table><tr><td><p>{}</p></td></tr></table></body></html>",
        "<b>Ann</b> wrote in <i>Printer on fire</i>: Is the printer fixed? It smells of smoke again and the tray is jammed.<br>".repeat(30)
    );
    OutboundEmail {
        from: "Help Desk <notifications@example.test>".into(),
        to_name: "Bob".into(),
        to_address: format!("bob{n}@example.net"),
        reply_to: format!("reply+{n}-2-3-abcdefghijklmnop@reply.example.test"),
        message_id: format!("<tidings.n{n}.p2.x@reply.example.test>"),
        references: vec!["<root@reply.example.test>".into()],
        unsubscribe_url: Some(format!(
            "https://desk.example.test/unsubscribe/{n}.u.from_customer.20800.abcdefghijklmnopqrstuvwxyz"
        )),
        envelope_from: Some(format!("bounces+n{n}-abcdefghijklmnop@reply.example.test")),
        content: RenderedEmail {
            subject: "New message in \"Printer on fire\"".into(),
            text,
            html,
            locale: "en".into(),
        },
        files: Vec::new(),
    }
}

pub(crate) fn signing_rate() -> anyhow::Result<Signing> {
    let dir = std::env::temp_dir().join(format!("tidings-bench-dkim-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let rsa = key(&dir, "rsa.pem", "RSA")?;
    let ed = key(&dir, "ed.pem", "ed25519")?;
    let signer = |keys: Vec<DkimKeyFile>| -> anyhow::Result<Dkim> {
        let auth = MailAuth {
            dkim_keys: keys,
            dkim_domain: None,
            inbound_verify: false,
            dns_server: None,
        };
        Dkim::from_config(&auth, "example.test")
            .map_err(|e| anyhow::anyhow!(e))?
            .context("no keys")
    };
    let sets = [
        ("rsa-sha256 (2048-bit key)", signer(vec![rsa.clone()])?),
        ("ed25519-sha256", signer(vec![ed.clone()])?),
        ("both keys", signer(vec![rsa, ed])?),
    ];
    let _ = std::fs::remove_dir_all(&dir);
    let emails: Vec<OutboundEmail> = (0..64).map(email).collect();
    let rate = |sign: Option<&Dkim>| -> anyhow::Result<f64> {
        let started = cpu_seconds();
        let wall = Instant::now();
        let mut done = 0usize;
        while wall.elapsed() < Duration::from_secs(3) {
            for e in &emails {
                let bytes = build_email(e)?.formatted();
                let bytes = match sign {
                    Some(dkim) => dkim.sign(&bytes).map_err(|e| anyhow::anyhow!(e))?,
                    None => bytes,
                };
                std::hint::black_box(bytes);
            }
            done += emails.len();
        }
        Ok(done as f64 / (cpu_seconds() - started).max(0.01))
    };
    let unsigned = rate(None)?;
    let mut signed = Vec::new();
    for (name, dkim) in &sets {
        signed.push((*name, rate(Some(dkim))?));
    }
    Ok(Signing { unsigned, signed })
}

pub(crate) fn print_signing(signing: Option<&Signing>) {
    let Some(s) = signing else {
        row(
            "emails built per CPU-second, DKIM".into(),
            "not measured".into(),
            String::new(),
        );
        return;
    };
    row(
        "emails built + formatted per CPU-second, unsigned".into(),
        per_s(s.unsigned),
        String::new(),
    );
    for (name, rate) in &s.signed {
        row(
            format!("  and DKIM-signed, {name}"),
            per_s(*rate),
            format!("{:.2}×", rate / s.unsigned),
        );
    }
}
