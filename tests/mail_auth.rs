//! Mail authentication against a real DNS server (dnsmasq serving a test zone on loopback):
//! outbound DKIM signing checked by an independent verifier (dkimpy), `tidings check dns`
//! judging a complete zone and a broken one, and the in-process DKIM, SPF and DMARC check of
//! inbound mail (SPEC I4) where the relay gives no verdict.

mod support;

use std::path::Path;
use std::process::{Command, Stdio};

use support::zone::{Record, Zone};
use support::{Env, system};

const REPLY: &str = "reply.example.test";
/// The address mail leaves from (the relay's), in the documentation range.
const RELAY_IP: &str = "192.0.2.25";

/// Makes a private key with openssl: `RSA` (2048 bits) or `ed25519`.
fn key(dir: &Path, name: &str, algorithm: &str) -> String {
    std::fs::create_dir_all(dir).unwrap();
    let path = dir.join(name);
    let mut cmd = Command::new(system::program("openssl"));
    cmd.args(["genpkey", "-algorithm", algorithm, "-out"])
        .arg(&path);
    if algorithm == "RSA" {
        cmd.args(["-pkeyopt", "rsa_keygen_bits:2048"]);
    }
    let out = cmd.output().expect("openssl");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    path.display().to_string()
}

/// The DNS records `tidings check` says to publish for the configured keys: (name, record).
fn published(env: &Env, vars: &[(&str, &str)]) -> Vec<(String, String)> {
    let out = env
        .command(&["check"])
        .envs(vars.iter().copied())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    text.lines()
        .filter_map(|l| {
            let rest = l.split_once("(publish: ")?.1;
            let (name, record) = rest.split_once(" TXT \"")?;
            Some((name.to_string(), record.trim_end_matches("\")").to_string()))
        })
        .collect()
}

fn check_dns(env: &Env, vars: &[(&str, &str)]) -> (bool, String) {
    let out = env
        .command(&["check", "dns", "--ip", RELAY_IP])
        .envs(vars.iter().copied())
        .output()
        .unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

fn good_zone<'a>(keys: &'a [(String, String)]) -> Vec<Record<'a>> {
    let mut records = vec![
        Record::Mx(REPLY, 10, "mx.example.test"),
        Record::A("mx.example.test", "127.0.0.1"),
        Record::Txt(REPLY, "v=spf1 ip4:192.0.2.25 -all"),
        Record::Txt("_dmarc.example.test", "v=DMARC1; p=reject; adkim=r; aspf=r"),
        Record::Ptr("25.2.0.192.in-addr.arpa", "relay.example.test"),
        Record::A("relay.example.test", "192.0.2.25"),
    ];
    records.extend(keys.iter().map(|(n, r)| Record::Txt(n, r)));
    records
}

/// The zone a deployment should publish passes every check; a zone with the wrong key, no
/// DMARC, no MX and an SPF record that leaves the relay out fails each, naming the record
/// to publish.
#[test]
fn check_dns_judges_spf_dkim_dmarc_mx_and_ptr() {
    let env = Env::new("1s");
    let dir = env.root().join("keys");
    let rsa = key(&dir, "rsa.pem", "RSA");
    let ed = key(&dir, "ed.pem", "ed25519");
    let keys = format!("rsa2026:{rsa},ed2026:{ed}");
    let base = [
        (
            "TIDINGS_MAIL_FROM",
            "Help Desk <notifications@example.test>",
        ),
        ("TIDINGS_REPLY_DOMAIN", REPLY),
        ("TIDINGS_DKIM_KEYS", keys.as_str()),
    ];
    let records = published(&env, &base);
    assert_eq!(records.len(), 2, "{records:?}");
    assert_eq!(records[0].0, "rsa2026._domainkey.example.test");
    assert!(
        records[0].1.starts_with("v=DKIM1; k=rsa; p=MII"),
        "{records:?}"
    );
    assert!(
        records[1].1.starts_with("v=DKIM1; k=ed25519; p="),
        "{records:?}"
    );

    let zone = Zone::start(&env.root().join("good"), &good_zone(&records));
    let server = zone.server();
    let mut vars = base.to_vec();
    vars.push(("TIDINGS_DNS_SERVER", server.as_str()));
    let (ok, out) = check_dns(&env, &vars);
    assert!(ok, "{out}");
    for what in ["MX", "SPF", "DKIM", "DMARC", "PTR"] {
        assert!(
            out.lines().any(|l| l.starts_with("ok") && l.contains(what)),
            "{what}: {out}"
        );
    }
    assert!(!out.contains("MISSING"), "{out}");
    drop(zone);

    // Broken: the RSA selector publishes another key, SPF leaves the relay out, no DMARC,
    // no MX, and the PTR name does not resolve back.
    let wrong = vec![
        Record::Txt(REPLY, "v=spf1 ip4:192.0.2.1 -all"),
        Record::Txt(&records[0].0, &records[1].1),
        Record::Txt(&records[1].0, &records[1].1),
        Record::Ptr("25.2.0.192.in-addr.arpa", "elsewhere.example.test"),
    ];
    let zone = Zone::start(&env.root().join("broken"), &wrong);
    let server = zone.server();
    let mut vars = base.to_vec();
    vars.push(("TIDINGS_DNS_SERVER", server.as_str()));
    let (ok, out) = check_dns(&env, &vars);
    assert!(!ok, "{out}");
    let missing = |what: &str| {
        out.lines()
            .any(|l| l.starts_with("MISSING") && l.contains(what))
    };
    for what in ["MX", "SPF", "DMARC", "PTR"] {
        assert!(missing(what), "{what}: {out}");
    }
    assert!(
        out.contains(
            "rsa2026._domainkey.example.test: the published key is not the configured one"
        ),
        "{out}"
    );
    assert!(
        out.contains(&format!(
            "publish: rsa2026._domainkey.example.test. TXT \"{}\"",
            records[0].1
        )),
        "{out}"
    );
    assert!(
        out.contains("ed2026._domainkey.example.test: the published key is the configured one"),
        "{out}"
    );
    assert!(
        out.contains("publish: _dmarc.example.test. TXT \"v=DMARC1; p=none"),
        "{out}"
    );
    assert!(out.contains("192.0.2.25 does not pass"), "{out}");

    // A key file that is not a key is refused by name.
    let bad = dir.join("bad.pem");
    std::fs::write(&bad, "not a key").unwrap();
    let bad_keys = format!("s1:{}", bad.display());
    let out = env
        .command(&["check"])
        .envs([("TIDINGS_DKIM_KEYS", bad_keys.as_str())])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("TIDINGS_DKIM_KEYS") && err.contains("bad.pem"),
        "{err}"
    );
}

/// Verifies every DKIM-Signature of `raw` with dkimpy, its keys looked up on `port`; prints
/// `verified <n>` or what failed.
fn dkimpy_verify(raw: &[u8], port: u16) -> String {
    const VERIFY: &str = r#"
import sys, dkim, dns.resolver
resolver = dns.resolver.Resolver(configure=False)
resolver.nameservers = ["127.0.0.1"]
resolver.port = int(sys.argv[1])
def dnsfunc(name, timeout=5):
    name = name.decode() if isinstance(name, bytes) else name
    try:
        answer = resolver.resolve(name.rstrip("."), "TXT")
    except Exception:
        return None
    return b"".join(b"".join(r.strings) for r in answer)
message = sys.stdin.buffer.read()
d = dkim.DKIM(message)
count = sum(1 for name, _ in d.headers if name.lower() == b"dkim-signature")
failed = [i for i in range(count) if not dkim.DKIM(message).verify(idx=i, dnsfunc=dnsfunc)]
print("verified %d" % count if count and not failed else "failed %r of %d" % (failed, count))
"#;
    let mut child = Command::new("/usr/bin/python3")
        .args(["-c", VERIFY, &port.to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3 with dkimpy (scripts/services installs python3-dkim)");
    use std::io::Write;
    child.stdin.take().unwrap().write_all(raw).unwrap();
    let out = child.wait_with_output().unwrap();
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout).trim(),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Outbound mail is signed with every configured key (RSA and Ed25519), over the headers a
/// reader acts on, and an independent verifier finds both signatures good through DNS.
#[tokio::test]
async fn outbound_mail_is_dkim_signed_and_verifies_with_dkimpy() {
    let dir = std::env::temp_dir().join(format!("tidings-dkim-{}", std::process::id()));
    let rsa = key(&dir, "rsa.pem", "RSA");
    let ed = key(&dir, "ed.pem", "ed25519");
    let keys = format!("rsa2026:{rsa},ed2026:{ed}");
    let env = Env::with(
        "1s",
        &[
            (
                "TIDINGS_MAIL_FROM",
                "Help Desk <notifications@example.test>",
            ),
            ("TIDINGS_DKIM_KEYS", &keys),
        ],
        &[],
    );
    let records = published(&env, &[]);
    let zone = Zone::start(&env.root().join("zone"), &good_zone(&records));
    let _tidings = env.spawn(&["all"]);
    env.wait_for_api().await;
    env.wait_for_topology().await;
    let ann = env.user("Ann").await;
    let bob = env.user("Bob").await;
    let (_, item, conv) = env.ticket("Printer").await;
    env.follow_item(item, bob).await;
    let m = env.post(conv, ann, "Is the printer fixed?", false).await;
    env.settled(m, std::time::Duration::from_secs(30)).await;
    let mail = &env.mails_to("bob@example.com")[0];
    // The sink writes lines ending in LF; the wire had CRLF.
    let text = String::from_utf8_lossy(&std::fs::read(&mail.file).unwrap())
        .replace("\r\n", "\n")
        .replace('\n', "\r\n");
    let signatures = text
        .lines()
        .filter(|l| l.starts_with("DKIM-Signature:"))
        .count();
    assert_eq!(signatures, 2, "{text}");
    let unfolded = text.replace("\r\n ", " ").replace("\r\n\t", " ");
    for (algorithm, selector) in [("rsa-sha256", "rsa2026"), ("ed25519-sha256", "ed2026")] {
        let signature = unfolded
            .lines()
            .find(|l| l.starts_with("DKIM-Signature:") && l.contains(&format!("a={algorithm}")))
            .unwrap_or_else(|| panic!("no {algorithm} signature: {text}"));
        assert!(signature.contains(&format!("s={selector}")), "{signature}");
        assert!(signature.contains("d=example.test"), "{signature}");
        let signed: String = signature
            .split("h=")
            .nth(1)
            .unwrap()
            .split(';')
            .next()
            .unwrap()
            .chars()
            .filter(|c| !c.is_whitespace())
            .collect::<String>()
            .to_ascii_lowercase();
        for header in [
            "from",
            "to",
            "subject",
            "date",
            "message-id",
            "reply-to",
            "list-unsubscribe",
            "list-unsubscribe-post",
        ] {
            assert!(
                signed.split(':').any(|h| h == header),
                "{header} not signed: {signed}"
            );
        }
    }
    // The sink adds its own lines above the message; dkimpy reads it from its first header on.
    let start = text.find("DKIM-Signature:").unwrap();
    assert_eq!(
        dkimpy_verify(&text.as_bytes()[start..], zone.port),
        "verified 2"
    );
    // Changed in transit, it no longer verifies.
    let tampered = text[start..].replacen("\r\nSubject: ", "\r\nSubject: Pay this invoice: ", 1);
    assert_ne!(tampered, text[start..]);
    assert!(
        dkimpy_verify(tampered.as_bytes(), zone.port).starts_with("failed"),
        "tampering went unnoticed"
    );
    let _ = std::fs::remove_dir_all(dir);
}

/// Signs `message` as `selector._domainkey.<domain>` with dkimpy (an independent signer).
fn dkimpy_sign(message: &str, key: &str, selector: &str, domain: &str) -> String {
    const SIGN: &str = r#"
import sys, dkim
key = open(sys.argv[1], "rb").read()
message = sys.stdin.buffer.read()
sig = dkim.sign(message, sys.argv[2].encode(), sys.argv[3].encode(), key,
                include_headers=[b"from", b"to", b"subject", b"date", b"message-id"])
sys.stdout.buffer.write(sig + message)
"#;
    let mut child = Command::new("/usr/bin/python3")
        .args(["-c", SIGN, key, selector, domain])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(message.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// The public key of a PEM private key, base64 of its SubjectPublicKeyInfo.
fn public_key(key: &str) -> String {
    let out = Command::new(system::program("openssl"))
        .args(["pkey", "-in", key, "-pubout", "-outform", "DER"])
        .output()
        .unwrap();
    assert!(out.status.success());
    base64::Engine::encode(&base64::engine::general_purpose::STANDARD, &out.stdout)
}

/// With `TIDINGS_INBOUND_VERIFY=on` and no relay verdict, a customer's mail signed by their
/// domain and sent from its SPF host is posted; one forging that domain (no signature, from
/// another host, under `p=reject`) is rejected with the check's reason and not posted.
#[tokio::test]
async fn i4_inbound_mail_is_checked_in_process_without_a_relay_verdict() {
    let dir = std::env::temp_dir().join(format!("tidings-verify-{}", std::process::id()));
    let customer_key = key(&dir, "customer.pem", "RSA");
    let customer_record = format!("v=DKIM1; k=rsa; p={}", public_key(&customer_key));
    let records = vec![
        Record::Txt("customer.example.test", "v=spf1 ip4:192.0.2.10 -all"),
        Record::Txt("_dmarc.customer.example.test", "v=DMARC1; p=reject"),
        Record::Txt("sel._domainkey.customer.example.test", &customer_record),
    ];
    let zone = Zone::start(&dir.join("zone"), &records);
    let server = zone.server();
    let env = Env::with(
        "1s",
        &[
            ("TIDINGS_INBOUND_VERIFY", "on"),
            ("TIDINGS_DNS_SERVER", &server),
        ],
        &[],
    );
    let _tidings = env.spawn(&["all"]);
    env.wait_for_api().await;
    env.wait_for_topology().await;
    let support_address = format!("support@{}", support::REPLY_DOMAIN);
    let mail = |n: u32, ip: &str, subject: &str| {
        format!(
            "Received: from mx.customer.example.test (mx.customer.example.test [{ip}])\r\n\tby relay.example.test with ESMTP; Mon, 7 Dec 2026 09:00:00 +0000\r\n\
             From: Dana <dana@customer.example.test>\r\nTo: {support_address}\r\nSubject: {subject}\r\n\
             Date: Mon, 7 Dec 2026 09:00:00 +0000\r\nMessage-ID: <v{n}@customer.example.test>\r\n\r\n{subject}, please.\r\n"
        )
    };
    let forged = mail(1, "203.0.113.66", "Refund me");
    let replies = env
        .smtp("dana@customer.example.test", &[&support_address], &forged)
        .await;
    assert!(replies.last().unwrap().starts_with("250"), "{replies:?}");
    let genuine = dkimpy_sign(
        &mail(2, "192.0.2.10", "Fix my printer"),
        &customer_key,
        "sel",
        "customer.example.test",
    );
    let replies = env
        .smtp("dana@customer.example.test", &[&support_address], &genuine)
        .await;
    assert!(replies.last().unwrap().starts_with("250"), "{replies:?}");
    support::wait_for(env.root(), "both emails to be processed", async || {
        let log = env.ok("GET", "/email-log?limit=100", None).await;
        log.as_array()
            .unwrap()
            .iter()
            .filter(|r| r["direction"] == "inbound")
            .count()
            >= 2
    })
    .await;
    let log = env.ok("GET", "/email-log?limit=100", None).await;
    let inbound: Vec<&serde_json::Value> = log
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["direction"] == "inbound")
        .collect();
    let rejected = inbound
        .iter()
        .find(|r| r["status"] == "rejected")
        .expect("the forgery is rejected");
    let reason = rejected["reason"].as_str().unwrap();
    assert!(reason.contains("in-process check: dmarc=fail"), "{reason}");
    assert!(
        inbound.iter().any(|r| r["status"] == "created"),
        "{inbound:?}"
    );
    let subjects = env.sql("SELECT string_agg(subject, ',') FROM conversations");
    assert!(subjects.contains("Fix my printer"), "{subjects}");
    assert!(!subjects.contains("Refund me"), "{subjects}");
    drop(zone);
    let _ = std::fs::remove_dir_all(dir);
}
