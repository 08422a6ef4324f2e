DROP TABLE attention;
