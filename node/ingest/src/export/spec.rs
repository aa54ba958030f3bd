//! The four files of a site export and their columns (data-model.md section 1).
//!
//! One table of column specifications serves the validator, the synthetic generator and
//! the documentation, so the three cannot drift apart.

use super::values;

/// One CSV file of a site export.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ExportFile {
    /// `patient.csv`, required.
    Patient,
    /// `diagnosis.csv`, optional.
    Diagnosis,
    /// `genetic_finding.csv`, optional.
    GeneticFinding,
    /// `phenotype.csv`, optional.
    Phenotype,
}

/// The format a cell must have.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// A hospital patient id.
    LocalId,
    /// `YYYY-MM-DD`, `YYYY-MM` or `YYYY`.
    PartialDate,
    /// `YYYY-MM-DD`.
    Date,
    /// One of a fixed set of words.
    OneOf(&'static [&'static str]),
    /// `true` or `false`.
    Boolean,
    /// `ORPHA:`, `ICD10:` or `OMIM:` code.
    DiagnosisCode,
    /// `HGNC:<digits>`.
    HgncId,
    /// `HP:` and 7 digits.
    HpoId,
    /// Free printable text.
    Text,
}

impl Format {
    /// Checks one non-empty cell; the error is the rule it breaks.
    ///
    /// A date, at any precision, must also lie in the declared range 1880-01-01 …
    /// 2100-12-31 (data-model.md section 1, "Declared ranges"): it bounds the group
    /// domains of secure aggregation and the clamp on sums.
    pub fn check(self, text: &str) -> Result<(), RuleText> {
        let in_range = match self {
            Format::PartialDate => {
                values::parse_partial_date(text).map(values::PartialDate::in_declared_range)
            }
            Format::Date => values::parse_date(text).map(values::Date::in_declared_range),
            _ => Some(true),
        };
        match in_range {
            None => return Err(self.rule()),
            Some(false) => return Err(RuleText::Static(values::DATE_RANGE_RULE)),
            Some(true) => {}
        }
        let ok = match self {
            Format::LocalId => values::is_local_id(text),
            Format::PartialDate | Format::Date => true,
            Format::OneOf(allowed) => allowed.contains(&text),
            Format::Boolean => values::parse_boolean(text).is_some(),
            Format::DiagnosisCode => values::parse_code(text).is_some(),
            Format::HgncId => values::is_hgnc_id(text),
            Format::HpoId => values::is_hpo_id(text),
            Format::Text => values::is_printable(text),
        };
        if ok { Ok(()) } else { Err(self.rule()) }
    }

    /// The rule a cell of this format must follow, in words.
    pub fn rule(self) -> RuleText {
        match self {
            Format::LocalId => RuleText::Static(values::LOCAL_ID_RULE),
            Format::PartialDate => RuleText::Static(values::PARTIAL_DATE_RULE),
            Format::Date => RuleText::Static(values::DATE_RULE),
            Format::OneOf(allowed) => RuleText::OneOf(allowed),
            Format::Boolean => RuleText::Static(values::BOOLEAN_RULE),
            Format::DiagnosisCode => RuleText::Static(values::CODE_RULE),
            Format::HgncId => RuleText::Static(values::HGNC_RULE),
            Format::HpoId => RuleText::Static(values::HPO_RULE),
            Format::Text => RuleText::Static(values::TEXT_RULE),
        }
    }
}

/// The words of a broken rule; never holds a cell's value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RuleText {
    /// A fixed sentence.
    Static(&'static str),
    /// "must be one of: …".
    OneOf(&'static [&'static str]),
}

impl std::fmt::Display for RuleText {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RuleText::Static(text) => f.write_str(text),
            RuleText::OneOf(allowed) => write!(f, "must be one of: {}", allowed.join(", ")),
        }
    }
}

/// One column of an export file.
#[derive(Debug, Clone, Copy)]
pub struct ColumnSpec {
    /// Header name.
    pub name: &'static str,
    /// Whether the column must be in the header and every row must fill it.
    pub required: bool,
    /// The cell format.
    pub format: Format,
}

const fn column(name: &'static str, required: bool, format: Format) -> ColumnSpec {
    ColumnSpec {
        name,
        required,
        format,
    }
}

// The value sets are the store's contract too (`ern schema`, secure aggregation's
// public domains): one list, in `ern_queries::schema`.
pub use ern_queries::schema::{
    DIAGNOSIS_STATUS, ONSET, SEX, VITAL_STATUS, YES_NO_UNKNOWN, ZYGOSITY,
};

const PATIENT_COLUMNS: &[ColumnSpec] = &[
    column("local_id", true, Format::LocalId),
    column("birth_date", true, Format::PartialDate),
    column("sex", true, Format::OneOf(SEX)),
    column("vital_status", false, Format::OneOf(VITAL_STATUS)),
    column("death_date", false, Format::Date),
    column("first_contact_date", false, Format::Date),
    column("undiagnosed", false, Format::Boolean),
    column("contact_for_research", true, Format::OneOf(YES_NO_UNKNOWN)),
    column("consent_data_reuse", true, Format::OneOf(YES_NO_UNKNOWN)),
    column("biosample_available", false, Format::Boolean),
];

const DIAGNOSIS_COLUMNS: &[ColumnSpec] = &[
    column("local_id", true, Format::LocalId),
    column("code", true, Format::DiagnosisCode),
    column("status", false, Format::OneOf(DIAGNOSIS_STATUS)),
    column("onset", false, Format::OneOf(ONSET)),
    column("onset_date", false, Format::Date),
    column("diagnosis_date", false, Format::Date),
];

const GENETIC_FINDING_COLUMNS: &[ColumnSpec] = &[
    column("local_id", true, Format::LocalId),
    column("hgnc_id", true, Format::HgncId),
    column("gene_symbol", false, Format::Text),
    column("hgvs", false, Format::Text),
    column("zygosity", false, Format::OneOf(ZYGOSITY)),
    column("causative", false, Format::Boolean),
];

const PHENOTYPE_COLUMNS: &[ColumnSpec] = &[
    column("local_id", true, Format::LocalId),
    column("hpo_id", true, Format::HpoId),
    column("excluded", false, Format::Boolean),
];

impl ExportFile {
    /// All export files, patient first.
    pub const ALL: [ExportFile; 4] = [
        ExportFile::Patient,
        ExportFile::Diagnosis,
        ExportFile::GeneticFinding,
        ExportFile::Phenotype,
    ];

    /// The file name inside the export directory.
    pub fn file_name(self) -> &'static str {
        match self {
            ExportFile::Patient => "patient.csv",
            ExportFile::Diagnosis => "diagnosis.csv",
            ExportFile::GeneticFinding => "genetic_finding.csv",
            ExportFile::Phenotype => "phenotype.csv",
        }
    }

    /// The columns the file may have, in the order the synthetic generator writes them.
    pub fn columns(self) -> &'static [ColumnSpec] {
        match self {
            ExportFile::Patient => PATIENT_COLUMNS,
            ExportFile::Diagnosis => DIAGNOSIS_COLUMNS,
            ExportFile::GeneticFinding => GENETIC_FINDING_COLUMNS,
            ExportFile::Phenotype => PHENOTYPE_COLUMNS,
        }
    }

    /// The column spec by header name.
    pub fn column(self, name: &str) -> Option<&'static ColumnSpec> {
        self.columns().iter().find(|c| c.name == name)
    }

    /// The store table the file feeds.
    pub fn table(self) -> &'static str {
        match self {
            ExportFile::Patient => "patient",
            ExportFile::Diagnosis => "diagnosis",
            ExportFile::GeneticFinding => "genetic_finding",
            ExportFile::Phenotype => "phenotype",
        }
    }
}
