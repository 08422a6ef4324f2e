//! A DNS server of the test's own: dnsmasq on a free loopback port, answering for a test zone
//! only (`example.test`, and the reverse zone of 127.0.0.0/8), stopped by its PID on drop.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::system;

/// One record of the test zone.
pub enum Record<'a> {
    /// A TXT record; values longer than 255 bytes are split into strings, as DNS requires
    /// (a value holds no comma: dnsmasq separates strings with commas).
    Txt(&'a str, &'a str),
    /// `name MX preference exchange`.
    Mx(&'a str, u16, &'a str),
    /// An A record.
    A(&'a str, &'a str),
    /// A PTR record: `1.0.0.127.in-addr.arpa` → name.
    Ptr(&'a str, &'a str),
}

pub struct Zone {
    child: Child,
    pub port: u16,
}

impl Zone {
    /// Starts dnsmasq serving `records`; its log goes to `dir/dnsmasq.log`.
    pub fn start(dir: &Path, records: &[Record<'_>]) -> Zone {
        std::fs::create_dir_all(dir).unwrap();
        let port = super::free_port();
        let mut args = vec![
            "--keep-in-foreground".to_string(),
            format!("--port={port}"),
            "--listen-address=127.0.0.1".into(),
            "--bind-interfaces".into(),
            "--no-resolv".into(),
            "--no-hosts".into(),
            "--no-poll".into(),
            "--no-negcache".into(),
            "--conf-file=/dev/null".into(),
            "--pid-file=".into(),
            "--local=/test/".into(),
            "--local=/in-addr.arpa/".into(),
            "--log-queries".into(),
            format!("--log-facility={}", dir.join("dnsmasq.log").display()),
        ];
        if system::is_root() {
            args.push("--user=root".into());
        }
        for record in records {
            args.push(match record {
                Record::Txt(name, value) => {
                    let chunks: Vec<String> = value
                        .as_bytes()
                        .chunks(255)
                        .map(|c| String::from_utf8_lossy(c).into_owned())
                        .collect();
                    format!("--txt-record={name},{}", chunks.join(","))
                }
                Record::Mx(name, preference, host) => {
                    format!("--mx-host={name},{host},{preference}")
                }
                Record::A(name, ip) => format!("--host-record={name},{ip}"),
                Record::Ptr(name, target) => format!("--ptr-record={name},{target}"),
            });
        }
        let child = Command::new(system::program("dnsmasq"))
            .args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("dnsmasq.err")).unwrap())
            .spawn()
            .expect("dnsmasq (scripts/services installs dnsmasq-base)");
        let mut zone = Zone { child, port };
        let started = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Ok(Some(status)) = zone.child.try_wait() {
                panic!(
                    "dnsmasq exited ({status}): {}",
                    std::fs::read_to_string(dir.join("dnsmasq.err")).unwrap_or_default()
                );
            }
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "dnsmasq did not start"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        zone
    }

    /// `127.0.0.1:<port>`, as `TIDINGS_DNS_SERVER` takes it.
    pub fn server(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
}

impl Drop for Zone {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
