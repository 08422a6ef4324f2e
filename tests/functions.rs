//! The SQL functions have one home, `common/src/db/functions.sql`: a migrated database holds
//! exactly its text, and `tidings migrate` puts it back when a function differs (and only
//! then). Against the real PostgreSQL.

mod support;

use support::Env;
use tidings_common::db::{FUNCTIONS, FUNCTIONS_SQL};

/// Each function of the file: its name and its body (the text between `AS $$` and `$$;`).
fn bodies() -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut rest = FUNCTIONS_SQL;
    while let Some(i) = rest.find("CREATE OR REPLACE FUNCTION ") {
        let after = &rest[i + "CREATE OR REPLACE FUNCTION ".len()..];
        let name = after[..after.find('(').unwrap()].to_string();
        let start = after.find("AS $$").expect("a $$ body") + "AS $$".len();
        let end = start + after[start..].find("$$;").expect("the body's end");
        out.push((name, after[start..end].to_string()));
        rest = &after[end..];
    }
    out
}

fn body_in_database(env: &Env, name: &str) -> String {
    // The body as PostgreSQL stores it, compared through its digest (psql prints it on one line).
    env.sql(&format!(
        "SELECT md5(prosrc) FROM pg_proc WHERE proname = '{name}' AND pronamespace = 'public'::regnamespace"
    ))
}

fn md5_of(env: &Env, text: &str) -> String {
    env.sql(&format!("SELECT md5($body${text}$body$)"))
}

#[tokio::test(flavor = "multi_thread")]
async fn the_database_holds_the_functions_file_and_migrate_restores_it() {
    let env = Env::new("2s");
    let bodies = bodies();
    let names: Vec<&str> = FUNCTIONS
        .iter()
        .map(|f| &f[..f.find('(').unwrap()])
        .collect();
    assert_eq!(
        bodies.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>(),
        names,
        "FUNCTIONS lists every function of functions.sql, in order"
    );
    for (name, body) in &bodies {
        assert_eq!(
            body_in_database(&env, name),
            md5_of(&env, body),
            "{name} in the migrated database is the text of functions.sql"
        );
    }

    // A function changed behind migrate's back (an old text, a lost comment) is put back by
    // the next `tidings migrate`, which says so; the run after that changes nothing.
    let (name, _) = &bodies[0];
    env.sql(&format!(
        "CREATE OR REPLACE FUNCTION {name}(p_messages BIGINT[]) RETURNS TABLE (id BIGINT, \
         conversation_id BIGINT, author_id BIGINT, author_kind TEXT, internal BOOLEAN, \
         deleted BOOLEAN, customer_conversation BOOLEAN) LANGUAGE sql AS $$ SELECT NULL::bigint, \
         NULL::bigint, NULL::bigint, NULL::text, false, false, false WHERE false $$"
    ));
    assert_ne!(body_in_database(&env, name), md5_of(&env, &bodies[0].1));
    let out = env.command(&["migrate"]).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert!(
        stdout.contains("SQL functions created from functions.sql"),
        "{stdout}"
    );
    assert_eq!(body_in_database(&env, name), md5_of(&env, &bodies[0].1));
    let again = env.command(&["migrate"]).output().unwrap();
    assert!(
        !String::from_utf8_lossy(&again.stdout).contains("SQL functions"),
        "nothing to do the second time"
    );
}
