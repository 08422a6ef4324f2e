DROP INDEX notifications_email_message_id;
DROP TABLE inbound_emails;
