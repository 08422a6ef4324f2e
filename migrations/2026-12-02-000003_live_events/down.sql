DROP INDEX conversation_participants_person;
DROP TABLE live_events;
