//! Rule 7, no data in errors: a refused or failed question tells the researcher the rule,
//! never a value, and no expression may fail on one patient's value, because whether a
//! question fails at a site is itself an answer (red team: `sqrt` of a negative, a cast
//! that overflows, a division by a value that is zero for one patient).
//!
//! Validation refuses the forms that could fail on data: casts from text to anything
//! else, date arithmetic with intervals, division or remainder by anything but a safe
//! literal. The node makes every allowlisted function total (`ern_node::total`), runs
//! every cast as TRY_CAST, and reports a failure with a reference id into its audit log.

use arrow::datatypes::DataType;
use datafusion::common::DFSchema;
use datafusion::logical_expr::expr::Cast;
use datafusion::logical_expr::{Expr, ExprSchemable};

use crate::rules::barrier_aggregates::literal_number;
use crate::rules::{Refusal, Rule};
use crate::validate::unalias;

/// A cast evaluated on patient rows: from text, it could fail on one value.
pub(crate) fn check_cast(part: &Expr, cast: &Cast, schema: &DFSchema) -> Result<(), Refusal> {
    let source = cast.expr.get_type(schema).unwrap_or(DataType::Null);
    let target = cast.field.data_type();
    // A literal (DATE '2020-01-01') casts the same way whatever the data.
    let from_data = !cast.expr.column_refs().is_empty();
    if from_data && is_text(&source) && !is_text(target) {
        return Err(Refusal::new(
            Rule::NoDataInErrors,
            part,
            "a cast from text can fail on one patient's value, and the failure would tell",
        )
        .hint("use TRY_CAST, which gives NULL instead of failing"));
    }
    Ok(())
}

/// Date arithmetic with an interval.
pub(crate) fn interval_arithmetic(part: &Expr) -> Refusal {
    Refusal::new(
        Rule::NoDataInErrors,
        part,
        "date arithmetic with intervals can overflow on one patient's date, and the failure would tell",
    )
    .hint("compare dates with date literals (DATE '2020-01-01') or use date_part")
}

/// Division or remainder by something that could be zero (or -1) for one patient.
pub(crate) fn unsafe_divisor(part: &Expr) -> Refusal {
    Refusal::new(Rule::NoDataInErrors, part, "dividing by a value can fail on one patient's zero (and the smallest integer by -1 overflows), and the failure would tell")
        .hint("divide by a constant other than 0 and -1 (negate instead), or divide the released totals (e.g. SUM(a) / SUM(b))")
}

fn is_text(data_type: &DataType) -> bool {
    matches!(
        data_type,
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View
    )
}

pub(crate) fn is_interval(data_type: &DataType) -> bool {
    matches!(data_type, DataType::Interval(_) | DataType::Duration(_))
}

/// A literal divisor that cannot fail: not zero, and not -1 (the smallest integer divided
/// by -1 overflows).
pub(crate) fn is_safe_divisor(expr: &Expr) -> bool {
    is_nonzero_literal(expr) && literal_number(expr) != Some(-1.0)
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
