//! Phase 7: files (I9). Inbound mail with a 1 MiB attachment each (rate and inbound RSS), one
//! 30 MiB mail, notification emails each carrying a 1 MiB file (rate and mailer RSS), and a
//! 22 MiB download through the api (how much its RSS grows).

use super::*;

/// `n` bytes that differ from every other call's (a seed in the first bytes, then a cheap
/// generator), so that files are neither deduplicated nor compressible.
fn noise(seed: u64, n: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn b64_lines(data: &[u8]) -> String {
    use base64::Engine;
    let text = base64::engine::general_purpose::STANDARD.encode(data);
    let mut out = String::with_capacity(text.len() + text.len() / 76 * 2);
    for line in text.as_bytes().chunks(76) {
        out.push_str(std::str::from_utf8(line).expect("base64 is ASCII"));
        out.push_str("\r\n");
    }
    out
}

/// A reply with text and one attachment.
fn mail_with_file(sender: &str, rcpt: &str, n: u64, file: &[u8]) -> String {
    format!(
        "From: Replier <{sender}>\r\nTo: <{rcpt}>\r\nSubject: Re: Bench ticket\r\n\
         Message-ID: <bench-file-{n}-{}@client.example>\r\nMIME-Version: 1.0\r\n\
         Content-Type: multipart/mixed; boundary=\"b\"\r\n\r\n\
         --b\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nThe log, as asked.\r\n\
         --b\r\nContent-Type: application/octet-stream; name=\"log-{n}.bin\"\r\n\
         Content-Disposition: attachment; filename=\"log-{n}.bin\"\r\n\
         Content-Transfer-Encoding: base64\r\n\r\n{}--b--\r\n",
        file.len(),
        b64_lines(file)
    )
}

/// Resets a process's peak RSS (VmHWM), so that the next reading is the peak of what follows.
fn reset_peak(pid: u32) {
    let _ = std::fs::write(format!("/proc/{pid}/clear_refs"), "5");
}

pub(crate) struct Files {
    pub(crate) inbound_rate: f64,
    pub(crate) inbound_n: u64,
    pub(crate) inbound_rss: Option<u64>,
    pub(crate) big_seconds: f64,
    pub(crate) big_rss: Option<u64>,
    pub(crate) emails_rate: f64,
    pub(crate) emails_n: u64,
    pub(crate) mailer_rss: Option<u64>,
    pub(crate) download_growth: Option<i64>,
}

/// Reply addresses of `count` new conversations, each answered by one reader.
fn reply_addresses(
    env: &BenchEnv,
    config: &Config,
    db: &mut PgConnection,
    count: u64,
) -> anyhow::Result<(String, Vec<String>)> {
    let conversations = create_conversations(db, env.project, &env.readers, count, 1)?;
    let reader = env.readers[0];
    #[derive(QueryableByName)]
    struct Email {
        #[diesel(sql_type = diesel::sql_types::Text)]
        email: String,
    }
    let sender: Email = diesel::sql_query("SELECT email FROM people WHERE id = $1")
        .bind::<BigInt, _>(reader)
        .get_result(db)?;
    let day = tidings_common::mail::epoch_day(tidings_common::clock::now());
    let rcpts = conversations
        .iter()
        .map(|&conversation_id| {
            tidings_common::mail::ReplyToken {
                conversation_id,
                person_id: reader,
                issued_day: day,
            }
            .address(&config.token_secret, &config.reply_domain)
        })
        .collect();
    Ok((sender.email, rcpts))
}

pub(crate) async fn files_phase(
    env: &BenchEnv,
    config: &Config,
    processes: &Processes,
) -> anyhow::Result<Files> {
    let pid = |role: &str| {
        processes
            .roles
            .iter()
            .find(|(r, _)| *r == role)
            .map(|(_, p)| *p)
            .unwrap_or(0)
    };
    let mut db = PgConnection::establish(&env.database_url)?;

    // Inbound: `inbound_n` replies with a 1 MiB file each, over 8 sessions.
    let inbound_n = knob("BENCH_FILES", 300);
    let (sender, rcpts) = reply_addresses(env, config, &mut db, inbound_n)?;
    let mails: Vec<(String, String, String)> = rcpts
        .iter()
        .enumerate()
        .map(|(n, rcpt)| {
            let file = noise(n as u64, 1 << 20);
            (
                sender.clone(),
                rcpt.clone(),
                mail_with_file(&sender, rcpt, n as u64, &file),
            )
        })
        .collect();
    reset_peak(pid("inbound"));
    let before = inbound_posted(&mut db)?;
    let started = Instant::now();
    send_smtp(config.inbound_addr, mails, 8).await?;
    let inbound_rate = wait_posted(&mut db, before, inbound_n, started)?;
    let inbound_rss = peak_rss_kib(pid("inbound"));

    // One 30 MiB mail (a 22 MiB file).
    let (sender, rcpts) = reply_addresses(env, config, &mut db, 1)?;
    let file = noise(u64::MAX, 22 << 20);
    let big = mail_with_file(&sender, &rcpts[0], u64::MAX, &file);
    eprintln!(
        "bench: files, one mail of {:.1} MiB",
        big.len() as f64 / 1048576.0
    );
    reset_peak(pid("inbound"));
    let before = inbound_posted(&mut db)?;
    let started = Instant::now();
    send_smtp(
        config.inbound_addr,
        vec![(sender.clone(), rcpts[0].clone(), big)],
        1,
    )
    .await?;
    wait_posted(&mut db, before, 1, started)?;
    let big_seconds = started.elapsed().as_secs_f64();
    let big_rss = peak_rss_kib(pid("inbound"));

    // Downloading the 22 MiB file through the api: how much its resident memory grows.
    #[derive(QueryableByName)]
    struct Id {
        #[diesel(sql_type = BigInt)]
        id: i64,
    }
    let attachment: Id = diesel::sql_query("SELECT id FROM attachments WHERE size = $1 LIMIT 1")
        .bind::<BigInt, _>(file.len() as i64)
        .get_result(&mut db)?;
    let api = pid("api");
    let rss_before = rss_kib(api).unwrap_or(0) as i64;
    reset_peak(api);
    let downloaded = reqwest::Client::new()
        .get(format!(
            "http://{}/attachments/{}",
            config.http_addr, attachment.id
        ))
        .bearer_auth(config.api_token.expose())
        .send()
        .await?
        .error_for_status()?
        .bytes()
        .await?;
    if downloaded.len() != file.len() {
        bail!("downloaded {} of {} bytes", downloaded.len(), file.len());
    }
    let download_growth = peak_rss_kib(api).map(|peak| peak as i64 - rss_before);

    // Notification emails each carrying a 1 MiB file: messages with files, one recipient each.
    let emails_n = knob("BENCH_FILE_EMAILS", 200);
    let conversations = create_conversations(&mut db, env.project, &env.readers, emails_n, 1)?;
    let ids = insert_messages(&mut db, env.author, &conversations)?;
    for (n, (&message, &conversation)) in ids.iter().zip(&conversations).enumerate() {
        let file = tidings_common::attachments::File::new(
            noise(1_000_000 + n as u64, 1 << 20),
            Some("report.bin"),
            Some("application/octet-stream"),
            None,
            false,
        );
        tidings_common::attachments::attach(&mut db, message, conversation, &[file])?;
    }
    let conn = amqp::connect(&amqp_url(), "bench files").await?;
    let channel = conn.create_channel().await?;
    channel.confirm_select(Default::default()).await?;
    reset_peak(pid("mailer"));
    let started = tidings_common::clock::now();
    publish_pipelined(
        &channel,
        &env.topology.events_exchange(),
        MESSAGE_POSTED,
        ids.iter().map(|&id| event(id)),
    )
    .await?;
    let (last, sent) = wait_terminal(&mut db, &ids, emails_n as i64, Duration::from_secs(600))?;
    if sent < emails_n as i64 {
        bail!("only {sent} of {emails_n} emails with files were sent");
    }
    let elapsed = (last - started).as_seconds_f64() - env.topology.seen_window.as_secs_f64();
    let mailer_rss = peak_rss_kib(pid("mailer"));
    Ok(Files {
        inbound_rate,
        inbound_n,
        inbound_rss,
        big_seconds,
        big_rss,
        emails_rate: emails_n as f64 / elapsed,
        emails_n,
        mailer_rss,
        download_growth,
    })
}

pub(crate) fn print_files(f: &Files) {
    row(
        format!("inbound with a 1 MiB file, {} mails", f.inbound_n),
        per_s(f.inbound_rate),
        String::new(),
    );
    row(
        "  inbound peak RSS during it (goal < 256 MiB)".into(),
        fmt_rss(f.inbound_rss),
        String::new(),
    );
    row(
        "one 30 MiB mail, SMTP to posted".into(),
        format!("{:.2} s", f.big_seconds),
        String::new(),
    );
    row(
        "  inbound peak RSS during it (goal < 256 MiB)".into(),
        fmt_rss(f.big_rss),
        String::new(),
    );
    row(
        format!("emails each carrying a 1 MiB file, {}", f.emails_n),
        per_s(f.emails_rate),
        String::new(),
    );
    row(
        "  mailer peak RSS during it (goal < 128 MiB)".into(),
        fmt_rss(f.mailer_rss),
        String::new(),
    );
    row(
        "download of a 22 MiB file: api RSS growth (goal < 8 MiB)".into(),
        f.download_growth
            .map(|k| format!("{:.1} MiB", k as f64 / 1024.0))
            .unwrap_or_else(|| "n/a".into()),
        String::new(),
    );
}
