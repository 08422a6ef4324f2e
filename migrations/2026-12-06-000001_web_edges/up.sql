-- A person token is signed for its person's session generation; signing out (or an admin's
-- revoke) moves the generation on, so every token minted before stops working at once.
ALTER TABLE people ADD COLUMN session_generation INTEGER NOT NULL DEFAULT 0;
-- The per-person post rate (TIDINGS_POST_RATE) reads a person's newest messages.
CREATE INDEX messages_author ON messages (author_id, id);
