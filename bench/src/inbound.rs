//! Phase 5: inbound SMTP to posted replies (one sender, and many senders as a relay delivers),
//! and reply extraction over the corpora.

use super::*;

/// Extraction speed over the corpora, per CPU-second: [`Extraction::split`] runs the reply
/// splitter alone over every body, decoded beforehand (plain bodies as they are, raw
/// messages through the MIME parser and the HTML converter first); [`Extraction::inspect`]
/// runs the whole pure path (MIME parse, classify, extract) over every raw message.
pub(crate) struct Extraction {
    pub(crate) split: f64,
    pub(crate) bodies: usize,
    /// Bytes of all the decoded bodies together.
    pub(crate) body_bytes: usize,
    pub(crate) inspect: f64,
    pub(crate) messages: usize,
}

pub(crate) fn extraction_rate(corpora: &std::path::Path) -> anyhow::Result<Extraction> {
    fn walk(dir: &std::path::Path, out: &mut Vec<(bool, Vec<u8>)>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                walk(&path, out);
            } else {
                // Raw messages (.eml), and plain bodies (.txt under an emails folder).
                let ext = path
                    .extension()
                    .and_then(|e| e.to_str())
                    .unwrap_or_default();
                let body = ext == "txt" && path.to_string_lossy().contains("/emails/");
                if (ext == "eml" || body)
                    && let Ok(bytes) = std::fs::read(&path)
                {
                    out.push((ext == "eml", bytes));
                }
            }
        }
    }
    let mut files = Vec::new();
    walk(corpora, &mut files);
    if files.is_empty() {
        bail!("no email bodies under {}", corpora.display());
    }
    let bodies: Vec<String> = files
        .iter()
        .filter_map(|(is_email, bytes)| match is_email {
            true => tidings_common::inbound::body_of(bytes),
            false => Some(String::from_utf8_lossy(bytes).into_owned()),
        })
        .collect();
    let messages: Vec<&[u8]> = files
        .iter()
        .filter(|(is_email, _)| *is_email)
        .map(|(_, bytes)| bytes.as_slice())
        .collect();
    let context = tidings_common::inbound::InboundContext {
        reply_domain: "reply.tidings.localhost".into(),
        own_address: None,
        authserv_id: None,
        attachment_max: 25 << 20,
    };
    let per_cpu_second = |items: usize, run: &dyn Fn(usize)| {
        let started = cpu_seconds();
        let wall = Instant::now();
        let mut done = 0usize;
        while wall.elapsed() < Duration::from_secs(3) {
            for i in 0..items {
                run(i);
            }
            done += items;
        }
        done as f64 / (cpu_seconds() - started).max(0.01)
    };
    let split = per_cpu_second(bodies.len(), &|i| {
        std::hint::black_box(tidings_common::inbound::split_reply(&bodies[i]));
    });
    let inspect = per_cpu_second(messages.len(), &|i| {
        std::hint::black_box(tidings_common::inbound::inspect(messages[i], &context));
    });
    Ok(Extraction {
        split,
        bodies: bodies.len(),
        body_bytes: bodies.iter().map(String::len).sum(),
        inspect,
        messages: messages.len(),
    })
}

/// Emails posted by the inbound role so far.
pub(crate) fn inbound_posted(db: &mut PgConnection) -> anyhow::Result<u64> {
    #[derive(QueryableByName)]
    struct Posted {
        #[diesel(sql_type = BigInt)]
        n: i64,
    }
    let posted: Posted = diesel::sql_query(
        "SELECT count(*) AS n FROM inbound_emails WHERE posted_message_id IS NOT NULL",
    )
    .get_result(db)?;
    Ok(posted.n as u64)
}

/// Waits until `count` more emails than `before` are posted; the rate from `started`.
pub(crate) fn wait_posted(
    db: &mut PgConnection,
    before: u64,
    count: u64,
    started: Instant,
) -> anyhow::Result<f64> {
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let posted = inbound_posted(db)? - before;
        if posted >= count {
            return Ok(count as f64 / started.elapsed().as_secs_f64());
        }
        if Instant::now() > deadline {
            bail!("only {posted} of {count} inbound replies were posted");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Phase 5a: replies from one reader into one conversation, sent by smtp-source to the inbound
/// listener; the rate is from the first byte sent to the last reply posted.
pub(crate) fn inbound_rate(env: &BenchEnv, config: &Config, count: u64) -> anyhow::Result<f64> {
    let mut db = PgConnection::establish(&env.database_url)?;
    let conversation = create_conversations(&mut db, env.project, &env.readers, 1, 1)?[0];
    let reader = env.readers[0];
    #[derive(QueryableByName)]
    struct Email {
        #[diesel(sql_type = diesel::sql_types::Text)]
        email: String,
    }
    let sender: Email = diesel::sql_query("SELECT email FROM people WHERE id = $1")
        .bind::<BigInt, _>(reader)
        .get_result(&mut db)?;
    let token = tidings_common::mail::ReplyToken {
        conversation_id: conversation,
        person_id: reader,
        issued_day: tidings_common::mail::epoch_day(tidings_common::clock::now()),
    };
    let address = token.address(&config.token_secret, &config.reply_domain);
    let before = inbound_posted(&mut db)?;
    let started = Instant::now();
    let status = Command::new(system::program("smtp-source"))
        .args([
            "-s",
            "8",
            "-m",
            &count.to_string(),
            "-f",
            &sender.email,
            "-t",
            &address,
        ])
        .arg(config.inbound_addr.to_string())
        .stdout(Stdio::null())
        .status()
        .context("smtp-source (Debian package postfix)")?;
    if !status.success() {
        bail!("smtp-source to the inbound listener failed: {status}");
    }
    wait_posted(&mut db, before, count, started)
}

/// One reply as a mail client writes it: new text above an attribution and the quoted
/// notification, threaded by its reply address and In-Reply-To.
pub(crate) fn reply_mail(sender: &str, rcpt: &str, conversation: i64, n: u64) -> String {
    format!(
        "From: Replier <{sender}>\r\nTo: <{rcpt}>\r\nSubject: Re: Bench ticket {conversation}\r\n\
         Date: Tue, 01 Dec 2026 10:00:00 +0000\r\nMessage-ID: <bench-{conversation}-{n}@client.example>\r\n\
         In-Reply-To: <notification-{conversation}@tidings.example>\r\nMIME-Version: 1.0\r\n\
         Content-Type: text/plain; charset=utf-8\r\n\r\n\
         Thanks, that fixed it. Reply number {n}: the printer works again and the queue is empty.\r\n\
         \r\nBest,\r\nReplier\r\n\r\n\
         On Tue, 1 Dec 2026 at 09:58, Tidings <support@tidings.example> wrote:\r\n\
         > Have you tried turning it off and on again?\r\n>\r\n\
         > -- \r\n> Reply to this email or open the conversation.\r\n"
    )
}

/// Sends `mails` (sender, recipient, text) over `connections` SMTP sessions at once, one
/// transaction after another on each; fails on any reply that is not a success.
pub(crate) async fn send_smtp(
    addr: std::net::SocketAddr,
    mails: Vec<(String, String, String)>,
    connections: usize,
) -> anyhow::Result<()> {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    async fn expect(
        reader: &mut BufReader<tokio::net::tcp::OwnedReadHalf>,
        code: char,
    ) -> anyhow::Result<()> {
        let mut line = String::new();
        loop {
            line.clear();
            if reader.read_line(&mut line).await? == 0 {
                bail!("the listener closed the session");
            }
            if !line.starts_with(code) {
                bail!("unexpected SMTP reply: {}", line.trim_end());
            }
            if line.as_bytes().get(3) != Some(&b'-') {
                return Ok(());
            }
        }
    }
    let mut shares: Vec<Vec<(String, String, String)>> = vec![Vec::new(); connections.max(1)];
    for (i, mail) in mails.into_iter().enumerate() {
        shares[i % connections.max(1)].push(mail);
    }
    let mut sessions = tokio::task::JoinSet::new();
    for share in shares {
        sessions.spawn(async move {
            let stream = tokio::net::TcpStream::connect(addr).await?;
            // Each command is one write, answered before the next: no Nagle delay.
            stream.set_nodelay(true)?;
            let (read, mut write) = stream.into_split();
            let mut reader = BufReader::new(read);
            expect(&mut reader, '2').await?;
            write.write_all(b"EHLO bench.example\r\n").await?;
            expect(&mut reader, '2').await?;
            for (from, to, text) in share {
                write
                    .write_all(format!("MAIL FROM:<{from}>\r\n").as_bytes())
                    .await?;
                expect(&mut reader, '2').await?;
                write
                    .write_all(format!("RCPT TO:<{to}>\r\n").as_bytes())
                    .await?;
                expect(&mut reader, '2').await?;
                write.write_all(b"DATA\r\n").await?;
                expect(&mut reader, '3').await?;
                write.write_all(format!("{text}.\r\n").as_bytes()).await?;
                expect(&mut reader, '2').await?;
            }
            write.write_all(b"QUIT\r\n").await?;
            Ok::<_, anyhow::Error>(())
        });
    }
    while let Some(done) = sessions.join_next().await {
        done??;
    }
    Ok(())
}

/// Phase 5b: replies from `senders` people, each answering their own conversation, as a relay
/// delivers them: 32 SMTP sessions at once, mails interleaved across senders. The rate is from
/// the first byte sent to the last reply posted.
pub(crate) async fn inbound_many_rate(
    env: &BenchEnv,
    config: &Config,
    count: u64,
    senders: u64,
) -> anyhow::Result<f64> {
    let mut db = PgConnection::establish(&env.database_url)?;
    #[derive(QueryableByName)]
    struct Pair {
        #[diesel(sql_type = BigInt)]
        person: i64,
        #[diesel(sql_type = diesel::sql_types::Text)]
        email: String,
    }
    let people: Vec<Pair> = diesel::sql_query(
        "INSERT INTO people (kind, name, email)
         SELECT 'user', 'Replier ' || g, 'replier' || g || '.' || $2 || '@bench.example'
         FROM generate_series(1, $1) g RETURNING id AS person, email",
    )
    .bind::<BigInt, _>(senders as i64)
    // Unique per call: the phase runs twice with BENCH_HISTORY.
    .bind::<BigInt, _>(i64::from(rand::random::<u32>()))
    .load(&mut db)?;
    let ids: Vec<i64> = people.iter().map(|p| p.person).collect();
    diesel::sql_query("INSERT INTO user_preferences (person_id) SELECT unnest($1::bigint[])")
        .bind::<diesel::sql_types::Array<BigInt>, _>(&ids)
        .execute(&mut db)?;
    let conversations = create_conversations(&mut db, env.project, &env.readers, senders, 1)?;
    let day = tidings_common::mail::epoch_day(tidings_common::clock::now());
    let addresses: Vec<(String, String, i64)> = people
        .iter()
        .zip(&conversations)
        .map(|(p, &conversation)| {
            let token = tidings_common::mail::ReplyToken {
                conversation_id: conversation,
                person_id: p.person,
                issued_day: day,
            };
            let rcpt = token.address(&config.token_secret, &config.reply_domain);
            (p.email.clone(), rcpt, conversation)
        })
        .collect();
    let mails: Vec<(String, String, String)> = (0..count)
        .map(|n| {
            let (from, rcpt, conversation) = &addresses[(n % senders) as usize];
            let text = reply_mail(from, rcpt, *conversation, n);
            (from.clone(), rcpt.clone(), text)
        })
        .collect();
    let before = inbound_posted(&mut db)?;
    let started = Instant::now();
    send_smtp(config.inbound_addr, mails, 32).await?;
    eprintln!(
        "bench: the listener accepted {count} replies at {:.0}/s",
        count as f64 / started.elapsed().as_secs_f64()
    );
    wait_posted(&mut db, before, count, started)
}

pub(crate) fn print_extraction(extraction: Option<&Extraction>) {
    match extraction {
        Some(e) => {
            row(
                format!(
                    "reply extraction per CPU-second ({} bodies, {} kB)",
                    e.bodies,
                    e.body_bytes / 1000
                ),
                per_s(e.split),
                String::new(),
            );
            row(
                format!(
                    "parse + classify + extract per CPU-second ({} messages)",
                    e.messages
                ),
                per_s(e.inspect),
                String::new(),
            );
        }
        None => row(
            "reply extraction per CPU-second".into(),
            "no corpora".into(),
            String::new(),
        ),
    }
}

/// The inbound rows: one sender (smtp-source) and many senders into as many conversations.
pub(crate) struct Inbound {
    pub(crate) one: f64,
    pub(crate) n_one: u64,
    pub(crate) many: f64,
    pub(crate) n_many: u64,
    pub(crate) senders: u64,
}

pub(crate) async fn inbound_phases(env: &BenchEnv, config: &Config) -> anyhow::Result<Inbound> {
    let n_one = knob("BENCH_INBOUND", 2_000);
    let n_many = knob("BENCH_INBOUND_MANY", 10_000);
    let senders = knob("BENCH_INBOUND_SENDERS", 100).max(1);
    eprintln!("bench: inbound, {n_one} replies from one sender (smtp-source)");
    let one = inbound_rate(env, config, n_one)?;
    eprintln!(
        "bench: inbound, {n_many} replies from {senders} senders into {senders} conversations"
    );
    let many = inbound_many_rate(env, config, n_many, senders).await?;
    Ok(Inbound {
        one,
        n_one,
        many,
        n_many,
        senders,
    })
}

pub(crate) fn print_inbound(inbound: &Inbound, sink_rate: f64) {
    row(
        format!(
            "inbound SMTP to posted, 1 sender ({}) vs smtp-sink",
            inbound.n_one
        ),
        per_s(inbound.one),
        format!("{:.2}x", inbound.one / sink_rate),
    );
    row(
        format!(
            "inbound SMTP to posted, {} senders ({}) vs smtp-sink",
            inbound.senders, inbound.n_many
        ),
        per_s(inbound.many),
        format!("{:.2}x", inbound.many / sink_rate),
    );
}
