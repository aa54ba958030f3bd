//! `ern schema` and `ern examples`: what a researcher can ask about, offline.
//!
//! Before this, the schema was learnt from error messages. Both commands read the
//! contract compiled into the binary (the store's Arrow schemas, value sets and declared
//! ranges that ingest and every node enforce), so they need no coordinator and show
//! exactly what the rules check against.

use std::path::PathBuf;

use anyhow::Context;
use arrow::datatypes::DataType;
use clap::Args;
use ern_queries::examples::EXAMPLES;
use ern_queries::schema;
use serde_json::json;

use crate::table::{ListFormat, new_table};

/// Arguments of `ern schema`.
#[derive(Debug, Args)]
pub(crate) struct SchemaArgs {
    /// How to print.
    #[arg(long, value_enum, default_value_t = ListFormat::Table)]
    format: ListFormat,
}

/// Arguments of `ern examples`.
#[derive(Debug, Args)]
pub(crate) struct ExamplesArgs {
    /// How to print.
    #[arg(long, value_enum, default_value_t = ListFormat::Table)]
    format: ListFormat,
    /// Also write each question to DIR/<name>.sql, ready for `ern submit --sql` or
    /// `ern demo --sql`.
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,
}

/// Arguments of `ern validate`.
#[derive(Debug, Args)]
pub(crate) struct ValidateArgs {
    #[command(flatten)]
    question: crate::commands::researcher::SqlSource,
}

/// Tables in the order of data-model.md.
const TABLES: [&str; 6] = [
    "patient",
    "diagnosis",
    "genetic_finding",
    "phenotype",
    schema::ORPHA_TERM,
    schema::ORPHA_CLOSURE,
];

/// What a column can hold, in words: its value set, its range, or nothing declared.
fn column_values(table: &str, column: &str) -> String {
    if column == "pid" {
        return "pseudonym: only in joins on pid, COUNT(DISTINCT pid), per-patient GROUP BY".into();
    }
    if let Some(values) = schema::value_set(table, column) {
        return values.join(", ");
    }
    if let Some((low, high)) = schema::declared_range(column) {
        return format!("{low} to {high}");
    }
    let data_type = schema::by_name(table).and_then(|s| {
        s.field_with_name(column)
            .ok()
            .map(|f| f.data_type().clone())
    });
    match (column, data_type) {
        ("code", _) => "ORPHA:n, ICD10:… or OMIM:n".into(),
        ("orpha_code" | "ancestor" | "descendant", _) => "ORPHA:n".into(),
        ("hgnc_id", _) => "HGNC:n".into(),
        ("hpo_id", _) => "HP:nnnnnnn".into(),
        ("depth", _) => "0 for a term itself, 1 for its parents, …".into(),
        (_, Some(DataType::Date32)) => "a date, 1880-01-01 to 2100-12-31".into(),
        (_, Some(DataType::Boolean)) => "true, false".into(),
        _ => "free text".into(),
    }
}

fn table_kind(table: &str) -> &'static str {
    if schema::PATIENT_TABLES.contains(&table) {
        "patient data"
    } else {
        "reference data (public)"
    }
}

/// `ern schema`.
pub(crate) fn schema(args: SchemaArgs) -> anyhow::Result<()> {
    match args.format {
        ListFormat::Json => {
            let tables: Vec<serde_json::Value> = TABLES
                .iter()
                .filter_map(|table| Some((table, schema::by_name(table)?)))
                .map(|(table, arrow_schema)| {
                    let columns: Vec<serde_json::Value> = arrow_schema
                        .fields()
                        .iter()
                        .map(|field| {
                            json!({
                                "name": field.name(),
                                "type": field.data_type().to_string(),
                                "nullable": field.is_nullable(),
                                "values": schema::value_set(table, field.name()),
                                "range": schema::declared_range(field.name()),
                            })
                        })
                        .collect();
                    json!({
                        "table": table,
                        "reference": !schema::PATIENT_TABLES.contains(table),
                        "columns": columns,
                    })
                })
                .collect();
            println!("{}", serde_json::to_string_pretty(&tables)?);
        }
        ListFormat::Table => {
            let mut out = new_table(&["table", "column", "type", "null", "values"], &[]);
            for table in TABLES {
                let Some(arrow_schema) = schema::by_name(table) else {
                    continue;
                };
                for (index, field) in arrow_schema.fields().iter().enumerate() {
                    let name = if index == 0 {
                        format!("{table}\n({})", table_kind(table))
                    } else {
                        String::new()
                    };
                    out.add_row(vec![
                        name,
                        field.name().clone(),
                        field.data_type().to_string(),
                        if field.is_nullable() { "yes" } else { "" }.to_string(),
                        column_values(table, field.name()),
                    ]);
                }
            }
            println!("{out}");
            println!(
                "Join patient tables on pid; join orpha_closure (ancestor, descendant) and \
                 orpha_term (orpha_code) on their codes. `ern examples` shows questions."
            );
        }
    }
    Ok(())
}

/// `ern validate`: the check the coordinator and every node make, offline, from the
/// rules compiled into this binary. Accepted: the steward's report and the query hash a
/// steward signs, exit 0. Refused: the rule and the reason on stderr, exit 1.
pub(crate) fn validate(args: ValidateArgs) -> anyhow::Result<()> {
    let sql = args.question.read()?;
    // Planning recurses once per nesting level: on a thread with the planning stack.
    let runtime = crate::client::server_runtime()?;
    let validated = runtime.block_on(async {
        let state = ern_queries::catalog::planning_state()?;
        anyhow::Ok(ern_queries::Planner::new().plan(&sql, &state).await)
    })?;
    let query = validated.map_err(|refusal| anyhow::anyhow!("{refusal}"))?;
    let report = query.report();
    let join = |items: &mut dyn Iterator<Item = &String>| {
        items
            .map(|item| ern_queries::shown::shown(item))
            .collect::<Vec<_>>()
            .join(", ")
    };
    println!("accepted");
    println!("query hash: {}", ern_queries::query_hash(&sql));
    println!("tables: {}", join(&mut report.tables.iter()));
    println!("columns: {}", join(&mut report.columns.iter()));
    println!(
        "released aggregates: {}",
        join(&mut report.aggregates.iter())
    );
    println!("grouped by: {}", join(&mut report.group_by.iter()));
    for comment in ern_queries::validate::sql_comments(&sql) {
        println!("comment: {}", ern_queries::shown::shown(&comment));
    }
    Ok(())
}

/// `ern examples`.
pub(crate) fn examples(args: ExamplesArgs) -> anyhow::Result<()> {
    if let Some(dir) = &args.out {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        for example in EXAMPLES {
            let path = dir.join(format!("{}.sql", example.name));
            std::fs::write(&path, format!("{}\n", example.sql))
                .with_context(|| format!("writing {}", path.display()))?;
        }
        eprintln!("{} questions written to {}", EXAMPLES.len(), dir.display());
    }
    match args.format {
        ListFormat::Json => {
            let list: Vec<serde_json::Value> = EXAMPLES
                .iter()
                .map(|e| json!({"name": e.name, "title": e.title, "sql": e.sql}))
                .collect();
            println!("{}", serde_json::to_string_pretty(&list)?);
        }
        ListFormat::Table => {
            let mut out = new_table(&["name", "question", "SQL"], &[]);
            for example in EXAMPLES {
                out.add_row(vec![example.name, example.title, example.sql]);
            }
            println!("{out}");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every example passes the rules the coordinator and nodes apply.
    #[tokio::test]
    async fn every_example_is_accepted() {
        let state = ern_queries::catalog::planning_state().expect("planning state");
        let planner = ern_queries::Planner::new();
        for example in EXAMPLES {
            if let Err(refusal) = planner.plan(example.sql, &state).await {
                panic!("{}: {refusal}", example.name);
            }
        }
    }

    #[test]
    fn every_table_of_the_contract_is_listed() {
        for table in ern_queries::allowlist::TABLES {
            assert!(TABLES.contains(table), "{table}");
        }
        assert_eq!(
            column_values("patient", "sex"),
            "female, male, undetermined, unknown"
        );
        assert_eq!(column_values("patient", "birth_year"), "1880 to 2100");
    }
}
