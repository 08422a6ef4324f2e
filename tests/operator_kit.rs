//! The operator's kit under `deploy/` matches the product: the Grafana dashboard is a
//! well-formed dashboard (every panel typed, titled, placed and querying through the
//! dashboard's data source), and every `tidings_*` metric the dashboard and the alerting rules
//! query is one the product exports (`common/src/observe.rs`). promtool checks the rules
//! themselves (`scripts/check-operator-kit`). Needs no service.

use std::collections::BTreeSet;
use std::path::PathBuf;

use serde_json::Value;

fn read(path: &str) -> String {
    std::fs::read_to_string(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(path))
        .unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// Every name `tidings_…` in a text, as a metric name is written.
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut rest = text;
    while let Some(i) = rest.find("tidings_") {
        let before = rest[..i].chars().last();
        let name: String = rest[i..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        if !before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_') {
            out.insert(name.clone());
        }
        rest = &rest[i + name.len()..];
    }
    out
}

/// The series the product exports: every metric named in `observe.rs`, and the `_bucket`,
/// `_sum` and `_count` series of its histograms.
fn exported() -> BTreeSet<String> {
    let source = read("common/src/observe.rs");
    let mut names: BTreeSet<String> = source
        .split('"')
        .skip(1)
        .step_by(2)
        .filter(|s| {
            s.starts_with("tidings_") && s.chars().all(|c| c.is_ascii_lowercase() || c == '_')
        })
        .map(str::to_string)
        .collect();
    for h in tidings_common::observe::HISTOGRAMS {
        assert!(names.contains(*h), "{h} is a histogram observe.rs records");
        for suffix in ["_bucket", "_sum", "_count"] {
            names.insert(format!("{h}{suffix}"));
        }
    }
    names
}

fn queried_but_not_exported(file: &str, text: &str) -> Vec<String> {
    let exported = exported();
    metric_names(text)
        .into_iter()
        .filter(|n| !exported.contains(n))
        .map(|n| format!("{file}: {n}"))
        .collect()
}

#[test]
fn the_dashboard_is_well_formed_and_queries_exported_metrics() {
    let text = read("deploy/grafana/tidings.json");
    let dash: Value = serde_json::from_str(&text).expect("the dashboard is JSON");
    for key in [
        "title",
        "uid",
        "schemaVersion",
        "panels",
        "time",
        "templating",
    ] {
        assert!(dash.get(key).is_some(), "the dashboard has {key}");
    }
    let variables = dash["templating"]["list"].as_array().unwrap();
    assert!(
        variables
            .iter()
            .any(|v| v["name"] == "datasource" && v["type"] == "datasource"),
        "a Prometheus data source variable, so the dashboard imports anywhere"
    );
    let panels = dash["panels"].as_array().expect("panels");
    assert!(panels.len() >= 10, "{} panels", panels.len());
    let mut ids = BTreeSet::new();
    let mut queried = String::new();
    for p in panels {
        let title = p["title"].as_str().expect("every panel has a title");
        assert!(
            ids.insert(p["id"].as_i64().expect("id")),
            "{title}: unique id"
        );
        assert!(
            matches!(
                p["type"].as_str(),
                Some("timeseries" | "stat" | "gauge" | "table")
            ),
            "{title}: a known panel type"
        );
        let pos = &p["gridPos"];
        for k in ["h", "w", "x", "y"] {
            assert!(pos[k].is_u64(), "{title}: gridPos.{k}");
        }
        assert!(
            pos["x"].as_u64().unwrap() + pos["w"].as_u64().unwrap() <= 24,
            "{title}: fits 24 columns"
        );
        let targets = p["targets"].as_array().expect("targets");
        assert!(!targets.is_empty(), "{title}: queries something");
        for t in targets {
            let expr = t["expr"].as_str().expect("a PromQL expr");
            assert!(
                expr.contains("tidings_"),
                "{title}: {expr} queries a Tidings metric"
            );
            assert_eq!(t["datasource"]["uid"], "${datasource}", "{title}");
            queried.push_str(expr);
            queried.push('\n');
        }
    }
    let wrong = queried_but_not_exported("deploy/grafana/tidings.json", &queried);
    assert!(
        wrong.is_empty(),
        "metrics the product does not export:\n{}",
        wrong.join("\n")
    );
}

#[test]
fn the_alerts_query_exported_metrics_and_cover_the_promises() {
    let rules = read("deploy/prometheus/tidings-alerts.yml");
    let exprs: String = rules
        .lines()
        .filter_map(|l| l.trim().strip_prefix("expr:"))
        .collect::<Vec<_>>()
        .join("\n");
    let wrong = queried_but_not_exported("deploy/prometheus/tidings-alerts.yml", &exprs);
    assert!(
        wrong.is_empty(),
        "metrics the product does not export:\n{}",
        wrong.join("\n")
    );
    for needed in [
        "tidings_lateness_seconds_bucket",
        "tidings_dead_lettered_total",
        "tidings_sweep_recoveries_total",
        "tidings_job_last_success_timestamp_seconds",
        "tidings_ready",
    ] {
        assert!(
            metric_names(&exprs).contains(needed),
            "an alert on {needed}"
        );
    }
}

#[test]
fn the_name_scan_finds_names_and_nothing_else() {
    let found =
        metric_names("rate(tidings_a_total[5m]) / x_tidings_b + tidings_c_bucket{le=\"1\"}");
    assert_eq!(
        found.into_iter().collect::<Vec<_>>(),
        ["tidings_a_total", "tidings_c_bucket"]
    );
    assert!(exported().contains("tidings_lateness_seconds_count"));
}
