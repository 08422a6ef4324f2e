DROP TABLE project_teams;
DROP TABLE team_members;
DROP TABLE teams;
