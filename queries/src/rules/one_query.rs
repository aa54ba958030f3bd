//! Rule 1, one query: exactly one statement, a SELECT, over the registered tables, using
//! only functions this network knows.
//!
//! Checked on the parsed statement, before planning: its kind, the tables it names (every
//! name, after WITH tables are set aside, must be a registered table) and the functions
//! it calls (each must be one DataFusion knows; whether it is *allowed* is rule 5's
//! question, asked of the plan). What DataFusion still refuses when planning is classified
//! by the error's kind, never by its wording.

use datafusion::error::DataFusionError;
use datafusion::execution::session_state::SessionState;
use datafusion::sql::parser::{DFParserBuilder, Statement as DfStatement};
use datafusion::sql::sqlparser::ast::{
    Expr as SqlExpr, Statement as SqlStatement, visit_expressions,
};
use datafusion::sql::sqlparser::dialect::GenericDialect;
use std::ops::ControlFlow;

use crate::allowlist;
use crate::rules::{Refusal, Rule, functions, resource_limits};

/// Rule 1: exactly one statement, and it is a query.
pub fn parse_one_query(sql: &str) -> Result<DfStatement, Refusal> {
    let dialect = GenericDialect {};
    resource_limits::check_sql_shape(sql, &dialect)?;
    let mut statements = DFParserBuilder::new(sql)
        .with_dialect(&dialect)
        .with_recursion_limit(resource_limits::MAX_PARSER_NESTING)
        .build()
        .and_then(|mut parser| parser.parse_statements())
        .map_err(not_valid_sql)?;
    if statements.len() != 1 {
        return Err(Refusal::new(
            Rule::OneQuery,
            "the SQL text",
            format!(
                "holds {} statements; send exactly one query",
                statements.len()
            ),
        ));
    }
    let statement = statements
        .pop_front()
        .ok_or_else(|| Refusal::new(Rule::OneQuery, "the SQL text", "is empty"))?;
    match &statement {
        DfStatement::Statement(inner) if matches!(inner.as_ref(), SqlStatement::Query(_)) => {
            resource_limits::check_inlined_reads(&statement)?;
            Ok(statement)
        }
        DfStatement::Statement(inner) => {
            Err(not_a_query(statement_kind(inner)).hint("only SELECT questions can be asked"))
        }
        DfStatement::Explain(_) => Err(Refusal::new(
            Rule::OneQuery,
            "EXPLAIN",
            "plans are not released",
        )),
        DfStatement::CreateExternalTable(_) => Err(not_a_query("CREATE EXTERNAL TABLE")),
        DfStatement::CopyTo(_) => Err(not_a_query("COPY")),
        other => Err(not_a_query(first_word(&other.to_string()))),
    }
}

fn statement_kind(statement: &SqlStatement) -> String {
    first_word(&statement.to_string())
}

fn first_word(text: &str) -> String {
    text.split_whitespace()
        .next()
        .unwrap_or("statement")
        .to_uppercase()
}

/// Text that does not parse as SQL.
pub(crate) fn not_valid_sql(error: impl std::fmt::Display) -> Refusal {
    Refusal::new(
        Rule::OneQuery,
        "the SQL text",
        format!("is not valid SQL: {error}"),
    )
    .as_mistake()
}

/// A statement or plan that is not a query.
pub(crate) fn not_a_query(part: impl std::fmt::Display) -> Refusal {
    Refusal::new(Rule::OneQuery, part, "is not a query")
}

/// A table that is not one of the registered tables.
pub(crate) fn unknown_table(part: impl std::fmt::Display) -> Refusal {
    Refusal::new(Rule::OneQuery, part, "is not one of the registered tables").hint(format!(
        "the tables are: {} (`ern schema` lists them)",
        allowlist::TABLES.join(", ")
    ))
}

/// A table name that is a plain word but no registered table: a typo, a mistake in the
/// question. A path, a URL, another schema or catalog stays a rule 1 refusal.
fn table_refusal(table: &datafusion::common::TableReference) -> Refusal {
    let refusal = unknown_table(format!("table {table}"));
    let plain_word = table.schema().is_none()
        && table.catalog().is_none()
        && table
            .table()
            .chars()
            .all(|c| c.is_alphanumeric() || c == '_');
    if plain_word {
        refusal.as_mistake()
    } else {
        refusal
    }
}

/// The tables and functions a statement names, before it is planned: every table a
/// registered one (in the default schema), every function one DataFusion knows, and no
/// window (`OVER`), which rule 5 refuses wherever it appears.
pub(crate) fn check_names(statement: &DfStatement, state: &SessionState) -> Result<(), Refusal> {
    let tables = state
        .resolve_table_references(statement)
        .map_err(planning_refusal)?;
    for table in tables {
        let registered = allowlist::TABLES.contains(&table.table())
            && table.schema().is_none_or(|schema| schema == "public")
            && table.catalog().is_none_or(|catalog| catalog == "ern");
        if !registered {
            return Err(table_refusal(&table));
        }
    }
    let DfStatement::Statement(inner) = statement else {
        return Ok(());
    };
    // The visitor recurses once per level of the expression tree; breaking with `()`
    // keeps each level's frame small (a refusal carried through every level's frame
    // overflowed half the planning stack on the deepest question allowed).
    let mut refused = None;
    let _ = visit_expressions(inner.as_ref(), |expr| {
        let SqlExpr::Function(function) = expr else {
            return ControlFlow::Continue(());
        };
        let name = function.name.to_string().to_lowercase();
        let known = state.scalar_functions().contains_key(&name)
            || state.aggregate_functions().contains_key(&name)
            || state.window_functions().contains_key(&name);
        if function.over.is_some() {
            refused = Some(functions::window_refusal(&name));
        } else if !known {
            refused = Some(functions::unknown_function(&name));
        }
        if refused.is_some() {
            ControlFlow::Break(())
        } else {
            ControlFlow::Continue(())
        }
    });
    refused.map_or(Ok(()), Err)
}

/// A planning error as a refusal, by the error's kind. Planning reads no data (the
/// tables are empty), so DataFusion's message (names and the query's own text) can be
/// passed on.
pub(crate) fn planning_refusal(error: DataFusionError) -> Refusal {
    let message = first_line(&error.strip_backtrace());
    match error.find_root() {
        DataFusionError::SchemaError(..) => Refusal::new(
            Rule::OneQuery,
            "a column",
            format!("is not in the tables the query reads: {message}"),
        )
        .hint("`ern schema` lists the columns of every table")
        .as_mistake(),
        DataFusionError::NotImplemented(_) => Refusal::new(
            Rule::OneQuery,
            "the query",
            format!("uses SQL this engine does not support: {message}"),
        ),
        DataFusionError::ResourcesExhausted(_) => Refusal::new(
            Rule::ResourceLimits,
            "the query",
            format!("is too large to plan: {message}"),
        ),
        DataFusionError::SQL(..) => not_valid_sql(message),
        _ => Refusal::new(
            Rule::OneQuery,
            "the query",
            format!("cannot be planned: {message}"),
        ),
    }
}

/// A plan whose types do not fit (found by the analyzer), with a hint.
pub(crate) fn types_do_not_fit(error: DataFusionError) -> Refusal {
    Refusal::new(
        Rule::OneQuery,
        "the query",
        format!("its types do not fit: {}", first_line(&error.strip_backtrace())),
    )
    .hint("compare columns with values of their own type (dates with DATE '2020-01-01', numbers with numbers)")
    .as_mistake()
}

fn first_line(text: &str) -> String {
    text.lines()
        .rfind(|line| !line.trim().is_empty() && !line.starts_with("caused by"))
        .unwrap_or(text)
        .to_string()
}

/// The comments in `sql`, as written (for a steward's review: a comment does not run,
/// but it can make a question read like another).
pub fn sql_comments(sql: &str) -> Vec<String> {
    use datafusion::sql::sqlparser::tokenizer::{Token, Tokenizer, Whitespace};
    let dialect = GenericDialect {};
    let Ok(tokens) = Tokenizer::new(&dialect, sql).tokenize() else {
        return Vec::new();
    };
    tokens
        .into_iter()
        .filter_map(|token| match token {
            Token::Whitespace(
                comment @ (Whitespace::SingleLineComment { .. } | Whitespace::MultiLineComment(_)),
            ) => Some(comment.to_string().trim_end().to_string()),
            _ => None,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use datafusion::common::{Column, SchemaError};

    use super::*;

    /// The kind decides, wrapped in context or not; the wording never does (a message
    /// that mentions "table" or "window" gets no special treatment).
    #[test]
    fn planning_errors_are_classified_by_their_kind() {
        let missing = DataFusionError::SchemaError(
            Box::new(SchemaError::FieldNotFound {
                field: Box::new(Column::from_name("colour")),
                valid_fields: vec![],
            }),
            Box::new(None),
        );
        let cases = [
            (missing, Rule::OneQuery, "is not in the tables"),
            (
                DataFusionError::NotImplemented("window table not found".into()),
                Rule::OneQuery,
                "does not support",
            ),
            (
                DataFusionError::Context(
                    "planning".into(),
                    Box::new(DataFusionError::ResourcesExhausted("memory".into())),
                ),
                Rule::ResourceLimits,
                "too large to plan",
            ),
            (
                DataFusionError::Plan("Invalid function 'window'".into()),
                Rule::OneQuery,
                "cannot be planned",
            ),
        ];
        for (error, rule, reason) in cases {
            let refusal = planning_refusal(error);
            assert_eq!(refusal.rule, rule, "{refusal}");
            assert!(refusal.reason.contains(reason), "{refusal}");
        }
    }
}
