//! Files travel with messages (SPEC I9): what a file is called and what it really is, where
//! its bytes are kept, and which message it belongs to.
//!
//! The store is PostgreSQL, which every role already shares: a file's bytes are kept once,
//! content-addressed by SHA-256, in chunks of [`CHUNK`] bytes (`attachment_blobs`,
//! `attachment_chunks`), so a fleet needs no other service and a download never holds more
//! than a chunk. An attachment links a message to a file under the name and declared type it
//! came with; the same file again in one conversation (the logo in every signature, the
//! screenshot sent with each reply) is linked once. Blobs no attachment refers to any more are
//! removed by the scheduler after a grace period ([`purge_orphans`]).

use std::fmt::Write as _;

use diesel::prelude::*;
use diesel::sql_types::{Array, BigInt, Bool, Bytea, Integer, Nullable, Text};
use serde::Serialize;

/// Bytes per stored chunk.
pub const CHUNK: usize = 256 * 1024;
/// Longest file name kept, in characters (the extension is kept when a name is cut).
pub const NAME_MAX: usize = 200;

/// A file ready to be linked to a message: its bytes and what is known of it.
#[derive(Debug, Clone, Serialize)]
pub struct File {
    /// Safe to show and to offer as a download name (see [`safe_name`]).
    pub name: String,
    /// The type the sender declared (`application/octet-stream` when none).
    pub declared_type: String,
    /// What the first bytes say it is (see [`sniff`]).
    pub sniffed_type: String,
    pub size: i64,
    pub sha256: String,
    /// The part's `Content-ID`, without angle brackets (the `cid:` of an HTML body).
    pub content_id: Option<String>,
    /// Shown in the body (an inline image) rather than listed as a file.
    pub inline: bool,
    #[serde(skip)]
    pub data: Vec<u8>,
}

impl File {
    /// A file from its bytes, with the name and type the sender gave (either may be missing
    /// or hostile).
    pub fn new(
        data: Vec<u8>,
        name: Option<&str>,
        declared_type: Option<&str>,
        content_id: Option<&str>,
        inline: bool,
    ) -> File {
        let declared_type = declared_type
            .map(|t| t.trim().to_ascii_lowercase())
            .filter(|t| valid_type(t))
            .unwrap_or_else(|| "application/octet-stream".into());
        let sniffed_type = sniff(&data, &declared_type);
        File {
            name: safe_name(name, &sniffed_type),
            declared_type,
            sniffed_type,
            size: data.len() as i64,
            sha256: sha256_hex(&data),
            content_id: content_id
                .map(|c| {
                    c.trim()
                        .trim_start_matches('<')
                        .trim_end_matches('>')
                        .to_string()
                })
                .filter(|c| !c.is_empty() && c.len() <= 250 && !c.chars().any(char::is_control)),
            inline,
            data,
        }
    }
}

/// A file that was not kept, and why; named in a visible line of its message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NotKept {
    pub name: String,
    pub size: i64,
    pub reason: String,
}

impl NotKept {
    /// The line shown in the message: the file's name, size and why it was not kept.
    pub fn line(&self) -> String {
        format!(
            "[File not kept: {} ({}): {}]",
            self.name,
            human_size(self.size),
            self.reason
        )
    }
}

/// `1.5 MiB`, `730 KiB`, `12 bytes`.
pub fn human_size(bytes: i64) -> String {
    const KIB: f64 = 1024.0;
    let b = bytes as f64;
    if b >= KIB * KIB {
        format!("{:.1} MiB", b / (KIB * KIB))
    } else if b >= KIB {
        format!("{:.0} KiB", b / KIB)
    } else {
        format!("{bytes} bytes")
    }
}

pub fn sha256_hex(data: &[u8]) -> String {
    let digest = <sha2::Sha256 as sha2::Digest>::digest(data);
    digest.iter().fold(String::with_capacity(64), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

fn valid_type(t: &str) -> bool {
    let mut halves = t.splitn(2, '/');
    let ok = |s: Option<&str>| {
        s.is_some_and(|s| {
            !s.is_empty()
                && s.len() <= 100
                && s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"!#$&-^_.+".contains(&b))
        })
    };
    ok(halves.next()) && ok(halves.next())
}

/// Raster image types a browser may show inline: they cannot carry script.
pub const INLINE_SAFE: &[&str] = &["image/png", "image/jpeg", "image/gif", "image/webp"];

/// What the bytes are, by their first bytes: the common images, PDF, ZIP, and anything that
/// a browser would run as a page (HTML, SVG, XML), whatever the sender declared. When the
/// bytes say nothing, the declared type stands, except that a claim of an image, HTML or
/// SVG, a PDF or a ZIP the bytes do not bear out becomes `application/octet-stream`.
pub fn sniff(data: &[u8], declared: &str) -> String {
    let head = &data[..data.len().min(1024)];
    let starts = |magic: &[u8]| head.starts_with(magic);
    let known = if starts(b"\x89PNG\r\n\x1a\n") {
        Some("image/png")
    } else if starts(b"\xff\xd8\xff") {
        Some("image/jpeg")
    } else if starts(b"GIF87a") || starts(b"GIF89a") {
        Some("image/gif")
    } else if head.len() >= 12 && &head[..4] == b"RIFF" && &head[8..12] == b"WEBP" {
        Some("image/webp")
    } else if starts(b"%PDF-") {
        Some("application/pdf")
    } else if starts(b"PK\x03\x04") {
        // Office documents are ZIP files; their declared type says which.
        Some(if declared.starts_with("application/vnd.openxmlformats") {
            "keep"
        } else {
            "application/zip"
        })
    } else {
        markup(head)
    };
    match known {
        Some("keep") => declared.to_string(),
        Some(t) => t.to_string(),
        None if declared.starts_with("image/")
            || declared == "application/pdf"
            || declared == "application/zip"
            || declared.contains("html")
            || declared.contains("svg")
            || declared.contains("xml") =>
        {
            "application/octet-stream".into()
        }
        None => declared.to_string(),
    }
}

/// HTML, SVG or XML by their opening, after any byte-order mark and white space.
fn markup(head: &[u8]) -> Option<&'static str> {
    let text = String::from_utf8_lossy(head).to_ascii_lowercase();
    let text = text.trim_start_matches('\u{feff}').trim_start();
    if text.contains("<svg") {
        Some("image/svg+xml")
    } else if [
        "<!doctype html",
        "<html",
        "<head",
        "<body",
        "<script",
        "<iframe",
    ]
    .iter()
    .any(|t| text.starts_with(t))
        || text.contains("<script")
    {
        Some("text/html")
    } else if text.starts_with("<?xml") {
        Some("application/xml")
    } else {
        None
    }
}

/// A name safe to show and to offer as a download: the last path component, without control,
/// bidi or zero-width characters, without leading dots, at most [`NAME_MAX`] characters
/// (keeping the extension), and `attachment.<ext>` when nothing is left.
pub fn safe_name(raw: Option<&str>, sniffed_type: &str) -> String {
    let raw = raw.unwrap_or_default();
    let last = raw.rsplit(['/', '\\']).next().unwrap_or_default();
    let cleaned: String = last
        .chars()
        .filter(|&c| !c.is_control() && !invisible(c))
        .collect();
    let cleaned = cleaned.trim().trim_start_matches('.').trim().to_string();
    let cleaned = if cleaned.is_empty() {
        format!("attachment.{}", extension_of(sniffed_type))
    } else {
        cleaned
    };
    if cleaned.chars().count() <= NAME_MAX {
        return cleaned;
    }
    let extension: String = match cleaned.rsplit_once('.') {
        Some((_, ext)) if !ext.is_empty() && ext.chars().count() <= 10 => format!(".{ext}"),
        _ => String::new(),
    };
    let keep = NAME_MAX - extension.chars().count();
    cleaned.chars().take(keep).collect::<String>() + &extension
}

/// Characters that change how the text around them is shown without being seen: bidi
/// embeddings, overrides and isolates and the direction marks, and zero-width characters.
/// In a name they let one thing pass for another (`invoice\u{202E}fdp.exe` shows as
/// `invoiceexe.pdf`).
pub fn invisible(c: char) -> bool {
    matches!(c,
        '\u{200B}'..='\u{200F}'
        | '\u{202A}'..='\u{202E}'
        | '\u{2060}'..='\u{2064}'
        | '\u{2066}'..='\u{2069}'
        | '\u{FEFF}'
        | '\u{061C}'
        | '\u{180E}')
}

fn extension_of(content_type: &str) -> &'static str {
    match content_type {
        "image/png" => "png",
        "image/jpeg" => "jpg",
        "image/gif" => "gif",
        "image/webp" => "webp",
        "application/pdf" => "pdf",
        "application/zip" => "zip",
        "message/rfc822" => "eml",
        "text/plain" => "txt",
        "text/html" => "html",
        _ => "bin",
    }
}

/// Stores `data` under its SHA-256 unless it is there already; returns whether it was new.
/// Two writers of the same file meet on the primary key: the second waits for the first and
/// then finds it.
pub fn store(conn: &mut PgConnection, file: &File) -> QueryResult<bool> {
    let inserted = diesel::sql_query(
        "INSERT INTO attachment_blobs (sha256, size, sniffed_type) VALUES ($1, $2, $3)
         ON CONFLICT (sha256) DO NOTHING",
    )
    .bind::<Text, _>(&file.sha256)
    .bind::<BigInt, _>(file.size)
    .bind::<Text, _>(&file.sniffed_type)
    .execute(conn)?;
    if inserted == 0 {
        return Ok(false);
    }
    // A few chunks per statement, so a 30 MiB file is a handful of round trips and never a
    // copy of the whole file in one statement.
    for (batch_no, batch) in file.data.chunks(CHUNK * 8).enumerate() {
        let mut numbers = Vec::new();
        let mut chunks = Vec::new();
        for (i, chunk) in batch.chunks(CHUNK).enumerate() {
            numbers.push((batch_no * 8 + i) as i32);
            chunks.push(chunk);
        }
        diesel::sql_query(
            "INSERT INTO attachment_chunks (sha256, n, data)
             SELECT $1, n, d FROM unnest($2::int[], $3::bytea[]) AS u(n, d)",
        )
        .bind::<Text, _>(&file.sha256)
        .bind::<Array<Integer>, _>(&numbers)
        .bind::<Array<Bytea>, _>(&chunks)
        .execute(conn)?;
    }
    Ok(true)
}

/// Stores `files` and links them to `message_id` in `conversation_id`, each file once per
/// conversation; returns how many were linked (a file already in the conversation is not).
pub fn attach(
    conn: &mut PgConnection,
    message_id: i64,
    conversation_id: i64,
    files: &[File],
) -> QueryResult<usize> {
    let mut linked = 0;
    for file in files {
        store(conn, file)?;
        linked += diesel::sql_query(
            "INSERT INTO attachments (message_id, conversation_id, sha256, name, declared_type,
                                      size, content_id, inline)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
             ON CONFLICT (conversation_id, sha256) DO NOTHING",
        )
        .bind::<BigInt, _>(message_id)
        .bind::<BigInt, _>(conversation_id)
        .bind::<Text, _>(&file.sha256)
        .bind::<Text, _>(&file.name)
        .bind::<Text, _>(&file.declared_type)
        .bind::<BigInt, _>(file.size)
        .bind::<Nullable<Text>, _>(&file.content_id)
        .bind::<Bool, _>(file.inline)
        .execute(conn)?;
    }
    Ok(linked)
}

/// An attachment as listings and events show it.
#[derive(Debug, Clone, QueryableByName, Serialize, utoipa::ToSchema)]
pub struct Attachment {
    #[diesel(sql_type = BigInt)]
    pub id: i64,
    #[diesel(sql_type = BigInt)]
    pub message_id: i64,
    #[diesel(sql_type = Text)]
    pub name: String,
    /// Bytes.
    #[diesel(sql_type = BigInt)]
    pub size: i64,
    /// What the file is (sniffed from its bytes; the sender's claim when they say nothing).
    #[diesel(sql_type = Text)]
    pub content_type: String,
    /// An image the HTML body showed in place.
    #[diesel(sql_type = Bool)]
    pub inline: bool,
    #[diesel(sql_type = Nullable<Text>)]
    pub content_id: Option<String>,
}

/// The attachments of `messages`, in the order they were attached.
pub fn of_messages(conn: &mut PgConnection, messages: &[i64]) -> QueryResult<Vec<Attachment>> {
    if messages.is_empty() {
        return Ok(Vec::new());
    }
    diesel::sql_query(
        "SELECT a.id, a.message_id, a.name, a.size, b.sniffed_type AS content_type, a.inline,
                a.content_id
         FROM attachments a JOIN attachment_blobs b ON b.sha256 = a.sha256
         WHERE a.message_id = ANY($1) ORDER BY a.id",
    )
    .bind::<Array<BigInt>, _>(messages)
    .load(conn)
}

/// Where a download's bytes are, and what to call them.
#[derive(Debug, Clone, QueryableByName)]
pub struct Stored {
    #[diesel(sql_type = BigInt)]
    pub id: i64,
    #[diesel(sql_type = BigInt)]
    pub message_id: i64,
    #[diesel(sql_type = Text)]
    pub sha256: String,
    #[diesel(sql_type = Text)]
    pub name: String,
    #[diesel(sql_type = BigInt)]
    pub size: i64,
    #[diesel(sql_type = Text)]
    pub content_type: String,
}

/// Attachment `id` of a message not deleted, if there is one.
pub fn find(conn: &mut PgConnection, id: i64) -> QueryResult<Option<Stored>> {
    diesel::sql_query(
        "SELECT a.id, a.message_id, a.sha256, a.name, a.size, b.sniffed_type AS content_type
         FROM attachments a JOIN attachment_blobs b ON b.sha256 = a.sha256
         JOIN messages m ON m.id = a.message_id
         WHERE a.id = $1 AND m.deleted_at IS NULL",
    )
    .bind::<BigInt, _>(id)
    .get_result(conn)
    .optional()
}

/// Bytes `from..to` (end exclusive) of the file `sha256`, read from the chunks that hold them.
pub fn read_range(
    conn: &mut PgConnection,
    sha256: &str,
    from: i64,
    to: i64,
) -> QueryResult<Vec<u8>> {
    #[derive(QueryableByName)]
    struct Chunk {
        #[diesel(sql_type = Integer)]
        n: i32,
        #[diesel(sql_type = Bytea)]
        data: Vec<u8>,
    }
    let size = CHUNK as i64;
    let chunks: Vec<Chunk> = diesel::sql_query(
        "SELECT n, data FROM attachment_chunks WHERE sha256 = $1 AND n BETWEEN $2 AND $3
         ORDER BY n",
    )
    .bind::<Text, _>(sha256)
    .bind::<Integer, _>((from / size) as i32)
    .bind::<Integer, _>(((to - 1).max(0) / size) as i32)
    .load(conn)?;
    let mut out = Vec::with_capacity((to - from).max(0) as usize);
    for chunk in chunks {
        let start = i64::from(chunk.n) * size;
        let lo = (from - start).clamp(0, chunk.data.len() as i64) as usize;
        let hi = (to - start).clamp(0, chunk.data.len() as i64) as usize;
        out.extend_from_slice(&chunk.data[lo..hi]);
    }
    Ok(out)
}

/// What a file link is signed for: one file, for one person.
fn link_purpose(person_id: i64) -> String {
    format!("file.{person_id}")
}

/// A link that opens attachment `attachment_id` for `person_id` until `expires_at` (unix
/// seconds), without signing in: `<public url>/files/<person id>/<token>`.
pub fn link_url(
    public_url: &str,
    secret: &[u8],
    person_id: i64,
    attachment_id: i64,
    expires_at: i64,
) -> String {
    let token = crate::mail::sign_link(secret, &link_purpose(person_id), attachment_id, expires_at);
    format!(
        "{}/files/{person_id}/{token}",
        public_url.trim_end_matches('/')
    )
}

/// The attachment a file link opens for `person_id`, if its token is theirs and current.
pub fn verify_link(
    secret: &[u8],
    person_id: i64,
    token: &str,
    now: i64,
) -> Result<i64, crate::mail::LinkError> {
    crate::mail::verify_link(secret, &link_purpose(person_id), token, now)
}

/// A file's whole bytes.
pub fn read_whole(conn: &mut PgConnection, sha256: &str, size: i64) -> QueryResult<Vec<u8>> {
    read_range(conn, sha256, 0, size)
}

/// Removes what no message shows any more: the attachments of messages deleted more than
/// `grace` ago, then every blob no attachment refers to that is older than `grace` (a blob
/// stored for a post that never committed, or whose messages are gone). Returns the blobs
/// removed.
pub fn purge_orphans(conn: &mut PgConnection, grace: std::time::Duration) -> QueryResult<usize> {
    let seconds = grace.as_secs_f64();
    diesel::sql_query(
        "DELETE FROM attachments a USING messages m
         WHERE m.id = a.message_id AND m.deleted_at < now() - make_interval(secs => $1)",
    )
    .bind::<diesel::sql_types::Double, _>(seconds)
    .execute(conn)?;
    diesel::sql_query(
        "DELETE FROM attachment_blobs b
         WHERE b.created_at < now() - make_interval(secs => $1)
           AND NOT EXISTS (SELECT 1 FROM attachments a WHERE a.sha256 = b.sha256)",
    )
    .bind::<diesel::sql_types::Double, _>(seconds)
    .execute(conn)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_lose_paths_controls_and_direction_tricks() {
        assert_eq!(safe_name(Some("../../etc/passwd"), "text/plain"), "passwd");
        assert_eq!(
            safe_name(Some("C:\\Users\\a\\report.pdf"), "x"),
            "report.pdf"
        );
        assert_eq!(
            safe_name(Some("invoice\u{202E}fdp.exe"), "x"),
            "invoicefdp.exe"
        );
        assert_eq!(safe_name(Some("a\0b\r\n.txt"), "x"), "ab.txt");
        assert_eq!(safe_name(Some("..."), "image/png"), "attachment.png");
        assert_eq!(safe_name(None, "application/pdf"), "attachment.pdf");
        assert_eq!(safe_name(Some("\u{200B}"), "x"), "attachment.bin");
        let long = format!("{}.pdf", "n".repeat(10_000));
        let cut = safe_name(Some(&long), "x");
        assert_eq!(cut.chars().count(), NAME_MAX);
        assert!(cut.ends_with(".pdf"));
    }

    #[test]
    fn the_bytes_say_what_a_file_is() {
        assert_eq!(
            sniff(b"\x89PNG\r\n\x1a\n....", "application/pdf"),
            "image/png"
        );
        assert_eq!(sniff(b"<html><script>x</script>", "image/png"), "text/html");
        assert_eq!(
            sniff(
                b"\xef\xbb\xbf  <?xml version='1.0'?><svg onload='x'>",
                "image/png"
            ),
            "image/svg+xml"
        );
        assert_eq!(
            sniff(b"%PDF-1.7", "application/octet-stream"),
            "application/pdf"
        );
        assert_eq!(sniff(b"just text", "text/plain"), "text/plain");
        // A claim of an image the bytes do not bear out is not trusted.
        assert_eq!(
            sniff(b"MZ\x90\x00", "image/png"),
            "application/octet-stream"
        );
        assert_eq!(sniff(b"", "image/gif"), "application/octet-stream");
        assert_eq!(
            sniff(b"MZ\x90\x00", "application/pdf"),
            "application/octet-stream"
        );
    }

    #[test]
    fn declared_types_are_checked() {
        let f = File::new(
            b"x".to_vec(),
            Some("a"),
            Some("text/plain\r\nX: y"),
            None,
            false,
        );
        assert_eq!(f.declared_type, "application/octet-stream");
        let f = File::new(
            b"x".to_vec(),
            Some("a"),
            Some("TEXT/Plain"),
            Some("<a@b>"),
            true,
        );
        assert_eq!(f.declared_type, "text/plain");
        assert_eq!(f.content_id.as_deref(), Some("a@b"));
    }
}
