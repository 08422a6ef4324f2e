//! What DNS says about this deployment's mail: the resolver the mail checks use
//! (`TIDINGS_DNS_SERVER`, or the system's), and `tidings check dns`: SPF, DKIM, DMARC, MX and
//! PTR judged against the configuration, with the record to publish where one is missing.

use std::net::{IpAddr, SocketAddr};

use mail_auth::hickory_resolver::config::{NameServerConfig, ResolverConfig, ResolverOpts};
use mail_auth::hickory_resolver::proto::rr::RData;
use mail_auth::spf::verify::SpfParameters;
use mail_auth::{MessageAuthenticator, SpfResult};

use crate::Config;
use crate::dkim::Dkim;

/// The resolver for mail checks: `server` (a test zone on loopback, a local resolver), or the
/// system's configuration.
pub fn authenticator(server: Option<SocketAddr>) -> Result<MessageAuthenticator, String> {
    let built = match server {
        Some(addr) => {
            let mut ns = NameServerConfig::udp_and_tcp(addr.ip());
            for connection in &mut ns.connections {
                connection.port = addr.port();
            }
            let mut options = ResolverOpts::default();
            options.timeout = std::time::Duration::from_secs(3);
            options.attempts = 2;
            MessageAuthenticator::new(ResolverConfig::from_name_servers(vec![ns]), options)
        }
        None => MessageAuthenticator::new_system_conf(),
    };
    built.map_err(|e| format!("DNS resolver: {e}"))
}

/// One judgement of `tidings check dns`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    /// `MX`, `SPF`, `DKIM`, `DMARC` or `PTR`.
    pub what: &'static str,
    pub ok: bool,
    /// What was found, or what is wrong.
    pub detail: String,
    /// The record to publish (or the change to make) when it is missing or wrong.
    pub publish: Option<String>,
}

impl Finding {
    fn ok(what: &'static str, detail: String) -> Self {
        Finding {
            what,
            ok: true,
            detail,
            publish: None,
        }
    }

    fn wrong(what: &'static str, detail: String, publish: String) -> Self {
        Finding {
            what,
            ok: false,
            detail,
            publish: Some(publish),
        }
    }
}

/// The TXT records at `name`, each as one string (its strings joined, RFC 7208 §3.3).
async fn txt(auth: &MessageAuthenticator, name: &str) -> Result<Vec<String>, String> {
    match auth.resolver().txt_lookup(format!("{name}.")).await {
        Ok(lookup) => Ok(lookup
            .answers()
            .iter()
            .filter_map(|r| match &r.data {
                // Control characters (a terminal escape in a hostile record) are shown escaped.
                RData::TXT(txt) => Some(
                    txt.txt_data
                        .iter()
                        .map(|part| String::from_utf8_lossy(part).into_owned())
                        .collect::<String>()
                        .chars()
                        .flat_map(|c| {
                            if c.is_control() {
                                c.escape_default().collect::<Vec<char>>()
                            } else {
                                vec![c]
                            }
                        })
                        .collect(),
                ),
                _ => None,
            })
            .collect()),
        Err(e) if e.is_no_records_found() || e.is_nx_domain() => Ok(Vec::new()),
        Err(e) => Err(format!("looking up TXT {name}: {e}")),
    }
}

/// The value of tag `tag` in a `k=v; k=v` record.
fn tag<'a>(record: &'a str, tag: &str) -> Option<&'a str> {
    record.split(';').find_map(|part| {
        let (k, v) = part.split_once('=')?;
        k.trim().eq_ignore_ascii_case(tag).then(|| v.trim())
    })
}

/// The organizational domain, approximated by its last two labels (three under a two-letter
/// second-level such as `co.uk`).
fn org(domain: &str) -> String {
    let labels: Vec<&str> = domain.trim_end_matches('.').split('.').collect();
    let keep = if labels.len() >= 3
        && labels[labels.len() - 2].len() <= 3
        && labels[labels.len() - 1].len() == 2
    {
        3
    } else {
        2
    };
    labels[labels.len().saturating_sub(keep)..]
        .join(".")
        .to_ascii_lowercase()
}

/// Looks up and judges every record mail from this deployment depends on. `ip` is the address
/// mail leaves from (the relay's), for SPF and PTR; without it those two are judged on the
/// records alone.
pub async fn check(
    config: &Config,
    dkim: Option<&Dkim>,
    auth: &MessageAuthenticator,
    ip: Option<IpAddr>,
) -> Vec<Finding> {
    let reply = config.reply_domain.to_ascii_lowercase();
    let own = config.own_address();
    let from_domain = own
        .rsplit_once('@')
        .map(|(_, d)| d.to_ascii_lowercase())
        .unwrap_or_default();
    let mut findings = Vec::new();

    // MX: replies and bounces come back to the reply domain through the relay.
    findings.push(match auth.resolver().mx_lookup(format!("{reply}.")).await {
        Ok(lookup) => {
            let hosts: Vec<String> = lookup
                .answers()
                .iter()
                .filter_map(|r| match &r.data {
                    RData::MX(mx) => Some(format!("{} {}", mx.preference, mx.exchange)),
                    _ => None,
                })
                .collect();
            if hosts.is_empty() {
                Finding::wrong(
                    "MX",
                    format!("{reply} has no MX record: replies and bounces cannot come back"),
                    format!("{reply}. MX 10 <the host name of your inbound relay>."),
                )
            } else {
                Finding::ok("MX", format!("{reply}: {}", hosts.join(", ")))
            }
        }
        Err(e) if e.is_no_records_found() || e.is_nx_domain() => Finding::wrong(
            "MX",
            format!("{reply} has no MX record: replies and bounces cannot come back"),
            format!("{reply}. MX 10 <the host name of your inbound relay>."),
        ),
        Err(e) => Finding::wrong(
            "MX",
            format!("looking up MX {reply}: {e}"),
            "check the resolver (TIDINGS_DNS_SERVER)".into(),
        ),
    });

    // SPF of the envelope sender's domain (bounces@<reply domain>).
    let spf_publish = match ip {
        Some(IpAddr::V4(v4)) => format!("{reply}. TXT \"v=spf1 ip4:{v4} -all\""),
        Some(IpAddr::V6(v6)) => format!("{reply}. TXT \"v=spf1 ip6:{v6} -all\""),
        None => format!("{reply}. TXT \"v=spf1 ip4:<your relay's address> -all\""),
    };
    findings.push(match txt(auth, &reply).await {
        Err(e) => Finding::wrong("SPF", e, spf_publish),
        Ok(records) => {
            let spf: Vec<&String> = records
                .iter()
                .filter(|r| r.to_ascii_lowercase().starts_with("v=spf1"))
                .collect();
            match (spf.as_slice(), ip) {
                ([], _) => Finding::wrong(
                    "SPF",
                    format!("{reply} (the envelope sender's domain) has no SPF record"),
                    spf_publish,
                ),
                ([_, _, ..], _) => Finding::wrong(
                    "SPF",
                    format!(
                        "{reply} has {} SPF records; receivers treat that as an error",
                        spf.len()
                    ),
                    spf_publish,
                ),
                ([record], None) => Finding::ok(
                    "SPF",
                    format!(
                        "{reply}: {record} (give --ip to check the relay's address against it)"
                    ),
                ),
                ([record], Some(ip)) => {
                    let sender = format!("{}@{reply}", crate::mail::BOUNCE_MAILBOX);
                    let output = auth
                        .verify_spf(SpfParameters::verify_mail_from(ip, &reply, &reply, &sender))
                        .await;
                    if output.result() == SpfResult::Pass {
                        Finding::ok("SPF", format!("{reply}: {record}; {ip} passes"))
                    } else {
                        Finding::wrong(
                            "SPF",
                            format!(
                                "{reply}: {record}; {ip} does not pass ({:?})",
                                output.result()
                            ),
                            spf_publish,
                        )
                    }
                }
            }
        }
    });

    // DKIM: each configured key is published, and is the same key.
    match dkim {
        None => findings.push(Finding::ok(
            "DKIM",
            "signing is left to the relay (TIDINGS_DKIM_KEYS is unset)".into(),
        )),
        Some(dkim) => {
            for key in dkim.published() {
                let publish = format!("{}. TXT \"{}\"", key.name, key.record);
                findings.push(match txt(auth, &key.name).await {
                    Err(e) => Finding::wrong("DKIM", e, publish),
                    Ok(records) => {
                        let keys: Vec<String> = records
                            .iter()
                            .filter_map(|r| tag(r, "p"))
                            .map(|p| p.chars().filter(|c| !c.is_whitespace()).collect())
                            .collect();
                        if keys.is_empty() {
                            Finding::wrong("DKIM", format!("{} has no DKIM key record", key.name), publish)
                        } else if keys.iter().any(|p| key.accepted.contains(p)) {
                            Finding::ok("DKIM", format!("{}: the published key is the configured one", key.name))
                        } else {
                            Finding::wrong(
                                "DKIM",
                                format!("{}: the published key is not the configured one; receivers will fail every signature", key.name),
                                publish,
                            )
                        }
                    }
                });
            }
        }
    }

    // DMARC: a policy for the From domain, and an identifier aligned with it.
    let dmarc_publish = format!(
        "_dmarc.{from_domain}. TXT \"v=DMARC1; p=none; rua=mailto:postmaster@{from_domain}\""
    );
    let mut policy = None;
    for domain in [from_domain.clone(), org(&from_domain)] {
        match txt(auth, &format!("_dmarc.{domain}")).await {
            Ok(records) => {
                if let Some(r) = records
                    .into_iter()
                    .find(|r| r.to_ascii_lowercase().starts_with("v=dmarc1"))
                {
                    policy = Some((domain, r));
                    break;
                }
            }
            Err(e) => {
                findings.push(Finding::wrong("DMARC", e, dmarc_publish.clone()));
                policy = None;
                break;
            }
        }
    }
    if let Some((at, record)) = policy {
        let strict = |t: &str| tag(&record, t).is_some_and(|v| v.eq_ignore_ascii_case("s"));
        let aligned = |domain: &str, strict: bool| {
            if strict {
                domain == from_domain
            } else {
                org(domain) == org(&from_domain)
            }
        };
        let spf_aligned = aligned(&reply, strict("aspf"));
        let dkim_aligned = dkim.map(|d| aligned(d.domain(), strict("adkim")));
        let p = tag(&record, "p").unwrap_or("none");
        let detail = format!(
            "_dmarc.{at}: {record}; SPF {} ({reply} against {from_domain}), DKIM {}",
            if spf_aligned {
                "aligned"
            } else {
                "not aligned"
            },
            match dkim_aligned {
                Some(true) => "aligned".to_string(),
                Some(false) => format!(
                    "not aligned (d={})",
                    dkim.map(|d| d.domain()).unwrap_or_default()
                ),
                None => "by the relay's signature".to_string(),
            }
        );
        findings.push(if spf_aligned || dkim_aligned == Some(true) || dkim_aligned.is_none() {
            Finding::ok("DMARC", format!("{detail}; policy p={p}"))
        } else {
            Finding::wrong(
                "DMARC",
                format!("{detail}: neither identifier is aligned, so p={p} applies to every email"),
                format!("set TIDINGS_DKIM_DOMAIN to {from_domain} (and publish its key), or use a reply domain under {}", org(&from_domain)),
            )
        });
    } else if !findings.iter().any(|f| f.what == "DMARC") {
        findings.push(Finding::wrong(
            "DMARC",
            format!("{from_domain} (the From domain) has no DMARC record"),
            dmarc_publish,
        ));
    }

    // PTR: the relay's address names a host that resolves back to it.
    findings.push(match ip {
        None => Finding::ok(
            "PTR",
            "not checked (give --ip with the address mail leaves from)".into(),
        ),
        Some(ip) => match auth.resolver().reverse_lookup(ip).await {
            Ok(lookup) => {
                let names: Vec<String> = lookup
                    .answers()
                    .iter()
                    .filter_map(|r| match &r.data {
                        RData::PTR(name) => Some(name.0.to_string()),
                        _ => None,
                    })
                    .collect();
                let mut confirmed = None;
                for name in &names {
                    if let Ok(ips) = auth.resolver().lookup_ip(name.as_str()).await
                        && ips.iter().any(|a| a == ip)
                    {
                        confirmed = Some(name.clone());
                        break;
                    }
                }
                match (names.is_empty(), confirmed) {
                    (true, _) => Finding::wrong(
                        "PTR",
                        format!("{ip} has no PTR record"),
                        format!("ask the owner of {ip} for a PTR record naming the relay's host"),
                    ),
                    (false, Some(name)) => Finding::ok("PTR", format!("{ip} → {name} → {ip}")),
                    (false, None) => Finding::wrong(
                        "PTR",
                        format!(
                            "{ip} → {} but no such name resolves back to {ip}",
                            names.join(", ")
                        ),
                        format!("an A/AAAA record for {} pointing at {ip}", names[0]),
                    ),
                }
            }
            Err(e) if e.is_no_records_found() || e.is_nx_domain() => Finding::wrong(
                "PTR",
                format!("{ip} has no PTR record"),
                format!("ask the owner of {ip} for a PTR record naming the relay's host"),
            ),
            Err(e) => Finding::wrong(
                "PTR",
                format!("looking up PTR {ip}: {e}"),
                "check the resolver (TIDINGS_DNS_SERVER)".into(),
            ),
        },
    });
    findings
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_and_organizational_domains() {
        assert_eq!(tag("v=DKIM1; k=rsa; p=ABC", "p"), Some("ABC"));
        assert_eq!(tag("v=DMARC1;p=reject", "P"), Some("reject"));
        assert_eq!(org("reply.example.com"), "example.com");
        assert_eq!(org("a.b.example.co.uk"), "example.co.uk");
        assert_eq!(org("example.com."), "example.com");
    }
}

/// What the in-process check of an inbound email found (`TIDINGS_INBOUND_VERIFY=on`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Nothing says the sender is not who they claim (a pass, or no policy to judge by).
    Accepted(String),
    /// The sender is not who they claim; as the relay's `dmarc=fail` (SPEC I4).
    Failed(String),
    /// DNS did not answer in time or at all: no verdict, the email is judged without one.
    Unknown(String),
}

/// Whether an address is one a relay in front of us connects from (loopback, private,
/// link-local): the SPF identity is then the one the relay recorded.
fn internal(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            v4.is_loopback() || v4.is_private() || v4.is_link_local() || v4.is_unspecified()
        }
        IpAddr::V6(v6) => {
            v6.is_loopback()
                || v6.is_unspecified()
                || (v6.segments()[0] & 0xfe00) == 0xfc00
                || (v6.segments()[0] & 0xffc0) == 0xfe80
        }
    }
}

/// The client that handed the mail to the first host that recorded it: the SMTP peer, or,
/// when the peer is a relay on our own network, the topmost `Received` header's `from`
/// address and HELO name that is not itself internal.
fn spf_client(raw: &[u8], peer: Option<(IpAddr, String)>) -> Option<(IpAddr, String)> {
    if let Some((ip, helo)) = &peer
        && !internal(*ip)
    {
        return Some((*ip, helo.clone()));
    }
    let message = mail_parser::MessageParser::new().parse_headers(raw)?;
    let found = message.received_all().take(10).find_map(|r| {
        let ip = r.from_ip()?;
        let helo = r
            .helo()
            .or_else(|| r.from())
            .map(|h| h.to_string())
            .unwrap_or_else(|| ip.to_string());
        (!internal(ip)).then_some((ip, helo))
    });
    found.or(peer)
}

/// Checks DKIM, SPF and DMARC of an inbound email in-process, against `auth`'s DNS. `mail_from`
/// is the envelope sender, `peer` the SMTP client's address and HELO name. A DMARC policy
/// decides where the From domain has one (both identifiers unaligned or failing is a
/// failure); without one, an SPF `fail` or failing DKIM signatures with none passing are.
pub async fn verify_inbound(
    auth: &MessageAuthenticator,
    raw: &[u8],
    mail_from: &str,
    peer: Option<(IpAddr, String)>,
    host_domain: &str,
) -> Verdict {
    use mail_auth::dmarc::verify::DmarcParameters;
    use mail_auth::{AuthenticatedMessage, DkimResult, DmarcResult};
    let Some(message) = AuthenticatedMessage::parse(raw) else {
        return Verdict::Unknown("the message could not be read for authentication".into());
    };
    let dkim = auth.verify_dkim(&message).await;
    let client = spf_client(raw, peer);
    let sender_domain = mail_from
        .rsplit_once('@')
        .map(|(_, d)| d.to_string())
        .or_else(|| client.as_ref().map(|(_, helo)| helo.clone()))
        .unwrap_or_default();
    let spf = match &client {
        Some((ip, helo)) if mail_from.is_empty() => {
            auth.verify_spf(SpfParameters::verify_ehlo(*ip, helo, host_domain))
                .await
        }
        Some((ip, helo)) => {
            auth.verify_spf(SpfParameters::verify_mail_from(
                *ip,
                helo,
                host_domain,
                mail_from,
            ))
            .await
        }
        None => mail_auth::SpfOutput::new(sender_domain.clone()),
    };
    let dmarc = auth
        .verify_dmarc(DmarcParameters::new(&message, &dkim, &sender_domain, &spf))
        .await;
    let temporary = matches!(dmarc.dkim_result(), DmarcResult::TempError(_))
        || matches!(dmarc.spf_result(), DmarcResult::TempError(_))
        || spf.result() == SpfResult::TempError;
    let dkim_pass = dkim.iter().any(|d| d.result() == &DkimResult::Pass);
    let dkim_fail = dkim
        .iter()
        .any(|d| matches!(d.result(), DkimResult::Fail(_)));
    let summary = format!(
        "dkim={} spf={:?} dmarc={}",
        if dkim_pass {
            "pass"
        } else if dkim_fail {
            "fail"
        } else {
            "none"
        },
        spf.result(),
        match dmarc.result() {
            DmarcResult::Pass => "pass".to_string(),
            DmarcResult::Fail(_) => format!("fail (p={:?})", dmarc.policy()),
            DmarcResult::None => "none".to_string(),
            other => format!("{other:?}"),
        }
    )
    .to_ascii_lowercase();
    if dmarc.dmarc_record().is_some() {
        return match dmarc.result() {
            DmarcResult::Pass => Verdict::Accepted(summary),
            DmarcResult::Fail(_) => Verdict::Failed(format!("dmarc=fail ({summary})")),
            _ if temporary => Verdict::Unknown(summary),
            _ => Verdict::Accepted(summary),
        };
    }
    if spf.result() == SpfResult::Fail {
        return Verdict::Failed(format!("spf=fail ({summary})"));
    }
    if dkim_fail && !dkim_pass {
        return Verdict::Failed(format!("dkim=fail ({summary})"));
    }
    if temporary {
        return Verdict::Unknown(summary);
    }
    Verdict::Accepted(summary)
}
