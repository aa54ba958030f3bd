//! Red team of the questions over the reference tables alone, answered by the
//! coordinator: no patient table reaches them, and no question stalls the coordinator
//! or grows its memory without bound.

use std::time::{Duration, Instant};

use ern_queries::Rule;
use ern_queries::public::{answer, reads_only_reference_tables};

/// A patient table, a table function, a file, another schema or the catalogue's own
/// views anywhere in the question (a subquery, a set operation, a join) make it a
/// question for the disclosure rules, not a public one.
#[test]
fn only_the_reference_tables_make_a_public_question() {
    for sql in [
        "SELECT * FROM orpha_term WHERE orpha_code IN (SELECT code FROM diagnosis)",
        "SELECT orpha_code FROM orpha_term UNION ALL SELECT code FROM diagnosis",
        "SELECT t.name FROM orpha_term t JOIN patient p ON p.sex = t.name",
        "WITH x AS (SELECT code FROM diagnosis) SELECT * FROM orpha_term, x",
        "SELECT * FROM orpha_term, generate_series(1, 10)",
        "SELECT * FROM orpha_term, range(1, 10)",
        "SELECT * FROM information_schema.tables",
        "SELECT * FROM orpha_term, information_schema.columns",
        "SELECT * FROM 'patients.csv'",
        "SELECT * FROM public.orpha_term",
        "SELECT * FROM ern.public.orpha_term",
        "SELECT * FROM orpha_term; SELECT * FROM patient",
        "SELECT 1",
    ] {
        assert!(!reads_only_reference_tables(sql), "{sql}");
    }
}

/// A CTE named like a patient table is the CTE: the coordinator's context holds the
/// reference tables and nothing else, so there is no patient row to reach.
#[tokio::test]
async fn a_cte_named_patient_reads_only_what_it_names() {
    let sql =
        "WITH patient AS (SELECT orpha_code FROM orpha_term) SELECT COUNT(*) AS n FROM patient";
    assert!(reads_only_reference_tables(sql));
    let answered = answer(sql).await.expect("answered");
    assert_eq!(answered.batches[0].num_rows(), 1);
    let refusal = answer("SELECT COUNT(*) AS n FROM orpha_term, patient")
        .await
        .expect_err("no patient table here");
    assert_eq!(refusal.rule, Rule::OneQuery, "{refusal}");
}

/// A recursive CTE that counts up never ends: refused while planning.
#[tokio::test]
async fn a_recursive_cte_is_refused_before_it_runs() {
    let sql = "WITH RECURSIVE r(n) AS (SELECT MIN(1) AS n FROM orpha_term UNION ALL SELECT n + 1 FROM r) SELECT COUNT(*) AS n FROM r";
    assert!(reads_only_reference_tables(sql));
    let started = Instant::now();
    let refusal = answer(sql).await.expect_err("recursion");
    assert_eq!(refusal.rule, Rule::OneQuery, "{refusal}");
    assert!(refusal.to_string().contains("Recursive"), "{refusal}");
    assert!(started.elapsed() < Duration::from_secs(5));
}

/// The row limit caps what comes out, not what a window's sort or an aggregate holds:
/// over 65 million combinations of three reads these grew by gigabytes (red team). The
/// memory pool refuses them by rule 8, without spilling to disk.
#[tokio::test]
async fn a_window_or_aggregate_over_millions_of_combinations_is_refused_for_memory() {
    for sql in [
        "SELECT row_number() OVER (ORDER BY a.name, b.name, c.ancestor) AS r FROM orpha_term a, orpha_term b, orpha_closure c",
        "SELECT string_agg(concat(a.name, b.name, c.ancestor), ',') AS s FROM orpha_term a, orpha_term b, orpha_closure c",
    ] {
        assert!(reads_only_reference_tables(sql));
        let refusal = answer(sql).await.expect_err(sql);
        assert_eq!(refusal.rule, Rule::ResourceLimits, "{sql}: {refusal}");
    }
    // What fits is answered as before.
    let fits = answer(
        "SELECT c.ancestor, COUNT(*) AS n FROM orpha_closure c GROUP BY c.ancestor ORDER BY n DESC",
    )
    .await
    .expect("answered");
    assert!(!fits.batches.is_empty());
}

/// The deepest reference questions the shape check lets through (a constant chain the
/// constant check evaluates, an arithmetic chain run on every row) are answered, not
/// crashed, on a thread with half the stack ern's runtime threads have.
#[test]
fn the_deepest_reference_questions_are_answered_in_half_the_runtime_stack() {
    use ern_queries::validate::{MAX_SQL_OPERATORS, PLANNING_STACK_BYTES};
    // COUNT(*)'s star and the `=` count as operators too.
    let concatenated = vec!["'a'"; MAX_SQL_OPERATORS - 1].join(" || ");
    let summed = vec!["length(t.name)"; MAX_SQL_OPERATORS - 1].join(" + ");
    let questions = [
        format!("SELECT COUNT(*) AS n FROM orpha_term t WHERE t.orpha_code = {concatenated}"),
        format!("SELECT COUNT(*) AS n FROM orpha_term t WHERE 1 = {summed}"),
    ];
    for sql in questions {
        let worker = std::thread::Builder::new()
            .stack_size(PLANNING_STACK_BYTES / 2)
            .spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .build()
                    .expect("runtime");
                runtime
                    .block_on(answer(&sql))
                    .map(|_| ())
                    .map_err(|refusal| refusal.to_string())
            })
            .expect("thread");
        let answered = worker.join().expect("no stack overflow");
        answered.expect("answered");
    }
}

/// A text or list aggregate over a growing window frame builds a value per row as long
/// as the frame: quadratic in the rows, outside the memory pool (red team: over two
/// reads of orpha_term it asked for gigabytes at once and the process aborted). Window
/// functions over reference data give fixed-width values only.
#[tokio::test]
async fn a_window_that_grows_a_text_or_list_per_row_is_refused() {
    for sql in [
        "SELECT length(string_agg(a.name, ',') OVER (ORDER BY a.orpha_code, b.orpha_code ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW)) AS l FROM orpha_term a, orpha_term b",
        "SELECT array_agg(a.name) OVER (ORDER BY a.orpha_code) AS l FROM orpha_term a",
        "SELECT first_value(a.name) OVER (ORDER BY a.orpha_code) AS l FROM orpha_term a",
    ] {
        assert!(reads_only_reference_tables(sql));
        let refusal = answer(sql).await.expect_err(sql);
        assert!(refusal.rule == Rule::ResourceLimits, "{sql}: {refusal}");
    }
    for sql in [
        "SELECT a.orpha_code, row_number() OVER (ORDER BY a.name) AS r, COUNT(*) OVER (PARTITION BY a.name) AS n FROM orpha_term a",
        "SELECT SUM(length(a.name)) OVER (ORDER BY a.orpha_code ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW) AS l FROM orpha_term a",
    ] {
        answer(sql)
            .await
            .unwrap_or_else(|refusal| panic!("{sql}: {refusal}"));
    }
}

/// The row limit bounds the rows, not their width: 10,000 rows of a `concat` of 3,000
/// names made gigabytes. The answer's size is capped too, batch by batch.
#[tokio::test]
async fn an_answer_of_wide_rows_is_refused_by_its_size() {
    let names = vec!["a.name"; 3000].join(", ");
    let sql = format!("SELECT concat({names}) AS wide FROM orpha_term a, orpha_closure c");
    assert!(reads_only_reference_tables(&sql));
    let started = Instant::now();
    let refusal = answer(&sql).await.expect_err("too wide");
    assert_eq!(refusal.rule, Rule::ResourceLimits, "{refusal}");
    assert!(refusal.to_string().contains("MiB"), "{refusal}");
    assert!(started.elapsed() < Duration::from_secs(60));
}

/// WITH tables each joining the previous one to itself, side by side or nested in each
/// other's bodies: each use is planned as a copy, so the reads double per link. Twenty
/// links took planning past gigabytes and minutes before the scans could be counted
/// (red team), on the coordinator and on every node. Refused from the parsed question.
#[test]
fn a_chain_of_with_tables_is_refused_before_it_is_planned() {
    use ern_queries::catalog::planning_state;
    let chained = |table: &str, key: &str| {
        let mut sql = format!("WITH a0 AS (SELECT {key} FROM {table})");
        for i in 1..=24 {
            let p = i - 1;
            sql.push_str(&format!(
                ", a{i} AS (SELECT x.{key} FROM a{p} x JOIN a{p} y ON x.{key} = y.{key})"
            ));
        }
        sql + " SELECT COUNT(*) AS n FROM a24"
    };
    let nested = |table: &str, key: &str| {
        let mut body = format!("SELECT {key} FROM {table}");
        for i in 1..=24 {
            body = format!(
                "WITH a{i} AS ({body}) SELECT x.{key} FROM a{i} x JOIN a{i} y ON x.{key} = y.{key}"
            );
        }
        format!("SELECT COUNT(*) AS n FROM ({body}) t")
    };
    let questions = [
        chained("orpha_term", "orpha_code"),
        nested("orpha_term", "orpha_code"),
        chained("patient", "pid"),
        nested("patient", "pid"),
    ];
    for sql in questions {
        let worker = std::thread::Builder::new()
            .stack_size(ern_queries::validate::PLANNING_STACK_BYTES)
            .spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .build()
                    .expect("runtime");
                let started = Instant::now();
                let refusal = if reads_only_reference_tables(&sql) {
                    runtime.block_on(answer(&sql)).expect_err("refused")
                } else {
                    let state = planning_state().expect("planning");
                    runtime
                        .block_on(crate::common::validate(&sql, &state))
                        .expect_err("refused")
                };
                (refusal, started.elapsed())
            })
            .expect("thread");
        let (refusal, took) = worker.join().expect("no crash");
        assert_eq!(refusal.rule, Rule::ResourceLimits, "{refusal}");
        assert!(refusal.to_string().contains("WITH tables"), "{refusal}");
        assert!(took < Duration::from_secs(2), "{took:?}: {refusal}");
    }
}
