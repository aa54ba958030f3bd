//! The Arrow schemas of the node store (data-model.md section 2).
//!
//! These schemas are the contract between ingest, which writes the Parquet tables, and
//! every query engine that reads them. Column names, types and nullability here follow
//! data-model.md to the letter; a `?` there is `nullable = true` here.

use std::sync::{Arc, LazyLock};

use arrow::datatypes::{DataType, Field, Schema, SchemaRef};

/// Names of the four patient-level tables, in the order ingest writes them.
pub const PATIENT_TABLES: [&str; 4] = ["patient", "diagnosis", "genetic_finding", "phenotype"];

/// Name of the Orphanet term table.
pub const ORPHA_TERM: &str = "orpha_term";

/// Name of the Orphanet transitive-closure table.
pub const ORPHA_CLOSURE: &str = "orpha_closure";

fn utf8(name: &str, nullable: bool) -> Field {
    Field::new(name, DataType::Utf8, nullable)
}

fn int32(name: &str, nullable: bool) -> Field {
    Field::new(name, DataType::Int32, nullable)
}

fn date32(name: &str) -> Field {
    Field::new(name, DataType::Date32, true)
}

fn boolean(name: &str, nullable: bool) -> Field {
    Field::new(name, DataType::Boolean, nullable)
}

static PATIENT: LazyLock<SchemaRef> = LazyLock::new(|| {
    Arc::new(Schema::new(vec![
        utf8("pid", false),
        int32("birth_year", false),
        int32("birth_month", true),
        utf8("sex", false),
        utf8("vital_status", true),
        date32("death_date"),
        date32("first_contact_date"),
        boolean("undiagnosed", true),
        utf8("contact_for_research", false),
        boolean("biosample_available", true),
    ]))
});

static DIAGNOSIS: LazyLock<SchemaRef> = LazyLock::new(|| {
    Arc::new(Schema::new(vec![
        utf8("pid", false),
        utf8("code", false),
        utf8("code_system", false),
        utf8("status", false),
        utf8("onset", true),
        date32("onset_date"),
        date32("diagnosis_date"),
        int32("age_at_onset", true),
        int32("age_at_diagnosis", true),
    ]))
});

static GENETIC_FINDING: LazyLock<SchemaRef> = LazyLock::new(|| {
    Arc::new(Schema::new(vec![
        utf8("pid", false),
        utf8("hgnc_id", false),
        utf8("gene_symbol", true),
        utf8("hgvs", true),
        utf8("zygosity", true),
        boolean("causative", true),
    ]))
});

static PHENOTYPE: LazyLock<SchemaRef> = LazyLock::new(|| {
    Arc::new(Schema::new(vec![
        utf8("pid", false),
        utf8("hpo_id", false),
        boolean("excluded", false),
    ]))
});

static ORPHA_TERM_SCHEMA: LazyLock<SchemaRef> = LazyLock::new(|| {
    Arc::new(Schema::new(vec![
        utf8("orpha_code", false),
        utf8("name", false),
        utf8("disorder_type", false),
    ]))
});

static ORPHA_CLOSURE_SCHEMA: LazyLock<SchemaRef> = LazyLock::new(|| {
    Arc::new(Schema::new(vec![
        utf8("ancestor", false),
        utf8("descendant", false),
        int32("depth", false),
    ]))
});

/// Schema of the `patient` table.
pub fn patient() -> SchemaRef {
    Arc::clone(&PATIENT)
}

/// Schema of the `diagnosis` table.
pub fn diagnosis() -> SchemaRef {
    Arc::clone(&DIAGNOSIS)
}

/// Schema of the `genetic_finding` table.
pub fn genetic_finding() -> SchemaRef {
    Arc::clone(&GENETIC_FINDING)
}

/// Schema of the `phenotype` table.
pub fn phenotype() -> SchemaRef {
    Arc::clone(&PHENOTYPE)
}

/// Schema of the `orpha_term` reference table.
pub fn orpha_term() -> SchemaRef {
    Arc::clone(&ORPHA_TERM_SCHEMA)
}

/// Schema of the `orpha_closure` reference table.
pub fn orpha_closure() -> SchemaRef {
    Arc::clone(&ORPHA_CLOSURE_SCHEMA)
}

/// Schema of any store or reference table by name; `None` for an unknown name.
pub fn by_name(table: &str) -> Option<SchemaRef> {
    match table {
        "patient" => Some(patient()),
        "diagnosis" => Some(diagnosis()),
        "genetic_finding" => Some(genetic_finding()),
        "phenotype" => Some(phenotype()),
        ORPHA_TERM => Some(orpha_term()),
        ORPHA_CLOSURE => Some(orpha_closure()),
        _ => None,
    }
}

/// Allowed `sex` values.
pub const SEX: &[&str] = &["female", "male", "undetermined", "unknown"];
/// Allowed `vital_status` values (null: unknown).
pub const VITAL_STATUS: &[&str] = &["alive", "dead", "lost_to_follow_up", "opted_out"];
/// Allowed consent answers (`contact_for_research`).
pub const YES_NO_UNKNOWN: &[&str] = &["yes", "no", "unknown"];
/// Allowed diagnosis `code_system` values.
pub const CODE_SYSTEM: &[&str] = &["ORPHA", "ICD10", "OMIM"];
/// Allowed diagnosis `status` values.
pub const DIAGNOSIS_STATUS: &[&str] = &["confirmed", "provisional", "differential", "refuted"];
/// Allowed `onset` values.
pub const ONSET: &[&str] = &["antenatal", "at_birth", "date", "undetermined"];
/// Allowed `zygosity` values.
pub const ZYGOSITY: &[&str] = &[
    "heterozygous",
    "homozygous",
    "hemizygous",
    "compound_heterozygous",
    "unknown",
];

/// The values a stored text column can hold, where data-model.md fixes them (ingest
/// refuses any other): its public domain. `None` for free text and codes.
pub fn value_set(table: &str, column: &str) -> Option<&'static [&'static str]> {
    match (table, column) {
        ("patient", "sex") => Some(SEX),
        ("patient", "vital_status") => Some(VITAL_STATUS),
        ("patient", "contact_for_research") => Some(YES_NO_UNKNOWN),
        ("diagnosis", "code_system") => Some(CODE_SYSTEM),
        ("diagnosis", "status") => Some(DIAGNOSIS_STATUS),
        ("diagnosis", "onset") => Some(ONSET),
        ("genetic_finding", "zygosity") => Some(ZYGOSITY),
        _ => None,
    }
}

/// The declared range of a stored numeric column, inclusive, where data-model.md gives
/// one (years 1880-2100, months 1-12, ages 0-150).
pub fn declared_range(column: &str) -> Option<(i64, i64)> {
    match column {
        "birth_year" => Some((1880, 2100)),
        "birth_month" => Some((1, 12)),
        "age_at_onset" | "age_at_diagnosis" => Some((0, 150)),
        _ => None,
    }
}

/// The largest magnitude a stored numeric column can hold, from the declared ranges of
/// data-model.md (years 1880-2100, months 1-12, ages 0-150; dates as days since
/// 1970-01-01 within 1880-01-01 … 2100-12-31). Reference depths are small by
/// construction. `None` for a column with no declared range.
///
/// Validation bounds every value that flows into a released sum with these, so a sum can
/// neither overflow nor reach infinity, whatever the data.
pub fn declared_magnitude(column: &str, data_type: &DataType) -> Option<f64> {
    match (column, data_type) {
        ("birth_year", _) => Some(2100.0),
        ("birth_month", _) => Some(12.0),
        ("age_at_onset" | "age_at_diagnosis", _) => Some(150.0),
        ("depth", _) => Some(1000.0),
        (_, DataType::Date32) => Some(DATE_DAYS_MAGNITUDE),
        (_, DataType::Boolean) => Some(1.0),
        _ => None,
    }
}

/// Days between 1970-01-01 and the furthest declared date (1880-01-01 is 32,872 days
/// before it, 2100-12-31 is 47,846 days after it).
const DATE_DAYS_MAGNITUDE: f64 = 47_846.0;
