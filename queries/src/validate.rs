//! Validation: a researcher's SQL against the disclosure-control rules 1-5.
//!
//! The SQL is parsed with DataFusion's parser (one statement, a query), planned against
//! the node tables, and the unoptimised logical plan is walked node by node and
//! expression by expression. Plan nodes, functions and operators are matched against
//! allowlists; anything unknown is refused. `pid` columns are tracked through aliases,
//! projections, joins and per-patient groupings, so renaming `pid` does not hide it.

use std::collections::BTreeSet;
use std::sync::Arc;

use arrow::datatypes::DataType;
use datafusion::common::tree_node::{TreeNode, TreeNodeRecursion};
use datafusion::common::{Column, DFSchema, DFSchemaRef};
use datafusion::execution::session_state::SessionState;
use datafusion::logical_expr::expr::{AggregateFunction, Alias};
use datafusion::logical_expr::{
    Aggregate, BinaryExpr, Distinct, Expr, ExprSchemable, Join, JoinType, Limit, LogicalPlan,
    Operator, Projection,
};
use datafusion::sql::parser::{DFParserBuilder, Statement as DfStatement};
use datafusion::sql::sqlparser::ast::Statement as SqlStatement;
use datafusion::sql::sqlparser::dialect::GenericDialect;

use crate::allowlist;
use crate::pid_class::PidSet;
use crate::rules::{Refusal, Rule};
use crate::schema;
use crate::values::{self, Value, Values};

/// Longest SQL text accepted, in bytes.
pub const MAX_SQL_BYTES: usize = 64 * 1024;

/// What a released aggregate computes; each merges across sites in its own way.
#[derive(Debug, Clone, PartialEq)]
pub enum AggregateKind {
    /// `COUNT(*)` or `COUNT(column)`: partial counts add.
    Count,
    /// `COUNT(DISTINCT pid)`: patients are site-local, so per-site counts add.
    CountDistinctPid,
    /// `SUM(x)`: partial sums add.
    Sum,
    /// `AVG(x)`: sent as SUM(x) and COUNT(x), divided after the merge.
    Avg,
}

/// One aggregate of the barrier.
#[derive(Debug, Clone)]
pub struct BarrierAggregate {
    /// How it merges.
    pub kind: AggregateKind,
    /// The aggregate expression as planned (without alias).
    pub expr: Expr,
}

/// The aggregation barrier: what the sites compute and what the merge rebuilds.
#[derive(Debug, Clone)]
pub struct Barrier {
    /// The barrier node's input: the per-site part of the query.
    pub input: Arc<LogicalPlan>,
    /// GROUP BY expressions.
    pub group_exprs: Vec<Expr>,
    /// Released aggregates.
    pub aggregates: Vec<BarrierAggregate>,
    /// The barrier's output schema (group columns, then aggregates).
    pub schema: DFSchemaRef,
    /// The pid column the hidden patient count counts: every patient table of the input
    /// joins into its class (rule 3), so every row belongs to the patient it names.
    pub pid: Column,
}

/// What a steward sees of a query before approving it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ValidationReport {
    /// Tables read.
    pub tables: BTreeSet<String>,
    /// Columns referenced, as `table.column` where known.
    pub columns: BTreeSet<String>,
    /// Released aggregates as planned.
    pub aggregates: Vec<String>,
    /// GROUP BY expressions.
    pub group_by: Vec<String>,
}

/// A query that passed validation.
#[derive(Debug, Clone)]
pub struct ValidatedQuery {
    /// The exact SQL text.
    pub sql: String,
    /// The full unoptimised plan.
    pub plan: LogicalPlan,
    /// The barrier.
    pub barrier: Barrier,
    /// The steward's report.
    pub report: ValidationReport,
}

/// Parses, plans and validates `sql` against the tables and functions of `state`.
pub async fn validate(sql: &str, state: &SessionState) -> Result<ValidatedQuery, Refusal> {
    let statement = parse_one_query(sql)?;
    let plan = state
        .statement_to_plan(statement)
        .await
        .map_err(planning_refusal)?;
    let validated = validate_plan(sql, plan)?;
    // Types are checked here, where the question is refused with the reason, rather than
    // at the node, where a failure reaches the researcher as a reference id only.
    state
        .analyzer()
        .execute_and_check(validated.plan.clone(), state.config_options(), |_, _| {})
        .map_err(|error| {
            Refusal::new(
                Rule::OneQuery,
                "the query",
                format!("its types do not fit: {}", first_line(&error.strip_backtrace())),
            )
            .hint("compare columns with values of their own type (dates with DATE '2020-01-01', numbers with numbers)")
        })?;
    Ok(validated)
}

fn first_line(text: &str) -> String {
    text.lines()
        .rfind(|line| !line.trim().is_empty() && !line.starts_with("caused by"))
        .unwrap_or(text)
        .to_string()
}

/// Most table scans a question may hold (a CTE counts once per use): each can multiply
/// the rows, and the work, of the joins above it.
pub const MAX_TABLE_SCANS: usize = 16;

/// Validates an already planned query (the plan of `sql`).
pub fn validate_plan(sql: &str, plan: LogicalPlan) -> Result<ValidatedQuery, Refusal> {
    let mut scans = 0usize;
    let _ = plan.apply(|node| {
        if let LogicalPlan::TableScan(_) = node {
            scans += 1;
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
    let mut report = ValidationReport::default();
    let barrier = check_top(&plan, &mut report)?;
    collect_columns(&plan, &mut report);
    Ok(ValidatedQuery {
        sql: sql.to_string(),
        plan,
        barrier,
        report,
    })
}

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
const MAX_PARSER_NESTING: usize = 64;

/// Rule 8 before any tree is built: a question too large or too deeply nested to plan
/// safely is refused from its tokens alone, which takes no recursion and no more time
/// than reading the text once.
fn check_sql_shape(sql: &str, dialect: &GenericDialect) -> Result<(), Refusal> {
    use datafusion::sql::sqlparser::keywords::Keyword;
    use datafusion::sql::sqlparser::tokenizer::{Token, Tokenizer};
    let tokens = Tokenizer::new(dialect, sql).tokenize().map_err(|e| {
        Refusal::new(
            Rule::OneQuery,
            "the SQL text",
            format!("is not valid SQL: {e}"),
        )
    })?;
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

/// Rule 1: exactly one statement, and it is a query.
pub fn parse_one_query(sql: &str) -> Result<DfStatement, Refusal> {
    if sql.len() > MAX_SQL_BYTES {
        return Err(Refusal::new(
            Rule::ResourceLimits,
            "the SQL text",
            format!("is longer than {MAX_SQL_BYTES} bytes"),
        ));
    }
    let dialect = GenericDialect {};
    check_sql_shape(sql, &dialect)?;
    let mut statements = DFParserBuilder::new(sql)
        .with_dialect(&dialect)
        .with_recursion_limit(MAX_PARSER_NESTING)
        .build()
        .and_then(|mut parser| parser.parse_statements())
        .map_err(|e| {
            Refusal::new(
                Rule::OneQuery,
                "the SQL text",
                format!("is not valid SQL: {e}"),
            )
        })?;
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
            Ok(statement)
        }
        DfStatement::Statement(inner) => Err(Refusal::new(
            Rule::OneQuery,
            statement_kind(inner),
            "is not a query: only SELECT questions can be asked",
        )),
        DfStatement::Explain(_) => Err(Refusal::new(
            Rule::OneQuery,
            "EXPLAIN",
            "plans are not released",
        )),
        DfStatement::CreateExternalTable(_) => Err(Refusal::new(
            Rule::OneQuery,
            "CREATE EXTERNAL TABLE",
            "is not a query",
        )),
        DfStatement::CopyTo(_) => Err(Refusal::new(Rule::OneQuery, "COPY", "is not a query")),
        other => Err(Refusal::new(
            Rule::OneQuery,
            first_word(&other.to_string()),
            "is not a query",
        )),
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

/// Maps a planning error to the rule it most likely concerns. Planning reads no data, so
/// DataFusion's message (names and the query's own text) can be passed on.
fn planning_refusal(error: datafusion::error::DataFusionError) -> Refusal {
    let message = error.strip_backtrace();
    let lower = message.to_lowercase();
    if lower.contains("table") && (lower.contains("not found") || lower.contains("doesn't exist")) {
        Refusal::new(
            Rule::OneQuery,
            "a table",
            format!("is not one of the registered tables ({message})"),
        )
        .hint(format!("the tables are: {}", allowlist::TABLES.join(", ")))
    } else if lower.contains("invalid function")
        || lower.contains("function") && lower.contains("not found")
    {
        Refusal::new(
            Rule::AllowedFunctions,
            "a function",
            format!("is unknown ({message})"),
        )
    } else if lower.contains("window") {
        Refusal::new(
            Rule::AllowedFunctions,
            "a window",
            "window functions are not allowed",
        )
    } else {
        Refusal::new(
            Rule::OneQuery,
            "the query",
            format!("cannot be planned: {message}"),
        )
    }
}

fn is_pid(column: &Column, pids: &PidSet) -> bool {
    // Any column named pid counts too, whatever its source: renaming is tracked, and a
    // column that merely looks like a pid is treated as one.
    column.name == "pid"
        || pids.contains(column)
        || pids
            .columns()
            .any(|p| p.relation.is_none() && p.name == column.name)
}

fn unalias(expr: &Expr) -> &Expr {
    match expr {
        Expr::Alias(Alias { expr, .. }) => unalias(expr),
        other => other,
    }
}

fn as_pid_column<'a>(expr: &'a Expr, pids: &PidSet) -> Option<&'a Column> {
    match unalias(expr) {
        Expr::Column(column) if is_pid(column, pids) => Some(column),
        _ => None,
    }
}

/// Rule 2 from the top: above the barrier only projection, sort, limit, HAVING filters
/// and aliases; then one aggregate.
fn check_top(plan: &LogicalPlan, report: &mut ValidationReport) -> Result<Barrier, Refusal> {
    let mut node = plan;
    loop {
        match node {
            LogicalPlan::Projection(Projection { expr, input, .. }) => {
                for e in expr {
                    check_above(e)?;
                }
                node = input;
            }
            LogicalPlan::Sort(sort) => {
                for e in &sort.expr {
                    check_above(&e.expr)?;
                }
                node = &sort.input;
            }
            LogicalPlan::Limit(limit) => {
                check_limit(limit)?;
                node = &limit.input;
            }
            LogicalPlan::Filter(filter) => {
                check_above(&filter.predicate)?;
                node = &filter.input;
            }
            LogicalPlan::SubqueryAlias(alias) => node = &alias.input,
            LogicalPlan::Aggregate(aggregate) => return check_barrier(aggregate, report),
            LogicalPlan::Window(_) => {
                return Err(Refusal::new(
                    Rule::AllowedFunctions,
                    "a window function (OVER …)",
                    "window functions are not allowed",
                )
                .hint("GROUP BY the partition columns instead"));
            }
            LogicalPlan::Distinct(Distinct::On(_)) => return Err(distinct_on_refusal()),
            LogicalPlan::Distinct(_) => {
                return Err(Refusal::new(
                    Rule::AggregationBarrier,
                    "SELECT DISTINCT",
                    "would release individual rows",
                )
                .hint("GROUP BY the columns and COUNT(DISTINCT pid)"));
            }
            other => return Err(refuse_node(other, true)),
        }
    }
}

/// LIMIT and OFFSET take literals only: anything else would be computed from data on
/// the coordinator, after the merge.
fn check_limit(limit: &Limit) -> Result<(), Refusal> {
    for (part, expr) in [("LIMIT", &limit.fetch), ("OFFSET", &limit.skip)] {
        if let Some(expr) = expr
            && !matches!(unalias(expr), Expr::Literal(..))
        {
            return Err(Refusal::new(
                Rule::AggregationBarrier,
                format!("{part} {expr}"),
                format!("{part} takes a number written in the query"),
            ));
        }
    }
    Ok(())
}

/// A refusal for a plan node that is not on the allowlist.
fn refuse_node(node: &LogicalPlan, at_top: bool) -> Refusal {
    let name = node_name(node);
    match node {
        LogicalPlan::Explain(_)
        | LogicalPlan::Analyze(_)
        | LogicalPlan::Dml(_)
        | LogicalPlan::Ddl(_)
        | LogicalPlan::Statement(_)
        | LogicalPlan::Copy(_)
        | LogicalPlan::DescribeTable(_) => Refusal::new(Rule::OneQuery, name, "is not a query"),
        LogicalPlan::Window(_) => Refusal::new(
            Rule::AllowedFunctions,
            name,
            "window functions are not allowed",
        ),
        LogicalPlan::Unnest(_) => {
            Refusal::new(Rule::AllowedFunctions, name, "UNNEST is not allowed")
        }
        LogicalPlan::Subquery(_) => Refusal::new(
            Rule::AllowedFunctions,
            name,
            "subqueries in expressions are not allowed",
        ),
        _ if at_top => Refusal::new(
            Rule::AggregationBarrier,
            name,
            "would release rows: the query must end in one aggregation",
        )
        .hint("aggregate with GROUP BY and COUNT(DISTINCT pid), SUM or AVG"),
        _ => Refusal::new(
            Rule::AggregationBarrier,
            name,
            "is not allowed below the aggregation",
        ),
    }
}

fn node_name(node: &LogicalPlan) -> String {
    match node {
        LogicalPlan::TableScan(scan) => format!("table {}", scan.table_name),
        LogicalPlan::Limit(_) => "LIMIT".into(),
        LogicalPlan::Sort(_) => "ORDER BY".into(),
        LogicalPlan::Union(_) => "UNION".into(),
        LogicalPlan::Values(_) => "VALUES".into(),
        LogicalPlan::EmptyRelation(_) => "a query without tables".into(),
        LogicalPlan::Distinct(_) => "DISTINCT".into(),
        LogicalPlan::RecursiveQuery(_) => "WITH RECURSIVE".into(),
        LogicalPlan::Explain(_) => "EXPLAIN".into(),
        LogicalPlan::Analyze(_) => "EXPLAIN ANALYZE".into(),
        LogicalPlan::DescribeTable(_) => "DESCRIBE".into(),
        LogicalPlan::Copy(_) => "COPY".into(),
        LogicalPlan::Unnest(_) => "UNNEST".into(),
        LogicalPlan::Window(_) => "a window function".into(),
        other => other
            .display()
            .to_string()
            .split(':')
            .next()
            .unwrap_or("plan node")
            .to_string(),
    }
}

/// Rules 2-4 at the barrier, and everything below it.
fn check_barrier(aggregate: &Aggregate, report: &mut ValidationReport) -> Result<Barrier, Refusal> {
    let input = &aggregate.input;
    let below = check_below(input, report)?;
    let pids = &below.pids;
    let schema = input.schema();
    for group in &aggregate.group_expr {
        if let Expr::GroupingSet(_) = group {
            return Err(grouping_sets_refusal(group));
        }
        if as_pid_column(group, pids).is_some() {
            return Err(Refusal::new(
                Rule::PidUse,
                group,
                "grouping by pid would release one row per patient",
            )
            .hint("GROUP BY patient attributes and COUNT(DISTINCT pid)"));
        }
        check_scalar(group, pids, schema, Place::Below)?;
        report.group_by.push(group.to_string());
    }
    let mut aggregates = Vec::with_capacity(aggregate.aggr_expr.len());
    for expr in &aggregate.aggr_expr {
        let kind = check_barrier_aggregate(expr, &below, schema)?;
        report.aggregates.push(unalias(expr).to_string());
        aggregates.push(BarrierAggregate {
            kind,
            expr: unalias(expr).clone(),
        });
    }
    pids.check_one_class(|| "the aggregation".to_string())?;
    let Some(pid) = pids.counted().cloned() else {
        return Err(Refusal::new(Rule::AggregationBarrier, "the aggregation", "does not count patients: no pid reaches it")
            .hint("read a patient table (patient, diagnosis, genetic_finding, phenotype) and keep its pid in any subquery"));
    };
    Ok(Barrier {
        input: Arc::clone(input),
        group_exprs: aggregate.group_expr.clone(),
        aggregates,
        schema: Arc::clone(&aggregate.schema),
        pid,
    })
}

fn grouping_sets_refusal(group: &Expr) -> Refusal {
    Refusal::new(
        Rule::AllowedFunctions,
        group,
        "ROLLUP, CUBE and GROUPING SETS are not allowed",
    )
    .hint("send one query per grouping")
}

fn has_pid(schema: &DFSchema, pids: &PidSet) -> bool {
    schema.columns().iter().any(|c| is_pid(c, pids))
}

fn check_barrier_aggregate(
    expr: &Expr,
    below: &Below,
    schema: &DFSchema,
) -> Result<AggregateKind, Refusal> {
    let pids = &below.pids;
    let Expr::AggregateFunction(AggregateFunction { func, params }) = unalias(expr) else {
        return Err(Refusal::new(
            Rule::BarrierAggregates,
            expr,
            "is not an aggregate function",
        ));
    };
    let name = func.name().to_lowercase();
    if !allowlist::BARRIER_AGGREGATES.contains(&name.as_str()) {
        return Err(Refusal::new(
            Rule::BarrierAggregates,
            expr,
            format!("{} is not a released aggregate", name.to_uppercase()),
        )
        .hint(allowlist::barrier_aggregate_hint(&name)));
    }
    if params.filter.is_some() {
        return Err(Refusal::new(
            Rule::BarrierAggregates,
            expr,
            "FILTER clauses are not allowed in released aggregates",
        )
        .hint("move the condition to WHERE, or GROUP BY it so each subgroup meets k on its own"));
    }
    if !params.order_by.is_empty() {
        return Err(Refusal::new(
            Rule::BarrierAggregates,
            expr,
            "ordered aggregates are not allowed",
        ));
    }
    let args = &params.args;
    if args.len() > 1 {
        return Err(Refusal::new(
            Rule::BarrierAggregates,
            expr,
            format!(
                "{} takes one argument here: several would hide which values are counted",
                name.to_uppercase()
            ),
        ));
    }
    let single_pid = match args.as_slice() {
        [arg] => as_pid_column(arg, pids).is_some(),
        _ => false,
    };
    match (name.as_str(), params.distinct) {
        ("count", true) if single_pid => return Ok(AggregateKind::CountDistinctPid),
        ("count", true) => {
            return Err(Refusal::new(Rule::BarrierAggregates, expr, "COUNT(DISTINCT …) is allowed only over pid")
                .hint("distinct counts of other values cannot be added across sites; GROUP BY the value and COUNT(DISTINCT pid)"));
        }
        (_, true) => {
            return Err(Refusal::new(
                Rule::BarrierAggregates,
                expr,
                "DISTINCT is allowed only in COUNT(DISTINCT pid)",
            ));
        }
        (_, false) if single_pid => {
            return Err(Refusal::new(
                Rule::PidUse,
                expr,
                "pid may be aggregated only as COUNT(DISTINCT pid)",
            )
            .hint("COUNT(DISTINCT pid) counts patients"));
        }
        _ => {}
    }
    for arg in args {
        check_scalar(arg, pids, schema, Place::Below)?;
        check_plain(expr, below.values.of_expr(arg, schema))?;
    }
    match name.as_str() {
        "count" => Ok(AggregateKind::Count),
        "sum" | "avg" => {
            let numeric = args
                .first()
                .and_then(|a| a.get_type(schema).ok())
                .is_some_and(|t| t.is_numeric());
            if !numeric {
                return Err(Refusal::new(
                    Rule::BarrierAggregates,
                    expr,
                    format!("{} needs a numeric argument", name.to_uppercase()),
                ));
            }
            Ok(if name == "sum" {
                AggregateKind::Sum
            } else {
                AggregateKind::Avg
            })
        }
        _ => Err(Refusal::new(
            Rule::BarrierAggregates,
            expr,
            "is not a released aggregate",
        )),
    }
}

/// Rule 4's plain values: the argument of a released aggregate, traced through every
/// subquery, is plain and bounded (see [`crate::values`]).
fn check_plain(aggregate: &Expr, value: Value) -> Result<(), Refusal> {
    match value {
        Value::Derived(why) => Err(Refusal::new(
            Rule::BarrierAggregates,
            aggregate,
            format!(
                "its argument is {why}: a value that flows into a released aggregate must stay plain (whole-number columns combined with +, -, and * by a whole number)"
            ),
        )
        .hint("GROUP BY the condition or the computed value instead, so that each subgroup meets k on its own; scale a released total outside the aggregate, e.g. AVG(x) / 12.0")),
        Value::Plain { bound } if bound.is_nan() || bound > values::MAX_MAGNITUDE => Err(Refusal::new(
            Rule::BarrierAggregates,
            aggregate,
            "its argument can exceed 2^32 in magnitude on one row, where a sum could overflow",
        )
        .hint("scale the released total instead, e.g. SUM(x) * 1000")),
        Value::Plain { .. } => Ok(()),
    }
}

/// What validation knows of a plan node's output below the barrier.
#[derive(Debug, Clone, Default)]
struct Below {
    /// Rule 3: the pid classes.
    pids: PidSet,
    /// Rule 4: which output columns hold plain values.
    values: Values,
}

/// Rules 1-5 below the barrier; returns what the plan's output holds.
fn check_below(plan: &LogicalPlan, report: &mut ValidationReport) -> Result<Below, Refusal> {
    match plan {
        LogicalPlan::TableScan(scan) => {
            let table = scan.table_name.table();
            if scan.table_name.schema().is_some_and(|s| s != "public")
                || !allowlist::TABLES.contains(&table)
            {
                return Err(Refusal::new(
                    Rule::OneQuery,
                    format!("table {}", scan.table_name),
                    "is not one of the registered tables",
                )
                .hint(format!("the tables are: {}", allowlist::TABLES.join(", "))));
            }
            if !scan.filters.is_empty() || scan.fetch.is_some() {
                return Err(Refusal::new(
                    Rule::AggregationBarrier,
                    format!("table {}", scan.table_name),
                    "has an unexpected pushed-down filter or limit",
                ));
            }
            report.tables.insert(table.to_string());
            let pid = scan
                .projected_schema
                .columns()
                .into_iter()
                .find(|c| c.name == "pid");
            let pids = match pid {
                Some(pid) if schema::PATIENT_TABLES.contains(&table) => {
                    PidSet::of_patient_scan(pid)
                }
                _ => PidSet::default(),
            };
            Ok(Below {
                pids,
                values: Values::of_scan(&scan.projected_schema),
            })
        }
        LogicalPlan::SubqueryAlias(alias) => {
            let inner = check_below(&alias.input, report)?;
            let pairs = positional_pairs(&alias.input, &alias.schema);
            Ok(Below {
                pids: inner
                    .pids
                    .project(&pairs, || format!("subquery {}", alias.alias))?,
                values: inner.values.renamed(&pairs),
            })
        }
        LogicalPlan::Projection(projection) => {
            let inner = check_below(&projection.input, report)?;
            let input_schema = projection.input.schema();
            inner.pids.check_one_class(|| "a SELECT list".to_string())?;
            let mut pairs = Vec::new();
            let mut outputs = Vec::new();
            for (index, expr) in projection.expr.iter().enumerate() {
                let (qualifier, field) = projection.schema.qualified_field(index);
                let output = Column::new(qualifier.cloned(), field.name());
                outputs.push((output.clone(), inner.values.of_expr(expr, input_schema)));
                if let Some(input) = as_pid_column(expr, &inner.pids) {
                    pairs.push((input.clone(), output));
                    continue;
                }
                check_scalar(expr, &inner.pids, input_schema, Place::Below)?;
            }
            Ok(Below {
                pids: inner
                    .pids
                    .project(&pairs, || selected_part(&projection.expr))?,
                values: Values::from_outputs(outputs),
            })
        }
        LogicalPlan::Filter(filter) => {
            let mut inner = match filter.input.as_ref() {
                LogicalPlan::Join(join) => check_join(join, report, &conjuncts(&filter.predicate))?,
                other => check_below(other, report)?,
            };
            for (a, b) in check_predicate(&filter.predicate, &inner.pids, filter.input.schema())? {
                inner.pids.merge(&a, &b);
            }
            Ok(inner)
        }
        LogicalPlan::Join(join) => check_join(join, report, &[]),
        LogicalPlan::Aggregate(aggregate) => check_per_patient(aggregate, report),
        LogicalPlan::Distinct(Distinct::All(input)) => {
            let inner = check_below(input, report)?;
            inner.pids.check_one_class(|| "DISTINCT".to_string())?;
            if !has_pid(input.schema(), &inner.pids) {
                return Err(Refusal::new(
                    Rule::AggregationBarrier,
                    "DISTINCT",
                    "below the aggregation, DISTINCT must keep pid (one row per patient)",
                ));
            }
            Ok(inner)
        }
        LogicalPlan::Distinct(Distinct::On(_)) => Err(distinct_on_refusal()),
        other => Err(refuse_node(other, false)),
    }
}

fn distinct_on_refusal() -> Refusal {
    Refusal::new(
        Rule::AggregationBarrier,
        "DISTINCT ON",
        "picks one row per key by an order: it releases or selects individual rows",
    )
    .hint("GROUP BY the columns and COUNT(DISTINCT pid)")
}

fn selected_part(exprs: &[Expr]) -> String {
    let list = exprs
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ");
    format!("SELECT {list}")
}

/// A join's sides, conditions and the WHERE conjuncts above it (`inherited`: a join
/// written as `FROM a, b WHERE a.pid = b.pid` is planned as a cross join under a filter).
fn check_join(
    join: &Join,
    report: &mut ValidationReport,
    inherited: &[&Expr],
) -> Result<Below, Refusal> {
    if !matches!(
        join.join_type,
        JoinType::Inner | JoinType::Left | JoinType::Right | JoinType::Full
    ) {
        return Err(Refusal::new(
            Rule::AggregationBarrier,
            format!("{} join", join.join_type),
            "only inner and outer joins are allowed",
        )
        .hint("subqueries in expressions (IN, EXISTS) are refused too: join the table instead"));
    }
    let left = check_join_input(&join.left, report, inherited)?;
    let right = check_join_input(&join.right, report, inherited)?;
    let mut pids = left.pids.union(&right.pids);
    let (left_schema, right_schema) = (join.left.schema(), join.right.schema());
    let mut conditions: Vec<&Expr> = Vec::new();
    for (l, r) in &join.on {
        let (lp, rp) = (
            as_pid_column(l, &pids).is_some(),
            as_pid_column(r, &pids).is_some(),
        );
        if lp != rp {
            return Err(Refusal::new(
                Rule::PidUse,
                format!("{l} = {r}"),
                "pid may be joined only to another pid",
            ));
        }
        if !lp {
            check_scalar(l, &pids, left_schema, Place::Below)?;
            check_scalar(r, &pids, right_schema, Place::Below)?;
        }
    }
    let mut equal: Vec<(Column, Column)> = join
        .on
        .iter()
        .filter_map(|(l, r)| {
            Some((
                as_pid_column(l, &pids)?.clone(),
                as_pid_column(r, &pids)?.clone(),
            ))
        })
        .collect();
    if let Some(filter) = &join.filter {
        conditions = conjuncts(filter);
        for (a, b) in check_predicate(filter, &pids, &join.schema)? {
            equal.push((a, b));
        }
    }
    let spans = |expr: &Expr| spanning_equality(expr, left_schema, right_schema).is_some();
    let joined_on_something = !join.on.is_empty()
        || conditions.iter().any(|c| spans(c))
        || inherited.iter().any(|c| spans(c));
    if pids.reads_patients() && !joined_on_something {
        return Err(Refusal::new(
            Rule::PidUse,
            format!("{} join", join.join_type),
            "is a cross join involving a patient table: every row of one side meets every row of the other",
        )
        .hint("join patient tables on pid (ON a.pid = b.pid) and reference tables on their codes"));
    }
    let (left_reference, right_reference) =
        (!left.pids.reads_patients(), !right.pids.reads_patients());
    if left_reference || right_reference {
        let on_pairs: Vec<Expr> = join
            .on
            .iter()
            .map(|(l, r)| l.clone().eq(r.clone()))
            .collect();
        let on_a_code = on_pairs
            .iter()
            .chain(conditions.iter().copied())
            .chain(inherited.iter().copied())
            .any(|e| {
                code_equality(e, left_schema, right_schema).is_some_and(|(l, r)| {
                    (!left_reference || is_reference_key(l))
                        && (!right_reference || is_reference_key(r))
                })
            });
        if !on_a_code {
            return Err(Refusal::new(
                Rule::ResourceLimits,
                format!("{} join", join.join_type),
                "joins a reference table on something other than its codes: the rows it adds could depend on one patient's value, and so could the time taken",
            )
            .hint(format!(
                "join reference tables on one of their codes, column to column ({})",
                allowlist::REFERENCE_KEYS.join(", ")
            )));
        }
    }
    if join.join_type == JoinType::Full && PidSet::both_read_patients(&left.pids, &right.pids) {
        return Err(Refusal::new(
            Rule::PidUse,
            "FULL join",
            "of two patient tables leaves rows where either patient is missing, so no one pid counts every row",
        )
        .hint("use an inner or a LEFT join on pid"));
    }
    // Pid equalities merge classes only across the join's two inputs. An inner join
    // holds each of them on every row; an outer join only attaches the nullable side to
    // the preserved side, whose pid is the one counted.
    let mut across = Vec::new();
    for (a, b) in &equal {
        let a_left = left_schema.has_column(a);
        let b_left = left_schema.has_column(b);
        if a_left == b_left {
            continue;
        }
        let (on_left, on_right) = if a_left { (a, b) } else { (b, a) };
        across.push(match join.join_type {
            JoinType::Right => (on_right.clone(), on_left.clone()),
            _ => (on_left.clone(), on_right.clone()),
        });
    }
    match join.join_type {
        JoinType::Inner => {
            for (a, b) in &across {
                pids.merge(a, b);
            }
        }
        _ => pids.attach_outer(&across),
    }
    Ok(Below {
        pids,
        values: left.values.union(right.values),
    })
}

/// One input of a join: a join below it sees the same WHERE conjuncts.
fn check_join_input(
    input: &LogicalPlan,
    report: &mut ValidationReport,
    inherited: &[&Expr],
) -> Result<Below, Refusal> {
    match input {
        LogicalPlan::Join(inner) => check_join(inner, report, inherited),
        other => check_below(other, report),
    }
}

/// `a = b` with `a`'s columns all from one input and `b`'s all from the other.
fn spanning_equality<'a>(
    expr: &'a Expr,
    left: &DFSchema,
    right: &DFSchema,
) -> Option<(&'a Expr, &'a Expr)> {
    let Expr::BinaryExpr(BinaryExpr {
        left: a,
        op: Operator::Eq,
        right: b,
    }) = expr
    else {
        return None;
    };
    let all_in = |e: &Expr, schema: &DFSchema| {
        let columns = e.column_refs();
        !columns.is_empty() && columns.iter().all(|c| schema.has_column(c))
    };
    if all_in(a, left) && all_in(b, right) || all_in(a, right) && all_in(b, left) {
        Some((a, b))
    } else {
        None
    }
}

/// `a = b` between two plain columns, one from each input, as (left column, right
/// column).
fn code_equality<'a>(
    expr: &'a Expr,
    left: &DFSchema,
    right: &DFSchema,
) -> Option<(&'a Column, &'a Column)> {
    let (a, b) = spanning_equality(expr, left, right)?;
    let (Expr::Column(a), Expr::Column(b)) = (unalias(a), unalias(b)) else {
        return None;
    };
    if left.has_column(a) {
        Some((a, b))
    } else {
        Some((b, a))
    }
}

fn is_reference_key(column: &Column) -> bool {
    allowlist::REFERENCE_KEYS.contains(&column.name.as_str())
}

/// Input and output columns of a node that renames its input's columns by position.
fn positional_pairs(input: &LogicalPlan, schema: &DFSchema) -> Vec<(Column, Column)> {
    input
        .schema()
        .columns()
        .into_iter()
        .zip(schema.columns())
        .collect()
}

/// Rule 2 below the barrier: an inner aggregation must be per patient.
fn check_per_patient(
    aggregate: &Aggregate,
    report: &mut ValidationReport,
) -> Result<Below, Refusal> {
    let inner = check_below(&aggregate.input, report)?;
    let schema = aggregate.input.schema();
    inner
        .pids
        .check_one_class(|| "an inner aggregation".to_string())?;
    let mut pairs = Vec::new();
    let mut outputs = Vec::new();
    for (index, group) in aggregate.group_expr.iter().enumerate() {
        if let Expr::GroupingSet(_) = group {
            return Err(grouping_sets_refusal(group));
        }
        let (qualifier, field) = aggregate.schema.qualified_field(index);
        let output = Column::new(qualifier.cloned(), field.name());
        outputs.push((output.clone(), inner.values.of_expr(group, schema)));
        if let Some(input) = as_pid_column(group, &inner.pids) {
            pairs.push((input.clone(), output));
        } else {
            check_scalar(group, &inner.pids, schema, Place::Below)?;
        }
    }
    if pairs.is_empty() {
        let part = aggregate
            .group_expr
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(", ");
        return Err(Refusal::new(
            Rule::AggregationBarrier,
            if part.is_empty() {
                "an inner aggregation".to_string()
            } else {
                format!("GROUP BY {part}")
            },
            "an aggregation below the released one must group by pid (one row per patient)",
        )
        .hint("aggregate once, at the top, or GROUP BY pid in the subquery"));
    }
    let pids = inner
        .pids
        .project(&pairs, || "a per-patient GROUP BY".to_string())?;
    let groups = aggregate.group_expr.len();
    for (index, expr) in aggregate.aggr_expr.iter().enumerate() {
        let Expr::AggregateFunction(AggregateFunction { func, params }) = unalias(expr) else {
            return Err(Refusal::new(
                Rule::AggregationBarrier,
                expr,
                "is not an aggregate function",
            ));
        };
        let name = func.name().to_lowercase();
        if !allowlist::PER_PATIENT_AGGREGATES.contains(&name.as_str()) {
            return Err(Refusal::new(
                Rule::AllowedFunctions,
                expr,
                format!(
                    "{} is not allowed in a per-patient aggregation",
                    name.to_uppercase()
                ),
            ));
        }
        if params.filter.is_some() || !params.order_by.is_empty() {
            return Err(Refusal::new(
                Rule::AllowedFunctions,
                expr,
                "FILTER and ORDER BY inside aggregates are not allowed",
            ));
        }
        for arg in &params.args {
            check_scalar(arg, &inner.pids, schema, Place::Below)?;
        }
        let (qualifier, field) = aggregate.schema.qualified_field(groups + index);
        outputs.push((
            Column::new(qualifier.cloned(), field.name()),
            inner.values.of_per_patient(expr, schema),
        ));
    }
    Ok(Below {
        pids,
        values: Values::from_outputs(outputs),
    })
}

/// A WHERE or join predicate: its conjuncts may equate two pid columns (an equi-join
/// written in WHERE); otherwise pid may not appear.
/// Returns the pid equalities among the predicate's conjuncts.
fn check_predicate(
    predicate: &Expr,
    pids: &PidSet,
    schema: &DFSchema,
) -> Result<Vec<(Column, Column)>, Refusal> {
    let mut equal = Vec::new();
    for conjunct in conjuncts(predicate) {
        if let Expr::BinaryExpr(BinaryExpr {
            left,
            op: Operator::Eq,
            right,
        }) = conjunct
            && let (Some(a), Some(b)) = (as_pid_column(left, pids), as_pid_column(right, pids))
        {
            equal.push((a.clone(), b.clone()));
            continue;
        }
        check_scalar(conjunct, pids, schema, Place::Below)?;
    }
    Ok(equal)
}

fn conjuncts(expr: &Expr) -> Vec<&Expr> {
    match expr {
        Expr::BinaryExpr(BinaryExpr {
            left,
            op: Operator::And,
            right,
        }) => {
            let mut out = conjuncts(left);
            out.extend(conjuncts(right));
            out
        }
        other => vec![other],
    }
}

/// Where an expression is evaluated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Place {
    /// On patient rows at a site: may fail on a value, so failure-prone forms are refused.
    Below,
    /// On merged network totals at the coordinator.
    Above,
}

fn check_above(expr: &Expr) -> Result<(), Refusal> {
    check_scalar(expr, &PidSet::default(), &DFSchema::empty(), Place::Above)
}

fn is_text(data_type: &DataType) -> bool {
    matches!(
        data_type,
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View
    )
}

fn is_interval(data_type: &DataType) -> bool {
    matches!(data_type, DataType::Interval(_) | DataType::Duration(_))
}

/// A literal divisor that cannot fail: not zero, and not -1 (the smallest integer divided
/// by -1 overflows).
fn is_safe_divisor(expr: &Expr) -> bool {
    is_nonzero_literal(expr) && values::literal_number(expr) != Some(-1.0)
}

fn is_nonzero_literal(expr: &Expr) -> bool {
    match unalias(expr) {
        Expr::Literal(value, _) => {
            !value.is_null()
                && datafusion::common::ScalarValue::new_zero(&value.data_type())
                    .is_ok_and(|zero| &zero != value)
        }
        Expr::Cast(cast) => is_nonzero_literal(&cast.expr),
        Expr::TryCast(cast) => is_nonzero_literal(&cast.expr),
        _ => false,
    }
}

/// Rules 3, 5 and 7 on one scalar expression and all its sub-expressions.
fn check_scalar(
    expr: &Expr,
    pids: &PidSet,
    schema: &DFSchema,
    place: Place,
) -> Result<(), Refusal> {
    let mut refusal: Option<Refusal> = None;
    let visit = expr.apply(|e| {
        let verdict = check_scalar_node(e, pids, schema, place);
        match verdict {
            Ok(()) => Ok(TreeNodeRecursion::Continue),
            Err(r) => {
                refusal = Some(r);
                Ok(TreeNodeRecursion::Stop)
            }
        }
    });
    if let Err(e) = visit {
        return Err(Refusal::new(Rule::OneQuery, expr, e.strip_backtrace()));
    }
    refusal.map_or(Ok(()), Err)
}

fn check_scalar_node(
    e: &Expr,
    pids: &PidSet,
    schema: &DFSchema,
    place: Place,
) -> Result<(), Refusal> {
    match e {
        Expr::Column(column) => {
            if place == Place::Below && is_pid(column, pids) {
                return Err(Refusal::new(Rule::PidUse, column, "pid may appear only in equi-joins, COUNT(DISTINCT pid) and per-patient grouping")
                    .hint("pid is a pseudonym: nothing may be computed from it"));
            }
            Ok(())
        }
        Expr::Literal(value, _) if place == Place::Below && is_interval(&value.data_type()) => {
            Err(Refusal::new(
                Rule::NoDataInErrors,
                e,
                "date arithmetic with intervals can overflow on one patient's date, and the failure would tell",
            )
            .hint("compare dates with date literals (DATE '2020-01-01') or use date_part"))
        }
        Expr::Literal(..)
        | Expr::Alias(_)
        | Expr::Not(_)
        | Expr::IsNotNull(_)
        | Expr::IsNull(_)
        | Expr::IsTrue(_)
        | Expr::IsFalse(_)
        | Expr::IsUnknown(_)
        | Expr::IsNotTrue(_)
        | Expr::IsNotFalse(_)
        | Expr::IsNotUnknown(_)
        | Expr::Negative(_)
        | Expr::Between(_)
        | Expr::Case(_)
        | Expr::TryCast(_)
        | Expr::InList(_) => Ok(()),
        Expr::BinaryExpr(BinaryExpr { op, right, .. }) => check_operator(e, *op, right, place),
        Expr::Like(like) => {
            if matches!(unalias(&like.pattern), Expr::Literal(..)) {
                Ok(())
            } else {
                Err(Refusal::new(
                    Rule::AllowedFunctions,
                    e,
                    "LIKE patterns must be written in the query",
                ))
            }
        }
        Expr::SimilarTo(_) => Err(Refusal::new(
            Rule::AllowedFunctions,
            e,
            "SIMILAR TO (regular expressions) is not allowed",
        )
        .hint("use LIKE with a literal pattern")),
        Expr::Cast(cast) => {
            if place == Place::Below {
                let source = cast.expr.get_type(schema).unwrap_or(DataType::Null);
                let target = cast.field.data_type();
                // A literal (DATE '2020-01-01') casts the same way whatever the data.
                let from_data = !cast.expr.column_refs().is_empty();
                if from_data && is_text(&source) && !is_text(target) {
                    return Err(Refusal::new(Rule::NoDataInErrors, e, "a cast from text can fail on one patient's value, and the failure would tell")
                        .hint("use TRY_CAST, which gives NULL instead of failing"));
                }
            }
            Ok(())
        }
        Expr::ScalarFunction(function) => {
            let name = function.name().to_lowercase();
            if allowlist::UNIT_FIRST.contains(&name.as_str())
                && !matches!(function.args.first().map(unalias), Some(Expr::Literal(..)))
            {
                Err(Refusal::new(
                    Rule::AllowedFunctions,
                    e,
                    format!("the unit of {name} must be written in the query"),
                )
                .hint(format!("e.g. {name}('year', …)")))
            } else if allowlist::is_allowed_scalar(&name) {
                Ok(())
            } else {
                Err(Refusal::new(
                    Rule::AllowedFunctions,
                    e,
                    format!("{name} is not on the allowlist of scalar functions"),
                )
                .hint(format!(
                    "allowed: {}",
                    allowlist::SCALAR_FUNCTIONS.join(", ")
                )))
            }
        }
        Expr::AggregateFunction(_) => Err(Refusal::new(
            Rule::AggregationBarrier,
            e,
            "an aggregate here would not be the single aggregation at the top",
        )),
        Expr::WindowFunction(_) => Err(Refusal::new(
            Rule::AllowedFunctions,
            e,
            "window functions are not allowed",
        )
        .hint("GROUP BY the partition columns instead")),
        Expr::GroupingSet(_) => Err(Refusal::new(
            Rule::AllowedFunctions,
            e,
            "ROLLUP, CUBE and GROUPING SETS are not allowed",
        )),
        Expr::Exists(_)
        | Expr::InSubquery(_)
        | Expr::ScalarSubquery(_)
        | Expr::SetComparison(_) => Err(Refusal::new(
            Rule::AllowedFunctions,
            e,
            "subqueries in expressions (scalar, IN, EXISTS) are not allowed",
        )
        .hint("JOIN the table instead")),
        Expr::Unnest(_) => Err(Refusal::new(
            Rule::AllowedFunctions,
            e,
            "UNNEST is not allowed",
        )),
        _ => Err(Refusal::new(
            Rule::AllowedFunctions,
            e,
            "this kind of expression is not allowed",
        )),
    }
}

fn check_operator(e: &Expr, op: Operator, right: &Expr, place: Place) -> Result<(), Refusal> {
    use Operator::*;
    match op {
        Eq | NotEq | Lt | LtEq | Gt | GtEq | Plus | Minus | Multiply | And | Or
        | IsDistinctFrom | IsNotDistinctFrom | StringConcat => Ok(()),
        Divide | Modulo => {
            if place == Place::Above || is_safe_divisor(right) {
                Ok(())
            } else {
                Err(Refusal::new(Rule::NoDataInErrors, e, "dividing by a value can fail on one patient's zero (and the smallest integer by -1 overflows), and the failure would tell")
                    .hint("divide by a constant other than 0 and -1 (negate instead), or divide the released totals (e.g. SUM(a) / SUM(b))"))
            }
        }
        other => Err(Refusal::new(
            Rule::AllowedFunctions,
            e,
            format!("the operator {other} is not allowed"),
        )),
    }
}

/// Columns referenced anywhere in the plan, for the steward's report.
fn collect_columns(plan: &LogicalPlan, report: &mut ValidationReport) {
    let _ = plan.apply(|node| {
        if let LogicalPlan::TableScan(_) = node {
            return Ok(TreeNodeRecursion::Continue);
        }
        for expr in node.expressions() {
            for column in expr.column_refs() {
                if !column.name.contains('(') {
                    report.columns.insert(column.flat_name());
                }
            }
        }
        Ok(TreeNodeRecursion::Continue)
    });
}
