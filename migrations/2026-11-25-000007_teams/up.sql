-- Teams: groups of users that can be added to a project together (SPEC E2).
CREATE TABLE teams (
    id BIGSERIAL PRIMARY KEY,
    name TEXT NOT NULL,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE TABLE team_members (
    team_id BIGINT NOT NULL REFERENCES teams (id),
    person_id BIGINT NOT NULL REFERENCES people (id),
    PRIMARY KEY (team_id, person_id)
);

CREATE TABLE project_teams (
    project_id BIGINT NOT NULL REFERENCES projects (id),
    team_id BIGINT NOT NULL REFERENCES teams (id),
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (project_id, team_id)
);
