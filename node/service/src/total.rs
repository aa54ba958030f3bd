//! Functions that cannot fail on data (rule 5).
//!
//! A query that fails only when some patient has a certain value is an oracle: one bit
//! per question, about whoever the WHERE clause singled out. `sqrt` of a negative,
//! `abs` of the smallest integer, `make_date` with a month computed from data, `substr`
//! with a negative length, a numeric cast that overflows: DataFusion reports each as an
//! error. On the node every allowlisted scalar function is therefore wrapped in
//! [`TotalFunction`], which gives NULL where the function would fail, and every cast in a
//! site plan becomes a `TRY_CAST` after type coercion ([`total_plan`]), so the casts
//! DataFusion inserts itself (comparing text with a number, say) cannot fail either.
//!
//! The wrapper costs nothing while a function succeeds: only a batch on which the
//! vectorised call fails is evaluated again row by row.

use std::sync::Arc;

use arrow::array::ArrayRef;
use arrow::datatypes::{DataType, FieldRef};
use datafusion::common::plan_err;
use datafusion::common::tree_node::{Transformed, TreeNode};
use datafusion::common::{ExprSchema, Result, ScalarValue};
use datafusion::execution::session_state::SessionState;
use datafusion::logical_expr::expr::{ScalarFunction, TryCast};
use datafusion::logical_expr::expr_rewriter::NamePreserver;
use datafusion::logical_expr::simplify::{ExprSimplifyResult, SimplifyContext};
use datafusion::logical_expr::{
    ColumnarValue, Documentation, Expr, LogicalPlan, ReturnFieldArgs, ScalarFunctionArgs,
    ScalarUDF, ScalarUDFImpl, Signature,
};

/// An allowlisted scalar function made total: where the wrapped function fails on a row,
/// that row's result is NULL.
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct TotalFunction {
    inner: Arc<ScalarUDF>,
}

impl TotalFunction {
    /// Wraps `inner`.
    pub fn wrap(inner: Arc<ScalarUDF>) -> ScalarUDF {
        ScalarUDF::new_from_impl(TotalFunction { inner })
    }

    /// Evaluates one row at a time, NULL where the wrapped function fails.
    fn row_by_row(&self, args: &ScalarFunctionArgs) -> Result<ColumnarValue> {
        let null = ScalarValue::try_new_null(args.return_field.data_type())?;
        let all_scalar = args
            .args
            .iter()
            .all(|arg| matches!(arg, ColumnarValue::Scalar(_)));
        let rows = if all_scalar { 1 } else { args.number_rows };
        let mut values = Vec::with_capacity(rows);
        for row in 0..rows {
            let row_args = args
                .args
                .iter()
                .map(|arg| match arg {
                    ColumnarValue::Array(array) => {
                        ScalarValue::try_from_array(array, row).map(ColumnarValue::Scalar)
                    }
                    ColumnarValue::Scalar(value) => Ok(ColumnarValue::Scalar(value.clone())),
                })
                .collect::<Result<Vec<_>>>()?;
            let one_row = ScalarFunctionArgs {
                args: row_args,
                arg_fields: args.arg_fields.clone(),
                number_rows: 1,
                return_field: Arc::clone(&args.return_field),
                config_options: Arc::clone(&args.config_options),
            };
            let value = match self.inner.invoke_with_args(one_row) {
                Ok(ColumnarValue::Scalar(value)) => value,
                Ok(ColumnarValue::Array(array)) if array.len() == 1 => {
                    ScalarValue::try_from_array(&array, 0)?
                }
                Ok(ColumnarValue::Array(_)) | Err(_) => null.clone(),
            };
            values.push(value);
        }
        if all_scalar {
            return Ok(ColumnarValue::Scalar(values.pop().unwrap_or(null)));
        }
        let array: ArrayRef = if values.is_empty() {
            arrow::array::new_empty_array(args.return_field.data_type())
        } else {
            ScalarValue::iter_to_array(values)?
        };
        Ok(ColumnarValue::Array(array))
    }
}

impl ScalarUDFImpl for TotalFunction {
    fn name(&self) -> &str {
        self.inner.name()
    }

    fn aliases(&self) -> &[String] {
        self.inner.aliases()
    }

    fn schema_name(&self, args: &[Expr]) -> Result<String> {
        self.inner.inner().schema_name(args)
    }

    fn signature(&self) -> &Signature {
        self.inner.signature()
    }

    fn return_type(&self, arg_types: &[DataType]) -> Result<DataType> {
        self.inner.return_type(arg_types)
    }

    fn return_field_from_args(&self, args: ReturnFieldArgs) -> Result<FieldRef> {
        self.inner.return_field_from_args(args)
    }

    fn is_nullable(&self, _args: &[Expr], _schema: &dyn ExprSchema) -> bool {
        true
    }

    fn is_strict(&self) -> bool {
        self.inner.inner().is_strict()
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let retry = ScalarFunctionArgs {
            args: args.args.clone(),
            arg_fields: args.arg_fields.clone(),
            number_rows: args.number_rows,
            return_field: Arc::clone(&args.return_field),
            config_options: Arc::clone(&args.config_options),
        };
        match self.inner.invoke_with_args(args) {
            Ok(value) => Ok(value),
            Err(_) => self.row_by_row(&retry),
        }
    }

    fn simplify(&self, args: Vec<Expr>, info: &SimplifyContext) -> Result<ExprSimplifyResult> {
        // Some functions exist only to be rewritten (COALESCE becomes CASE, CURRENT_DATE
        // a literal); what they become is total too.
        self.inner.simplify(args, info)
    }

    fn short_circuits(&self) -> bool {
        self.inner.short_circuits()
    }

    fn coerce_types(&self, arg_types: &[DataType]) -> Result<Vec<DataType>> {
        self.inner.coerce_types(arg_types)
    }

    fn documentation(&self) -> Option<&Documentation> {
        self.inner.documentation()
    }
}

/// The site plan as it will run, with every cast a `TRY_CAST` and every function the
/// session's own (total) one: type coercion first (so the casts DataFusion would add are
/// there), then the rewrite.
///
/// The SQL planner builds some calls without the session's registry (`SUBSTRING(… FROM
/// …)`, `POSITION(… IN …)` go through DataFusion's expression planners), so every
/// function is looked up again by name; one the session does not have is refused. The
/// bounding's row packing ([`ern_queries::row_pack`]) is the node's own and stays.
pub fn total_plan(plan: LogicalPlan, state: &SessionState) -> Result<LogicalPlan> {
    let analyzed = state
        .analyzer()
        .execute_and_check(plan, state.config_options(), |_, _| {})?;
    analyzed
        .transform_up(|node| {
            // Each node keeps its output names (a rewritten aggregate is aliased to its old
            // name), so the nodes above still find their columns.
            let names = NamePreserver::new(&node);
            let rewritten = node.map_expressions(|expr| {
                let saved = names.save(&expr);
                expr.transform_up(|e| total_expr(e, state))
                    .map(|transformed| transformed.update_data(|e| saved.restore(e)))
            })?;
            rewritten.map_data(LogicalPlan::recompute_schema)
        })
        .map(|transformed| transformed.data)
}

/// One expression made total: a cast becomes a `TRY_CAST`, a function the session's own.
fn total_expr(expr: Expr, state: &SessionState) -> Result<Transformed<Expr>> {
    match expr {
        Expr::Cast(cast) => Ok(Transformed::yes(Expr::TryCast(TryCast::new(
            cast.expr,
            cast.field.data_type().clone(),
        )))),
        Expr::ScalarFunction(call) if ern_queries::row_pack::is_row_pack(&call.func) => {
            Ok(Transformed::no(Expr::ScalarFunction(call)))
        }
        Expr::ScalarFunction(call) => {
            let name = call.func.name();
            let Some(own) = state.scalar_functions().get(name) else {
                return plan_err!("the function {name} is not available on this node");
            };
            Ok(Transformed::yes(Expr::ScalarFunction(
                ScalarFunction::new_udf(Arc::clone(own), call.args),
            )))
        }
        other => Ok(Transformed::no(other)),
    }
}
