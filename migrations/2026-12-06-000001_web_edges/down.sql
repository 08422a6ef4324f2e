DROP INDEX messages_author;
ALTER TABLE people DROP COLUMN session_generation;
