//! Hostile input, red team 2026-12: one 1.9 KB question (`1+1+…+1`, 925 terms) overflowed
//! a coordinator worker's stack at submit and aborted the process. Questions are now
//! refused from their tokens before any tree is built when they hold more operators than
//! [`MAX_SQL_OPERATORS`]; the deepest question still accepted must plan, optimise and
//! plan physically on half the stack every ern runtime gives its threads
//! ([`PLANNING_STACK_BYTES`]), in a debug build.

use crate::common;
use ern_queries::catalog::planning_context;
use ern_queries::rules::Rule;

use common::validate;
use ern_queries::validate::{MAX_SQL_OPERATORS, MAX_SQL_TOKENS, PLANNING_STACK_BYTES};

fn repeated(head: &str, part: &str, times: usize, tail: &str) -> String {
    let mut sql = String::from(head);
    for i in 0..times {
        if i > 0 {
            sql.push_str(part);
        }
        sql.push('1');
    }
    sql.push_str(tail);
    sql
}

/// The shapes the red team used, at their size and ten times it.
fn hostile_shapes() -> Vec<(String, String)> {
    let mut shapes = Vec::new();
    for scale in [1, 10] {
        shapes.push((
            format!("{}-term sum", 925 * scale),
            repeated(
                "SELECT COUNT(*) AS n FROM patient p WHERE p.birth_year = ",
                "+",
                925 * scale,
                "",
            ),
        ));
        shapes.push((
            format!("{} ORs", 910 * scale),
            repeated(
                "SELECT COUNT(*) AS n FROM patient p WHERE p.birth_year = 1 OR ",
                " = 1 OR p.birth_year = ",
                910 * scale,
                "",
            ),
        ));
        shapes.push((
            format!("{} ANDs", 1200 * scale),
            repeated(
                "SELECT COUNT(*) AS n FROM patient p WHERE p.birth_year > ",
                " AND p.birth_year > ",
                1200 * scale,
                "",
            ),
        ));
        shapes.push((
            format!("{} concatenations", 2000 * scale),
            repeated(
                "SELECT COUNT(*) AS n FROM patient p WHERE p.sex = 'a' || ",
                " || ",
                2000 * scale,
                "",
            ),
        ));
        let arm = "SELECT pid, sex FROM patient";
        let union = vec![arm; 1500 * scale].join(" UNION ALL ");
        shapes.push((
            format!("{} UNION ALL arms", 1500 * scale),
            format!("SELECT t.sex, COUNT(*) AS n FROM ({union}) t GROUP BY t.sex"),
        ));
    }
    shapes
}

#[tokio::test]
async fn deep_questions_are_refused_before_planning() {
    let state = planning_context().expect("context").state();
    for (name, sql) in hostile_shapes() {
        match validate(&sql, &state).await {
            Err(refusal) => {
                assert_eq!(refusal.rule, Rule::ResourceLimits, "{name}: {refusal}");
                assert!(
                    refusal.reason.contains("operators")
                        || refusal.reason.contains("tokens")
                        || refusal.reason.contains("bytes"),
                    "{name}: {refusal}"
                );
                // The refusal quotes no part of the question itself.
                assert!(refusal.to_string().len() < 400, "{name}: {refusal}");
            }
            Ok(_) => panic!("{name}: accepted"),
        }
    }
}

#[tokio::test]
async fn too_many_tokens_are_refused() {
    let state = planning_context().expect("context").state();
    let list = vec!["'ORPHA:1'"; MAX_SQL_TOKENS].join(", ");
    let sql = format!("SELECT COUNT(*) AS n FROM diagnosis d WHERE d.code IN ({list})");
    let refusal = validate(&sql, &state).await.expect_err("refused");
    assert_eq!(refusal.rule, Rule::ResourceLimits, "{refusal}");
}

/// The deepest accepted question, through everything a node does before running it, on
/// a thread with half the stack ern's runtime threads have.
#[test]
fn the_deepest_accepted_question_plans_in_half_the_runtime_stack() {
    // COUNT(*)'s star and the `=` count as operators, and the sum adds one per term.
    let sql = repeated(
        "SELECT COUNT(*) AS n FROM patient p WHERE p.birth_year = ",
        "+",
        MAX_SQL_OPERATORS - 1,
        "",
    );
    let worker = std::thread::Builder::new()
        .stack_size(PLANNING_STACK_BYTES / 2)
        .spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .build()
                .expect("runtime");
            runtime.block_on(async {
                let ctx = planning_context().expect("context");
                let state = ctx.state();
                let query = validate(&sql, &state).await.expect("accepted");
                let optimized = state.optimize(query.logical_plan()).expect("optimise");
                state
                    .create_physical_plan(&optimized)
                    .await
                    .expect("physical plan");
            });
        })
        .expect("thread");
    worker.join().expect("no stack overflow");
}
