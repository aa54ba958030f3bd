//! Tables for the terminal, drawn the same way by every command.

use comfy_table::presets::UTF8_FULL_CONDENSED;
use comfy_table::{CellAlignment, Table};

/// How a listing command prints: a table for people, or JSON for scripts (one array of
/// objects, raw values, times in seconds since the Unix epoch).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum ListFormat {
    /// A table for the terminal.
    Table,
    /// JSON, for scripts.
    Json,
}

/// Prints `value` as pretty JSON on stdout.
pub(crate) fn print_json(value: &serde_json::Value) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

/// A table with `header`; columns whose header is in `numeric` are right-aligned.
pub(crate) fn new_table(header: &[&str], numeric: &[&str]) -> Table {
    let mut table = Table::new();
    table
        .load_preset(UTF8_FULL_CONDENSED)
        .set_header(header.to_vec());
    for (index, name) in header.iter().enumerate() {
        if numeric.contains(name)
            && let Some(column) = table.column_mut(index)
        {
            column.set_cell_alignment(CellAlignment::Right);
        }
    }
    table
}

/// Arrow record batches (of `schema`) as a terminal table; floats with up to 3 decimals.
pub(crate) fn from_batches(
    schema: &arrow::datatypes::SchemaRef,
    batches: &[arrow::array::RecordBatch],
) -> anyhow::Result<Table> {
    use arrow::util::display::{ArrayFormatter, FormatOptions};
    let shown_names: Vec<String> = schema
        .fields()
        .iter()
        .map(|f| ern_queries::shown::shown(f.name()))
        .collect();
    let names: Vec<&str> = shown_names.iter().map(String::as_str).collect();
    let numeric: Vec<&str> = schema
        .fields()
        .iter()
        .zip(&shown_names)
        .filter(|(f, _)| f.data_type().is_numeric())
        .map(|(_, name)| name.as_str())
        .collect();
    let mut table = new_table(&names, &numeric);
    let options = FormatOptions::default().with_null("NULL");
    for batch in batches {
        let rounded: Vec<arrow::array::ArrayRef> = batch
            .columns()
            .iter()
            .map(|c| match c.data_type() {
                arrow::datatypes::DataType::Float64 => {
                    let values = c.as_any().downcast_ref::<arrow::array::Float64Array>();
                    values.map_or_else(
                        || std::sync::Arc::clone(c),
                        |v| {
                            std::sync::Arc::new(arrow::compute::kernels::arity::unary::<
                                _,
                                _,
                                arrow::datatypes::Float64Type,
                            >(v, |x| {
                                (x * 1000.0).round() / 1000.0
                            })) as arrow::array::ArrayRef
                        },
                    )
                }
                _ => std::sync::Arc::clone(c),
            })
            .collect();
        let formatters = rounded
            .iter()
            .map(|c| ArrayFormatter::try_new(c.as_ref(), &options))
            .collect::<Result<Vec<_>, _>>()?;
        for row in 0..batch.num_rows() {
            table.add_row(
                formatters
                    .iter()
                    .map(|f| ern_queries::shown::shown(&f.value(row).to_string()))
                    .collect::<Vec<_>>(),
            );
        }
    }
    Ok(table)
}
