-- Files (I9). A file's bytes are stored once, content-addressed by SHA-256, in chunks; an
-- attachment links a message to a file under the name and type it came with.
CREATE TABLE attachment_blobs (
    sha256 TEXT PRIMARY KEY,
    size BIGINT NOT NULL,
    -- What the bytes are, by their first bytes (never the sender's claim alone).
    sniffed_type TEXT NOT NULL,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE TABLE attachment_chunks (
    sha256 TEXT NOT NULL REFERENCES attachment_blobs (sha256) ON DELETE CASCADE,
    n INTEGER NOT NULL,
    data BYTEA NOT NULL,
    PRIMARY KEY (sha256, n)
);
-- Chunks are stored as they come; compressing already-compressed files costs CPU for nothing.
ALTER TABLE attachment_chunks ALTER COLUMN data SET STORAGE EXTERNAL;
CREATE TABLE attachments (
    id BIGSERIAL PRIMARY KEY,
    message_id BIGINT NOT NULL REFERENCES messages (id),
    conversation_id BIGINT NOT NULL REFERENCES conversations (id),
    sha256 TEXT NOT NULL REFERENCES attachment_blobs (sha256),
    name TEXT NOT NULL,
    declared_type TEXT NOT NULL,
    size BIGINT NOT NULL,
    content_id TEXT,
    inline BOOLEAN NOT NULL DEFAULT false,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX attachments_message ON attachments (message_id);
-- The same file again in one conversation is shown once.
CREATE UNIQUE INDEX attachments_once ON attachments (conversation_id, sha256);
CREATE INDEX attachments_sha256 ON attachments (sha256);
