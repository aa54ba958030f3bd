//! Rule 3, pid use: `pid` appears only in equi-joins, in `COUNT(DISTINCT pid)` and as
//! the key of a per-patient grouping, and the patients counted are the patients whose
//! data is released.
//!
//! The node's hidden `COUNT(DISTINCT pid)` guards a group only if every row of the group
//! belongs to the patient it counts. A cross join, or a join of two patient tables on
//! anything but pid, puts two patients on one row; a projection or a per-patient grouping
//! that drops one side's pid then lets the count count one patient while the keys and
//! values come from another. So validation tracks, for every plan node, the *classes* of
//! pid columns known to be equal on every row, and how many patient-table scans each
//! class covers. Two pid columns join one class only through an equality whose two sides
//! come from opposite join inputs (or a WHERE conjunct, which holds on every row), never
//! through `b.pid = b.pid`. A plan is accepted only when exactly one class reaches the
//! barrier and it covers every patient-table scan.

use datafusion::common::{Column, DFSchema};
use datafusion::logical_expr::{Expr, JoinType};

use crate::rules::{Refusal, Rule};
use crate::validate::unalias;

/// One class of pid columns, equal on every row where they are not null.
#[derive(Debug, Clone)]
struct PidClass {
    /// The columns; the first is the one counted (never null where the class's patient
    /// table supplied the row: the preserved side of an outer join comes first).
    columns: Vec<Column>,
    /// The columns that came from the nullable side of an outer join and have not been
    /// tied down since (by an inner equality): null on the rows the join did not match,
    /// where the preserved side's data goes on. Counting such a pid would not count those
    /// rows' patients (red team round 3: `SELECT q.pid, p.sex FROM patient p LEFT JOIN
    /// patient q ON … AND <condition>` released p's rows with nobody counting them).
    outer: Vec<Column>,
    /// Patient-table scans whose rows this class identifies.
    scans: usize,
}

impl PidClass {
    fn has_total(&self) -> bool {
        self.columns.iter().any(|c| !self.outer.contains(c))
    }
}

/// The pid classes of a plan node's output.
#[derive(Debug, Clone, Default)]
pub(crate) struct PidSet {
    classes: Vec<PidClass>,
    /// Patient-table scans below the node.
    patient_scans: usize,
}

impl PidSet {
    /// The pid column of one scan of a patient table.
    pub(crate) fn of_patient_scan(pid: Column) -> PidSet {
        PidSet {
            classes: vec![PidClass {
                columns: vec![pid],
                outer: Vec::new(),
                scans: 1,
            }],
            patient_scans: 1,
        }
    }

    /// True when `column` is a pid column of some class.
    pub(crate) fn contains(&self, column: &Column) -> bool {
        self.classes
            .iter()
            .any(|class| class.columns.contains(column))
    }

    /// True when `column` is a pid that an outer join leaves null on unmatched rows.
    pub(crate) fn is_outer(&self, column: &Column) -> bool {
        self.classes
            .iter()
            .any(|class| class.outer.contains(column))
    }

    /// Every pid column.
    pub(crate) fn columns(&self) -> impl Iterator<Item = &Column> {
        self.classes.iter().flat_map(|class| class.columns.iter())
    }

    /// True when the rows below read a patient table.
    pub(crate) fn reads_patients(&self) -> bool {
        self.patient_scans > 0
    }

    /// Both inputs of a join.
    pub(crate) fn union(&self, other: &PidSet) -> PidSet {
        PidSet {
            classes: self.classes.iter().chain(&other.classes).cloned().collect(),
            patient_scans: self.patient_scans + other.patient_scans,
        }
    }

    fn class_of(&self, column: &Column) -> Option<usize> {
        self.classes
            .iter()
            .position(|class| class.columns.contains(column))
    }

    /// Records an inner equality (an inner join's condition, a WHERE conjunct): `kept`
    /// and `other` hold the same patient on every row, and neither is null on any row
    /// that remains. Their classes become one, with `kept`'s class counted.
    pub(crate) fn merge(&mut self, kept: &Column, other: &Column) {
        for class in &mut self.classes {
            class.outer.retain(|c| c != kept && c != other);
        }
        self.join_classes(kept, other);
    }

    /// Joins the classes of `kept` and `other` into `kept`'s.
    fn join_classes(&mut self, kept: &Column, other: &Column) {
        let (Some(i), Some(j)) = (self.class_of(kept), self.class_of(other)) else {
            return;
        };
        if i == j {
            return;
        }
        let moved = self.classes[j].clone();
        self.classes[i].columns.extend(moved.columns);
        self.classes[i].outer.extend(moved.outer);
        self.classes[i].scans += moved.scans;
        self.classes.remove(j);
    }

    /// Records an outer join's pid equalities, each `(preserved, nullable)`: a class of
    /// the nullable side joins the preserved class it equals, with the preserved side's
    /// pid counted. Equalities never join two preserved classes: an outer join keeps
    /// every preserved row whether or not its condition holds, so `LEFT JOIN c ON c.pid =
    /// a.pid AND c.pid = b.pid` proves nothing about `a.pid = b.pid` (red team: that
    /// once let the keys of one patient be counted as another's). A nullable class equal
    /// to two preserved classes joins neither.
    pub(crate) fn attach_outer(&mut self, equalities: &[(Column, Column)]) {
        let mut attachments: Vec<(Column, Column)> = Vec::new();
        for (preserved, nullable) in equalities {
            let Some(class) = self.class_of(nullable) else {
                continue;
            };
            let targets: Vec<usize> = equalities
                .iter()
                .filter(|(_, other)| self.class_of(other) == Some(class))
                .filter_map(|(p, _)| self.class_of(p))
                .collect();
            if targets.iter().all(|&t| Some(t) == self.class_of(preserved)) {
                attachments.push((preserved.clone(), nullable.clone()));
            }
        }
        for (preserved, nullable) in attachments {
            // Every pid of the nullable side is null where the join found no match.
            if let Some(class) = self.class_of(&nullable) {
                let nulled = self.classes[class].columns.clone();
                self.classes[class].outer = nulled;
            }
            self.join_classes(&preserved, &nullable);
        }
    }

    /// The pid columns of a node's output, given which input column each output is.
    /// A class none of whose columns reaches the output is refused: its patients' rows
    /// would go on without the pid that counts them. So is a class whose only columns to
    /// reach it are null where an outer join found no match, while the preserved side's
    /// pid is dropped: the unmatched rows would go on uncounted.
    pub(crate) fn project(
        &self,
        pairs: &[(Column, Column)],
        part: impl FnOnce() -> String,
    ) -> Result<PidSet, Refusal> {
        let mut classes = Vec::new();
        for class in &self.classes {
            let columns: Vec<Column> = class
                .columns
                .iter()
                .flat_map(|column| {
                    pairs
                        .iter()
                        .filter(move |(input, _)| input == column)
                        .map(|(_, output)| output.clone())
                })
                .collect();
            let mapped = |keep_outer: bool| -> Vec<Column> {
                class
                    .columns
                    .iter()
                    .filter(|column| class.outer.contains(column) == keep_outer)
                    .flat_map(|column| {
                        pairs
                            .iter()
                            .filter(move |(input, _)| input == column)
                            .map(|(_, output)| output.clone())
                    })
                    .collect()
            };
            let (total, outer) = (mapped(false), mapped(true));
            if columns.is_empty() {
                return Err(Refusal::new(
                    Rule::PidUse,
                    part(),
                    "drops the pid of a patient table whose rows go on: the patients counted would not be the patients released",
                )
                .hint("keep the pid of every patient table in each subquery's SELECT and in a per-patient GROUP BY"));
            }
            if class.has_total() && total.is_empty() {
                return Err(outer_pid_only(part()));
            }
            classes.push(PidClass {
                columns: total.into_iter().chain(outer.iter().cloned()).collect(),
                outer,
                scans: class.scans,
            });
        }
        Ok(PidSet {
            classes,
            patient_scans: self.patient_scans,
        })
    }

    /// Rule 3: at most one class, covering every patient-table scan below.
    pub(crate) fn check_one_class(&self, part: impl FnOnce() -> String) -> Result<(), Refusal> {
        let covered: usize = self.classes.iter().map(|class| class.scans).sum();
        if self.classes.len() > 1 || covered != self.patient_scans {
            return Err(Refusal::new(
                Rule::PidUse,
                part(),
                "combines patient tables without joining them on pid: one row could hold two patients, and the patient counted would not be the one released",
            )
            .hint("join patient tables to each other only with ON a.pid = b.pid (reference tables may join on their codes)"));
        }
        Ok(())
    }

    /// The pid column the hidden patient count counts: the one class's first column.
    pub(crate) fn counted(&self) -> Option<&Column> {
        match self.classes.as_slice() {
            [class] => class.columns.first(),
            _ => None,
        }
    }

    /// True when the node has patient classes on both of two join inputs.
    pub(crate) fn both_read_patients(left: &PidSet, right: &PidSet) -> bool {
        !left.classes.is_empty() && !right.classes.is_empty()
    }
}

pub(crate) fn is_pid(column: &Column, pids: &PidSet) -> bool {
    // Any column named pid counts too, whatever its source: renaming is tracked, and a
    // column that merely looks like a pid is treated as one.
    column.name == "pid"
        || pids.contains(column)
        || pids
            .columns()
            .any(|p| p.relation.is_none() && p.name == column.name)
}

pub(crate) fn as_pid_column<'a>(expr: &'a Expr, pids: &PidSet) -> Option<&'a Column> {
    match unalias(expr) {
        Expr::Column(column) if is_pid(column, pids) => Some(column),
        _ => None,
    }
}

pub(crate) fn has_pid(schema: &DFSchema, pids: &PidSet) -> bool {
    schema.columns().iter().any(|c| is_pid(c, pids))
}

/// A projection or per-patient grouping that keeps only the outer-joined side's pid.
fn outer_pid_only(part: String) -> Refusal {
    Refusal::new(
        Rule::PidUse,
        part,
        "keeps only the pid of an outer join's nullable side, which is null where the join found no match: those rows' patients would go on uncounted",
    )
    .hint("keep the preserved side's pid (the table before LEFT JOIN)")
}

/// COUNT(DISTINCT pid) over the nullable side of an outer join.
pub(crate) fn outer_pid_counted(expr: &Expr) -> Refusal {
    Refusal::new(
        Rule::PidUse,
        expr,
        "counts the pid of an outer join's nullable side: beside the preserved side's count, it tells how many patients the join left unmatched, however few",
    )
    .hint("COUNT(DISTINCT the preserved side's pid), and put the join's condition in WHERE or GROUP BY")
}

/// pid as a key of the released grouping.
pub(crate) fn grouped_by_pid(group: &Expr) -> Refusal {
    Refusal::new(
        Rule::PidUse,
        group,
        "grouping by pid would release one row per patient",
    )
    .hint("GROUP BY patient attributes and COUNT(DISTINCT pid)")
}

/// pid aggregated other than as COUNT(DISTINCT pid).
pub(crate) fn aggregated_pid(expr: &Expr) -> Refusal {
    Refusal::new(
        Rule::PidUse,
        expr,
        "pid may be aggregated only as COUNT(DISTINCT pid)",
    )
    .hint("COUNT(DISTINCT pid) counts patients")
}

/// A join condition with pid on one side only.
pub(crate) fn pid_joined_to_other(left: &Expr, right: &Expr) -> Refusal {
    Refusal::new(
        Rule::PidUse,
        format!("{left} = {right}"),
        "pid may be joined only to another pid",
    )
}

/// pid used in an expression.
pub(crate) fn pid_in_expression(column: &Column) -> Refusal {
    Refusal::new(
        Rule::PidUse,
        column,
        "pid may appear only in equi-joins, COUNT(DISTINCT pid) and per-patient grouping",
    )
    .hint("pid is a pseudonym: nothing may be computed from it")
}

/// A cross join with a patient table on one side.
pub(crate) fn cross_join(join_type: JoinType) -> Refusal {
    Refusal::new(
        Rule::PidUse,
        format!("{join_type} join"),
        "is a cross join involving a patient table: every row of one side meets every row of the other",
    )
    .hint("join patient tables on pid (ON a.pid = b.pid) and reference tables on their codes")
}

/// A reference table kept whole by an outer join with patient data.
pub(crate) fn reference_preserved(join_type: JoinType) -> Refusal {
    Refusal::new(
        Rule::PidUse,
        format!("{join_type} join"),
        "keeps a reference table's rows whether or not a patient matches them: those rows are counted by no patient count",
    )
    .hint("join the reference table to the patient tables (patient data first, then LEFT JOIN the reference table, or an inner join)")
}

/// A FULL join of two patient tables.
pub(crate) fn full_join_of_patients() -> Refusal {
    Refusal::new(
        Rule::PidUse,
        "FULL join",
        "of two patient tables leaves rows where either patient is missing, so no one pid counts every row",
    )
    .hint("use an inner or a LEFT join on pid")
}
