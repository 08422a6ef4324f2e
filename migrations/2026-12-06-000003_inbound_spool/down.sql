DROP TABLE inbound_spool;
