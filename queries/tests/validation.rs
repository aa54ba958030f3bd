//! Runs `validation.cases`: every case's verdict must match, and no refusal may be vague.
//! An accepted case may carry its expected merged table: planning reads no data, so here
//! its header must name the plan's result columns; the node's attack suite
//! (`node/service/tests/attacks.rs`) checks its rows on synthetic stores.

use crate::common;
use ern_queries::casefile::ExpectedTable;
use ern_queries::catalog::planning_state;
use ern_queries::rules::Rule;

use common::validate;

#[derive(Debug)]
struct Case {
    line: usize,
    expected: Option<Rule>,
    sql: String,
    table: Option<ExpectedTable>,
}

fn cases() -> Vec<Case> {
    ern_queries::casefile::parse(include_str!("validation.cases"))
        .unwrap_or_else(|error| panic!("validation.cases: {error}"))
        .into_iter()
        .map(|case| {
            let expected = match case
                .verdict
                .split_whitespace()
                .collect::<Vec<_>>()
                .as_slice()
            {
                ["accepted"] => None,
                ["refused", rule] => Some(
                    Rule::from_name(rule)
                        .unwrap_or_else(|| panic!("line {}: unknown rule {rule}", case.line)),
                ),
                _ => panic!(
                    "line {}: expected a verdict, found {:?}",
                    case.line, case.verdict
                ),
            };
            Case {
                line: case.line,
                expected,
                sql: case.sql,
                table: case.expected,
            }
        })
        .collect()
}

#[tokio::test]
async fn every_case_gets_its_verdict() {
    let state = planning_state().expect("planning state");
    let cases = cases();
    assert!(cases.len() > 100, "only {} cases", cases.len());
    let mut failures = Vec::new();
    for case in &cases {
        let outcome = validate(&case.sql, &state).await;
        match (&case.expected, &outcome) {
            (None, Ok(query)) => {
                if let Some(table) = &case.table {
                    let schema = query.result_schema();
                    let columns: Vec<&str> =
                        schema.fields().iter().map(|f| f.name().as_str()).collect();
                    if table.columns != columns {
                        failures.push(format!(
                            "line {}: the expected table names the columns {:?}, the plan's result has {columns:?}\n    {}",
                            table.line, table.columns, case.sql
                        ));
                    }
                }
            }
            (Some(rule), Err(refusal)) if refusal.rule == *rule => {
                let message = refusal.to_string();
                let named = if refusal.mistake {
                    message.starts_with("not a valid question: ")
                } else {
                    message.contains(&format!("rule {}", rule.number()))
                };
                assert!(named, "line {}: {message}", case.line);
                assert!(
                    !refusal.reason.is_empty(),
                    "line {}: empty reason",
                    case.line
                );
            }
            (expected, outcome) => failures.push(format!(
                "line {}: expected {}, got {}\n    {}",
                case.line,
                expected.map_or("accepted".to_string(), |r| format!("refused {}", r.name())),
                match outcome {
                    Ok(_) => "accepted".to_string(),
                    Err(refusal) => refusal.to_string(),
                },
                case.sql
            )),
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

#[test]
fn some_accepted_cases_carry_an_expected_table() {
    let cases = cases();
    let tables = cases.iter().filter(|case| case.table.is_some()).count();
    assert!(tables >= 3, "only {tables} cases carry an expected table");
}

#[tokio::test]
async fn an_oversized_query_is_refused_before_parsing() {
    let state = planning_state().expect("planning state");
    let sql = format!(
        "SELECT COUNT(*) FROM patient WHERE sex IN ({})",
        vec!["'x'"; 20_000].join(",")
    );
    let refusal = validate(&sql, &state).await.expect_err("too long");
    assert_eq!(refusal.rule, Rule::ResourceLimits);
}

#[tokio::test]
async fn refusals_carry_hints_for_the_common_mistakes() {
    let state = planning_state().expect("planning state");
    let refusal = validate("SELECT MAX(birth_year) FROM patient", &state)
        .await
        .expect_err("refused");
    assert_eq!(
        refusal.hint.as_deref(),
        Some("MAX releases one patient's value: use AVG, or GROUP BY a banded value")
    );
    let refusal = validate(
        "SELECT SUM(CASE WHEN sex = 'female' THEN 1 ELSE 0 END) FROM patient",
        &state,
    )
    .await
    .expect_err("refused");
    assert!(
        refusal
            .hint
            .as_deref()
            .is_some_and(|h| h.contains("GROUP BY the condition"))
    );
}

#[tokio::test]
async fn the_report_lists_tables_columns_and_aggregates() {
    let state = planning_state().expect("planning state");
    let sql = "SELECT d.code, p.sex, COUNT(DISTINCT p.pid) AS patients FROM patient p JOIN diagnosis d ON p.pid = d.pid GROUP BY d.code, p.sex";
    let query = validate(sql, &state).await.expect("valid");
    let tables: Vec<&str> = query.report().tables.iter().map(String::as_str).collect();
    assert_eq!(tables, vec!["diagnosis", "patient"]);
    assert!(
        query.report().columns.contains("d.code") && query.report().columns.contains("p.sex"),
        "{:?}",
        query.report().columns
    );
    assert_eq!(query.report().aggregates, vec!["count(DISTINCT p.pid)"]);
}
