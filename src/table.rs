//! Tables for the terminal, drawn the same way by every command.

use comfy_table::presets::UTF8_FULL_CONDENSED;
use comfy_table::{CellAlignment, Table};

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
