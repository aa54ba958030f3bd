//! Rule 8, resource limits: what a question may cost, bounded before it runs.
//!
//! Planning, validation, DataFusion's optimiser and execution recurse once per nesting
//! level and multiply work by every scan and join. A question too large or too deeply
//! nested is refused from its tokens alone, before any tree is built (red team: 925
//! chained `+` overflowed a worker's stack and killed the coordinator); a question with
//! too many scans, or a reference table joined on something other than its codes, is
//! refused from its plan. The time, memory and output limits of execution are the node's
//! (`ern_node::engine`, `ern_node::stop`), and they refuse by this rule too.
//!
//! The SQL text's size is not limited here: the coordinator's configured `max_sql_bytes`
//! is the network's one size limit, and tokens and nesting bound the work of any text.

use datafusion::common::Column;
use datafusion::common::tree_node::{TreeNode, TreeNodeRecursion};
use datafusion::logical_expr::{JoinType, LogicalPlan};
use datafusion::sql::parser::Statement as DfStatement;
use datafusion::sql::sqlparser::dialect::GenericDialect;

use crate::allowlist;
use crate::rules::{Refusal, Rule};

/// Most table scans a question may hold (a CTE counts once per use): each can multiply
/// the rows, and the work, of the joins above it.
pub const MAX_TABLE_SCANS: usize = 16;

/// Most tokens a question may hold (words, literals, punctuation; not white space).
pub const MAX_SQL_TOKENS: usize = 16_384;

/// Most operators a question may hold: `+ - * / % ||`, comparisons, `::` casts, AND, OR,
/// NOT and set operations. A chain of them nests one level per operator in the parsed
/// expression, so this bounds the depth every later step (planning, validation, the
/// optimiser) recurses to; parentheses and function calls are bounded by the parser's
/// own recursion limit. 256 is far above any cohort question, and a question this deep
/// plans in half of [`PLANNING_STACK_BYTES`] (tested).
pub const MAX_SQL_OPERATORS: usize = 256;

/// The stack every thread that plans or runs a question needs: planning, validation,
/// DataFusion's optimiser and expression evaluation recurse once per nesting level, and a
/// question at [`MAX_SQL_OPERATORS`] needs under half of this in a debug build (tested).
/// Every ern runtime gives its threads this much; tokio's default (2 MiB) overflows
/// on questions a tenth as deep in a debug build.
pub const PLANNING_STACK_BYTES: usize = 16 << 20;

/// Parser recursion limit: nested parentheses, function calls and subqueries.
pub(crate) const MAX_PARSER_NESTING: usize = 64;

/// Rule 8 before any tree is built: a question too large or too deeply nested to plan
/// safely is refused from its tokens alone, which takes no recursion and no more time
/// than reading the text once.
pub(crate) fn check_sql_shape(sql: &str, dialect: &GenericDialect) -> Result<(), Refusal> {
    use datafusion::sql::sqlparser::keywords::Keyword;
    use datafusion::sql::sqlparser::tokenizer::{Token, Tokenizer};
    let tokens = Tokenizer::new(dialect, sql)
        .tokenize()
        .map_err(crate::rules::one_query::not_valid_sql)?;
    let (mut count, mut operators) = (0usize, 0usize);
    for token in &tokens {
        let operator = match token {
            Token::Whitespace(_) | Token::EOF => continue,
            Token::Word(word) => matches!(
                word.keyword,
                Keyword::AND
                    | Keyword::OR
                    | Keyword::NOT
                    | Keyword::UNION
                    | Keyword::INTERSECT
                    | Keyword::EXCEPT
            ),
            Token::Number(..)
            | Token::SingleQuotedString(_)
            | Token::DoubleQuotedString(_)
            | Token::Comma
            | Token::LParen
            | Token::RParen
            | Token::Period
            | Token::SemiColon => false,
            _ => true,
        };
        count += 1;
        operators += usize::from(operator);
    }
    if count > MAX_SQL_TOKENS {
        return Err(Refusal::new(
            Rule::ResourceLimits,
            "the SQL text",
            format!("holds {count} tokens, more than the {MAX_SQL_TOKENS} a question may hold"),
        ));
    }
    if operators > MAX_SQL_OPERATORS {
        return Err(Refusal::new(
            Rule::ResourceLimits,
            "the SQL text",
            format!(
                "holds {operators} operators, more than the {MAX_SQL_OPERATORS} a question may hold (each nests the expression one level deeper)"
            ),
        )
        .hint("use IN (…) for lists of values, and GROUP BY bands instead of long conditions"));
    }
    Ok(())
}

/// Refuses a plan that reads tables more than [`MAX_TABLE_SCANS`] times, or a reference
/// table more than once: a chain of reference joins, each on codes, fans one patient's
/// row out into millions (red team round 3: six `orpha_closure` joins made a question
/// take 1.6 s instead of 0.3 s exactly when one patient had a disorder of a group).
/// Rule 8 on the parsed question, before it is planned: the reads its WITH tables expand
/// to. Each use of a WITH table is planned as a copy of its body, so a chain of WITH
/// tables each joining the previous one to itself doubles the reads per link (red team:
/// twenty links, a few hundred tokens, took the planner past gigabytes and minutes before
/// [`check_table_scans`] could count them). Counted generously (every table named anywhere,
/// each WITH table's body with every use of it), against four times [`MAX_TABLE_SCANS`]:
/// the exact count of the plan follows.
pub(crate) fn check_inlined_reads(statement: &DfStatement) -> Result<(), Refusal> {
    use datafusion::sql::sqlparser::ast::{ObjectName, Query, Visit, Visitor, visit_relations};
    use std::collections::HashMap;
    use std::ops::ControlFlow;

    fn key(name: &ObjectName) -> String {
        name.to_string().to_lowercase()
    }
    /// Every WITH table of the statement, wherever it is defined, innermost first (a body
    /// can hold WITH tables of its own): its name and the tables its body names.
    #[derive(Default)]
    struct Ctes(Vec<(String, Vec<String>)>);
    impl Visitor for Ctes {
        type Break = ();
        fn post_visit_query(&mut self, query: &Query) -> ControlFlow<()> {
            for cte in query.with.iter().flat_map(|with| &with.cte_tables) {
                let mut named = Vec::new();
                let _ = visit_relations(cte.query.as_ref(), |relation| {
                    named.push(key(relation));
                    ControlFlow::<()>::Continue(())
                });
                self.0.push((cte.alias.name.value.to_lowercase(), named));
            }
            ControlFlow::Continue(())
        }
    }
    let DfStatement::Statement(inner) = statement else {
        return Ok(());
    };
    let mut ctes = Ctes::default();
    let _ = inner.visit(&mut ctes);
    // Reads of each WITH table when used once, in definition order (a WITH table can
    // name only those before it, or itself when recursive: that use counts one).
    let mut reads: HashMap<String, u64> = HashMap::new();
    for (name, named) in &ctes.0 {
        let total = named.iter().fold(0u64, |total, table| {
            total.saturating_add(reads.get(table).copied().unwrap_or(1))
        });
        let entry = reads.entry(name.clone()).or_insert(0);
        *entry = (*entry).max(total);
    }
    let mut total = 0u64;
    let _ = visit_relations(inner.as_ref(), |relation| {
        total = total.saturating_add(reads.get(&key(relation)).copied().unwrap_or(1));
        ControlFlow::<()>::Continue(())
    });
    let limit = 4 * MAX_TABLE_SCANS as u64;
    if total > limit {
        return Err(Refusal::new(
            Rule::ResourceLimits,
            "the query",
            format!(
                "reads tables more than {MAX_TABLE_SCANS} times once its WITH tables are expanded (each use of a WITH table is a copy of it)"
            ),
        )
        .hint("use each WITH table once, or join the tables directly"));
    }
    Ok(())
}

pub(crate) fn check_table_scans(plan: &LogicalPlan) -> Result<(), Refusal> {
    let mut scans = 0usize;
    let mut reference_scans: Vec<String> = Vec::new();
    let mut repeated: Option<String> = None;
    let _ = plan.apply(|node| {
        if let LogicalPlan::TableScan(scan) = node {
            scans += 1;
            let table = scan.table_name.table().to_string();
            if !crate::schema::PATIENT_TABLES.contains(&table.as_str()) {
                if reference_scans.contains(&table) {
                    repeated.get_or_insert(table);
                } else {
                    reference_scans.push(table);
                }
            }
        }
        Ok(if scans > MAX_TABLE_SCANS {
            TreeNodeRecursion::Stop
        } else {
            TreeNodeRecursion::Continue
        })
    });
    if scans > MAX_TABLE_SCANS {
        return Err(Refusal::new(
            Rule::ResourceLimits,
            "the query",
            format!(
                "reads tables more than {MAX_TABLE_SCANS} times (each use of a WITH table counts)"
            ),
        ));
    }
    if let Some(table) = repeated {
        return Err(Refusal::new(
            Rule::ResourceLimits,
            format!("table {table}"),
            "is read more than once: chained reference joins multiply one patient's rows, and the time taken would tell",
        )
        .hint("join each reference table once (orpha_closure already holds every ancestor of a code, at every depth)"));
    }
    Ok(())
}

pub(crate) fn is_reference_key(column: &Column) -> bool {
    allowlist::REFERENCE_KEYS.contains(&column.name.as_str())
}

/// A reference table joined on something other than its codes.
pub(crate) fn reference_join_off_its_codes(join_type: JoinType) -> Refusal {
    Refusal::new(
        Rule::ResourceLimits,
        format!("{join_type} join"),
        "joins a reference table on something other than its codes: the rows it adds could depend on one patient's value, and so could the time taken",
    )
    .hint(format!(
        "join reference tables on one of their codes, column to column ({})",
        allowlist::REFERENCE_KEYS.join(", ")
    ))
}
