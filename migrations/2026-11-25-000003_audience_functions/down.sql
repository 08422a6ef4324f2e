DROP FUNCTION tidings_audience(BIGINT, BIGINT[]);
DROP FUNCTION tidings_message_facts(BIGINT);
