//! Every rule of data-model.md section 1, broken on purpose: the error must name the file,
//! the file's own line (header = line 1), the column and the rule, and never the value.

use std::path::Path;

use ern_ingest::progress::NoProgress;
use ern_ingest::{IngestError, RowError, ingest};
use ern_node::pseudonym::Pseudonymiser;

const PATIENT_HEADER: &str = "local_id,birth_date,sex,vital_status,death_date,first_contact_date,undiagnosed,contact_for_research,consent_data_reuse,biosample_available";
const PATIENT_ROWS: &[&str] = &[
    "P1,1980-05-12,female,alive,,2010-01-01,false,yes,yes,true",
    "P2,1975-03,male,dead,2020-01-01,,,no,yes,",
    "P3,1990,unknown,,,,,unknown,no,false",
    "P4,2001-11-30,male,opted_out,,,,yes,yes,",
    "P5,1960-07-01,female,lost_to_follow_up,,,true,yes,yes,false",
];
const DIAGNOSIS_HEADER: &str = "local_id,code,status,onset,onset_date,diagnosis_date";
const DIAGNOSIS_ROWS: &[&str] = &[
    "P1,ORPHA:154,confirmed,date,1999-04-01,2003-02-01",
    "P2,ICD10:I42.1,,at_birth,,1990-01-01",
    "P3,ORPHA:130,,,,",
    "P5,OMIM:192600,provisional,undetermined,,",
];
const GENETIC_HEADER: &str = "local_id,hgnc_id,gene_symbol,hgvs,zygosity,causative";
const GENETIC_ROWS: &[&str] = &["P1,HGNC:7577,MYH7,NM_000257.4:c.1208G>A,heterozygous,true"];
const PHENOTYPE_HEADER: &str = "local_id,hpo_id,excluded";
const PHENOTYPE_ROWS: &[&str] = &["P1,HP:0001639,false", "P5,HP:0001279,"];

/// A valid export, with `replace` swapping one file's whole text.
fn write_export(dir: &Path, replace: &[(&str, String)]) {
    let files = [
        ("patient.csv", PATIENT_HEADER, PATIENT_ROWS),
        ("diagnosis.csv", DIAGNOSIS_HEADER, DIAGNOSIS_ROWS),
        ("genetic_finding.csv", GENETIC_HEADER, GENETIC_ROWS),
        ("phenotype.csv", PHENOTYPE_HEADER, PHENOTYPE_ROWS),
    ];
    for (name, header, rows) in files {
        let text = replace.iter().find(|(file, _)| *file == name).map_or_else(
            || format!("{header}\n{}\n", rows.join("\n")),
            |(_, text)| text.clone(),
        );
        std::fs::write(dir.join(name), text).expect("write export file");
    }
}

/// `file` with row `row` (0-based, data rows) replaced by `line`; the row lands on line row + 2.
fn with_row(header: &str, rows: &[&str], row: usize, line: &str) -> String {
    let mut rows: Vec<&str> = rows.to_vec();
    if row < rows.len() {
        rows[row] = line;
    } else {
        rows.push(line);
    }
    format!("{header}\n{}\n", rows.join("\n"))
}

fn key() -> Pseudonymiser {
    Pseudonymiser::new(&[42u8; 32])
}

fn ingest_errors(replace: &[(&str, String)]) -> (Vec<RowError>, usize, String) {
    let dir = tempfile::tempdir().expect("temp dir");
    let export = dir.path().join("export");
    std::fs::create_dir(&export).expect("export dir");
    write_export(&export, replace);
    let store = dir.path().join("store");
    match ingest(&export, &key(), &store, &NoProgress) {
        Err(error @ IngestError::InvalidExport { .. }) => {
            let message = error.to_string();
            assert!(
                !store.join("patient.parquet").exists(),
                "a failed ingest wrote a table"
            );
            let IngestError::InvalidExport { errors, total } = error else {
                unreachable!()
            };
            (errors, total, message)
        }
        other => panic!("expected an invalid export, got {other:?}"),
    }
}

/// Asserts exactly one error, at file/line/column, whose rule contains `rule`, and that
/// the message does not repeat `value`.
fn expect_error(replace: (&str, String), line: u64, column: Option<&str>, rule: &str, value: &str) {
    let file = replace.0;
    let (errors, total, message) = ingest_errors(&[replace]);
    assert_eq!(total, 1, "expected one error, got {errors:#?}");
    let error = &errors[0];
    assert_eq!(error.file, file, "{error}");
    assert_eq!(error.line, line, "{error}");
    assert_eq!(error.column.as_deref(), column, "{error}");
    assert!(
        error.rule.contains(rule),
        "rule {:?} lacks {rule:?}",
        error.rule
    );
    assert!(
        message.contains(&format!("{file}, line {line}")),
        "{message}"
    );
    if !value.is_empty() {
        assert!(
            !message.contains(value),
            "the message repeats the value {value:?}: {message}"
        );
    }
}

fn patient_row(row: usize, line: &str) -> (&'static str, String) {
    (
        "patient.csv",
        with_row(PATIENT_HEADER, PATIENT_ROWS, row, line),
    )
}

fn diagnosis_row(row: usize, line: &str) -> (&'static str, String) {
    (
        "diagnosis.csv",
        with_row(DIAGNOSIS_HEADER, DIAGNOSIS_ROWS, row, line),
    )
}

#[test]
fn the_valid_export_ingests() {
    let dir = tempfile::tempdir().expect("temp dir");
    write_export(dir.path(), &[]);
    let report =
        ingest(dir.path(), &key(), &dir.path().join("store"), &NoProgress).expect("valid export");
    assert_eq!(report.patients_read, 5);
    assert_eq!(report.patients_left_out, 2);
}

#[test]
fn local_id_is_required() {
    expect_error(
        patient_row(1, ",1975-03,male,dead,2020-01-01,,,no,yes,"),
        3,
        Some("local_id"),
        "required",
        "",
    );
}

#[test]
fn local_id_is_at_most_64_printable_characters() {
    let long = "X".repeat(65);
    expect_error(
        patient_row(5, &format!("{long},1980-05-12,female,alive,,,,yes,yes,")),
        7,
        Some("local_id"),
        "1-64 printable",
        &long,
    );
    expect_error(
        patient_row(5, "\"P\u{7}1\",1980-05-12,female,alive,,,,yes,yes,"),
        7,
        Some("local_id"),
        "printable",
        "",
    );
}

#[test]
fn local_id_is_unique() {
    expect_error(
        patient_row(3, "P1,2001-11-30,male,,,,,yes,yes,"),
        5,
        Some("local_id"),
        "unique in the file; the same id is on line 2",
        "",
    );
}

#[test]
fn birth_date_is_required_and_a_real_date() {
    expect_error(
        patient_row(0, "P1,,female,alive,,,,yes,yes,"),
        2,
        Some("birth_date"),
        "required",
        "",
    );
    expect_error(
        patient_row(0, "P1,1980-02-30,female,alive,,,,yes,yes,"),
        2,
        Some("birth_date"),
        "YYYY-MM-DD, YYYY-MM or YYYY",
        "1980-02-30",
    );
    expect_error(
        patient_row(4, "P5,12/05/1980,female,alive,,,,yes,yes,"),
        6,
        Some("birth_date"),
        "YYYY-MM-DD, YYYY-MM or YYYY",
        "12/05/1980",
    );
    expect_error(
        patient_row(2, "P3,1990-13,unknown,,,,,unknown,no,false"),
        4,
        Some("birth_date"),
        "calendar date",
        "1990-13",
    );
}

#[test]
fn sex_takes_only_its_four_values() {
    expect_error(
        patient_row(0, "P1,1980-05-12,F,alive,,,,yes,yes,"),
        2,
        Some("sex"),
        "female, male, undetermined, unknown",
        "",
    );
    expect_error(
        patient_row(0, "P1,1980-05-12,,alive,,,,yes,yes,"),
        2,
        Some("sex"),
        "required",
        "",
    );
}

#[test]
fn vital_status_takes_only_its_values() {
    expect_error(
        patient_row(0, "P1,1980-05-12,female,deceased,,,,yes,yes,"),
        2,
        Some("vital_status"),
        "alive, dead, lost_to_follow_up, opted_out",
        "deceased",
    );
}

#[test]
fn death_date_only_when_dead() {
    expect_error(
        patient_row(0, "P1,1980-05-12,female,alive,2020-01-01,,,yes,yes,"),
        2,
        Some("death_date"),
        "only when vital_status is dead",
        "2020-01-01",
    );
    expect_error(
        patient_row(2, "P3,1990,unknown,,2020-01-01,,,unknown,no,false"),
        4,
        Some("death_date"),
        "only when vital_status is dead",
        "",
    );
    expect_error(
        patient_row(1, "P2,1975-03,male,dead,2020-13-01,,,no,yes,"),
        3,
        Some("death_date"),
        "YYYY-MM-DD",
        "2020-13-01",
    );
}

#[test]
fn first_contact_date_is_a_date() {
    expect_error(
        patient_row(0, "P1,1980-05-12,female,alive,,01/02/2010,,yes,yes,"),
        2,
        Some("first_contact_date"),
        "YYYY-MM-DD",
        "01/02/2010",
    );
    expect_error(
        patient_row(0, "P1,1980-05-12,female,alive,,2010-01,,yes,yes,"),
        2,
        Some("first_contact_date"),
        "YYYY-MM-DD",
        "",
    );
}

#[test]
fn booleans_are_true_or_false() {
    expect_error(
        patient_row(0, "P1,1980-05-12,female,alive,,,yes,yes,yes,"),
        2,
        Some("undiagnosed"),
        "true or false",
        "",
    );
    expect_error(
        patient_row(0, "P1,1980-05-12,female,alive,,,,yes,yes,1"),
        2,
        Some("biosample_available"),
        "true or false",
        "",
    );
    expect_error(
        patient_row(0, "P1,1980-05-12,female,alive,,,TRUE,yes,yes,"),
        2,
        Some("undiagnosed"),
        "true or false",
        "",
    );
}

#[test]
fn consent_columns_take_yes_no_unknown() {
    expect_error(
        patient_row(0, "P1,1980-05-12,female,alive,,,,maybe,yes,"),
        2,
        Some("contact_for_research"),
        "yes, no, unknown",
        "maybe",
    );
    expect_error(
        patient_row(0, "P1,1980-05-12,female,alive,,,,yes,,"),
        2,
        Some("consent_data_reuse"),
        "required",
        "",
    );
    expect_error(
        patient_row(0, "P1,1980-05-12,female,alive,,,,yes,Yes,"),
        2,
        Some("consent_data_reuse"),
        "yes, no, unknown",
        "",
    );
}

#[test]
fn unknown_columns_are_rejected_on_the_header_line() {
    let text = format!(
        "{PATIENT_HEADER},name\n{}\n",
        PATIENT_ROWS
            .iter()
            .map(|r| format!("{r},x"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    expect_error(("patient.csv", text), 1, Some("name"), "unknown column", "");
}

#[test]
fn required_columns_must_be_in_the_header() {
    let header = PATIENT_HEADER.replace(",consent_data_reuse", "");
    let rows: Vec<String> = PATIENT_ROWS
        .iter()
        .map(|r| {
            let mut cells: Vec<&str> = r.split(',').collect();
            cells.remove(8);
            cells.join(",")
        })
        .collect();
    expect_error(
        ("patient.csv", format!("{header}\n{}\n", rows.join("\n"))),
        1,
        Some("consent_data_reuse"),
        "required column is missing",
        "",
    );
}

#[test]
fn optional_columns_may_be_left_out_and_columns_come_in_any_order() {
    let dir = tempfile::tempdir().expect("temp dir");
    let patients = "sex,consent_data_reuse,local_id,contact_for_research,birth_date\nfemale,yes,P1,no,1980\nmale,yes,P2,yes,1975-03\n";
    write_export(
        dir.path(),
        &[
            ("patient.csv", patients.into()),
            ("diagnosis.csv", "code,local_id\nORPHA:154,P1\n".into()),
            ("genetic_finding.csv", format!("{GENETIC_HEADER}\n")),
            ("phenotype.csv", "hpo_id,local_id\nHP:0001639,P2\n".into()),
        ],
    );
    let report =
        ingest(dir.path(), &key(), &dir.path().join("store"), &NoProgress).expect("valid export");
    assert_eq!(report.patients_read, 2);
    assert_eq!(
        report
            .tables
            .iter()
            .map(|t| t.rows_written)
            .collect::<Vec<_>>(),
        vec![2, 1, 0, 1]
    );
}

#[test]
fn a_column_named_twice_is_rejected() {
    let text = format!(
        "{PATIENT_HEADER},sex\n{}\n",
        PATIENT_ROWS
            .iter()
            .map(|r| format!("{r},male"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    expect_error(("patient.csv", text), 1, Some("sex"), "appears twice", "");
}

#[test]
fn a_row_must_be_as_wide_as_the_header() {
    expect_error(
        patient_row(1, "P2,1975-03,male,dead"),
        3,
        None,
        "4 cells but the header has 10",
        "",
    );
    expect_error(
        patient_row(1, "P2,1975-03,male,dead,2020-01-01,,,no,yes,,extra"),
        3,
        None,
        "11 cells but the header has 10",
        "",
    );
}

#[test]
fn diagnosis_local_id_must_be_a_patient() {
    expect_error(
        diagnosis_row(2, "P9,ORPHA:130,,,,"),
        4,
        Some("local_id"),
        "must be a local_id of patient.csv",
        "P9",
    );
}

#[test]
fn diagnosis_code_follows_one_of_three_systems() {
    expect_error(
        diagnosis_row(0, "P1,ORPHA-154,confirmed,,,"),
        2,
        Some("code"),
        "ORPHA:<digits>, ICD10:<code>",
        "ORPHA-154",
    );
    expect_error(
        diagnosis_row(0, "P1,OMIM:19260,confirmed,,,"),
        2,
        Some("code"),
        "OMIM:<6 digits>",
        "",
    );
    expect_error(
        diagnosis_row(0, "P1,ICD10:i42.1,confirmed,,,"),
        2,
        Some("code"),
        "ICD10:<code>",
        "",
    );
    expect_error(
        diagnosis_row(0, "P1,,confirmed,,,"),
        2,
        Some("code"),
        "required",
        "",
    );
}

#[test]
fn diagnosis_status_and_onset_take_their_values() {
    expect_error(
        diagnosis_row(0, "P1,ORPHA:154,certain,,,"),
        2,
        Some("status"),
        "confirmed, provisional, differential, refuted",
        "certain",
    );
    expect_error(
        diagnosis_row(0, "P1,ORPHA:154,,late,,"),
        2,
        Some("onset"),
        "antenatal, at_birth, date, undetermined",
        "",
    );
}

#[test]
fn onset_date_is_required_when_onset_is_date() {
    expect_error(
        diagnosis_row(3, "P5,ORPHA:154,,date,,2001-01-01"),
        5,
        Some("onset_date"),
        "required when onset is date",
        "",
    );
    expect_error(
        diagnosis_row(3, "P5,ORPHA:154,,date,2001-02-29,"),
        5,
        Some("onset_date"),
        "YYYY-MM-DD",
        "2001-02-29",
    );
}

/// The declared range of dates (data-model.md section 1, "Declared ranges"), in the
/// words every refusal of a date outside it uses.
const DATE_RANGE: &str = "between 1880-01-01 and 2100-12-31";

/// data-model.md: "A date outside 1880-01-01 … 2100-12-31 is refused with its line" (red
/// team: birth years 0001-9999 were accepted, and the domains of secure aggregation
/// assume 1880-2100).
#[test]
fn a_birth_date_outside_the_declared_range_is_refused_at_any_precision() {
    for birth in [
        "1879-12-31",
        "1879-12",
        "1879",
        "0001",
        "0001-01-01",
        "2101-01-01",
        "2101-01",
        "2101",
        "9999",
        "9999-12-31",
    ] {
        expect_error(
            patient_row(0, &format!("P1,{birth},female,alive,,,,yes,yes,")),
            2,
            Some("birth_date"),
            DATE_RANGE,
            birth,
        );
    }
    // A malformed date is still refused for its format.
    expect_error(
        patient_row(0, "P1,0000,female,alive,,,,yes,yes,"),
        2,
        Some("birth_date"),
        "YYYY-MM-DD, YYYY-MM or YYYY",
        "0000",
    );
}

#[test]
fn the_ends_of_the_declared_range_are_accepted() {
    for (first, last) in [
        ("1880", "2100"),
        ("1880-01", "2100-12"),
        ("1880-01-01", "2100-12-31"),
    ] {
        let patients = format!(
            "{PATIENT_HEADER}\nP1,{first},female,dead,1880-01-01,2100-12-31,,yes,yes,\nP2,{last},male,,,,,yes,yes,\n"
        );
        let diagnoses = format!(
            "{DIAGNOSIS_HEADER}\nP1,ORPHA:154,,date,1880-01-01,2100-12-31\nP2,ORPHA:154,,,,2100-12-31\n"
        );
        let ages = stored_ages(&[("patient.csv", patients), ("diagnosis.csv", diagnoses)]);
        assert_eq!(ages.len(), 2, "{first}, {last}");
    }
}

#[test]
fn every_other_date_outside_the_declared_range_is_refused() {
    expect_error(
        patient_row(1, "P2,1975-03,male,dead,2101-01-01,,,no,yes,"),
        3,
        Some("death_date"),
        DATE_RANGE,
        "2101-01-01",
    );
    expect_error(
        patient_row(
            0,
            "P1,1980-05-12,female,alive,,1879-12-31,false,yes,yes,true",
        ),
        2,
        Some("first_contact_date"),
        DATE_RANGE,
        "1879-12-31",
    );
    expect_error(
        diagnosis_row(0, "P1,ORPHA:154,confirmed,date,0999-04-01,2003-02-01"),
        2,
        Some("onset_date"),
        DATE_RANGE,
        "0999-04-01",
    );
    expect_error(
        diagnosis_row(0, "P1,ORPHA:154,confirmed,date,1999-04-01,2200-02-01"),
        2,
        Some("diagnosis_date"),
        DATE_RANGE,
        "2200-02-01",
    );
}

/// Ingests the valid export with `replace` (patient.csv and diagnosis.csv whole, the
/// other files emptied) and returns the stored `(age_at_onset, age_at_diagnosis)` of
/// every diagnosis row, in file order.
fn stored_ages(replace: &[(&str, String)]) -> Vec<(Option<i32>, Option<i32>)> {
    use arrow::array::{Array, AsArray, RecordBatch};
    use arrow::datatypes::Int32Type;
    use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
    let dir = tempfile::tempdir().expect("temp dir");
    let export = dir.path().join("export");
    std::fs::create_dir(&export).expect("export dir");
    let mut files = vec![
        ("genetic_finding.csv", format!("{GENETIC_HEADER}\n")),
        ("phenotype.csv", format!("{PHENOTYPE_HEADER}\n")),
    ];
    files.extend(replace.iter().map(|(file, text)| (*file, text.clone())));
    write_export(&export, &files);
    let store = dir.path().join("store");
    ingest(&export, &key(), &store, &NoProgress).expect("a valid export");
    let file = std::fs::File::open(ern_ingest::store::table_path(&store, "diagnosis"))
        .expect("diagnosis table");
    let batches: Vec<RecordBatch> = ParquetRecordBatchReaderBuilder::try_new(file)
        .expect("parquet")
        .build()
        .expect("reader")
        .collect::<Result<_, _>>()
        .expect("read");
    let mut ages = Vec::new();
    for batch in &batches {
        let column = |name: &str| {
            let array = batch.column_by_name(name).expect("an age column");
            assert_eq!(array.data_type(), &arrow::datatypes::DataType::Int32);
            array.as_primitive::<Int32Type>().iter().collect::<Vec<_>>()
        };
        ages.extend(
            column("age_at_onset")
                .into_iter()
                .zip(column("age_at_diagnosis")),
        );
    }
    ages
}

/// data-model.md: "Declared ranges (they bound group domains and clamp sums): … ages
/// 0–150". A date before the birth is prenatal (a diagnosis before birth, an onset in
/// pregnancy): the data model refuses no date for it, and stores an antenatal onset as
/// age 0, so ingest keeps the row at age 0 (red team: stored as -1, such rows fell out of
/// every secure domain over ages and vanished from the network answer). A date in the
/// birth month, before the day, is age 0 by the formula itself; an age past 150 (born
/// 1880, seen in 2100) is 150.
#[test]
fn computed_ages_lie_in_the_declared_range() {
    let patients = format!(
        "{PATIENT_HEADER}\n\
         A1,2020-03,female,alive,,,,yes,yes,\n\
         A2,2020-03-15,male,alive,,,,yes,yes,\n\
         A3,1880-01,female,dead,2100-12-31,,,yes,yes,\n\
         A4,2020,unknown,,,,,yes,yes,\n"
    );
    let diagnoses = format!(
        "{DIAGNOSIS_HEADER}\n\
         A1,ORPHA:154,,antenatal,,2019-12-01\n\
         A1,ORPHA:130,,date,2019-11-30,2020-03-01\n\
         A2,ORPHA:154,,date,2020-03-01,2020-03-10\n\
         A2,ORPHA:130,,date,2021-02-28,2021-03-01\n\
         A3,ORPHA:154,,date,1880-01-01,2100-12-31\n\
         A3,ORPHA:130,,date,2029-12-31,2030-01-01\n\
         A4,ORPHA:154,,at_birth,,2019-06-01\n"
    );
    let ages = stored_ages(&[("patient.csv", patients), ("diagnosis.csv", diagnoses)]);
    assert_eq!(
        ages,
        vec![
            // Antenatal onset; diagnosed three months before the birth month (-1).
            (Some(0), Some(0)),
            // Onset dated before the birth month (-1); diagnosed in the birth month.
            (Some(0), Some(0)),
            // Born 2020-03-15: onset and diagnosis in the birth month, before the day.
            (Some(0), Some(0)),
            // The day before the first birthday's month, then that month.
            (Some(0), Some(1)),
            // Born 1880-01: onset in the birth month; diagnosed at 220, clamped.
            (Some(0), Some(150)),
            (Some(149), Some(150)),
            // Born in 2020 (year only): a diagnosis in 2019 is prenatal (-1).
            (Some(0), Some(0)),
        ]
    );
}

#[test]
fn diagnosis_date_is_a_date() {
    expect_error(
        diagnosis_row(0, "P1,ORPHA:154,,,,2003"),
        2,
        Some("diagnosis_date"),
        "YYYY-MM-DD",
        "",
    );
}

#[test]
fn genetic_findings_follow_their_formats() {
    let row = |line: &str| {
        (
            "genetic_finding.csv",
            with_row(GENETIC_HEADER, GENETIC_ROWS, 0, line),
        )
    };
    expect_error(
        row("P1,MYH7,MYH7,,,"),
        2,
        Some("hgnc_id"),
        "HGNC:<digits>",
        "",
    );
    expect_error(row("P1,,MYH7,,,"), 2, Some("hgnc_id"), "required", "");
    expect_error(
        row("P1,HGNC:7577,MYH7,,HETZ,"),
        2,
        Some("zygosity"),
        "heterozygous, homozygous",
        "HETZ",
    );
    expect_error(
        row("P1,HGNC:7577,MYH7,,,yes"),
        2,
        Some("causative"),
        "true or false",
        "",
    );
    expect_error(
        row("P1,HGNC:7577,\"MY\tH7\",,,"),
        2,
        Some("gene_symbol"),
        "printable",
        "",
    );
    expect_error(
        row("PX,HGNC:7577,MYH7,,,"),
        2,
        Some("local_id"),
        "patient.csv",
        "",
    );
}

#[test]
fn phenotypes_follow_their_formats() {
    let row = |line: &str| {
        (
            "phenotype.csv",
            with_row(PHENOTYPE_HEADER, PHENOTYPE_ROWS, 1, line),
        )
    };
    expect_error(
        row("P5,HP:12345,"),
        3,
        Some("hpo_id"),
        "HP: followed by 7 digits",
        "HP:12345",
    );
    expect_error(
        row("P5,HP:0001279,no"),
        3,
        Some("excluded"),
        "true or false",
        "",
    );
    expect_error(
        row("P7,HP:0001279,"),
        3,
        Some("local_id"),
        "patient.csv",
        "",
    );
}

#[test]
fn line_numbers_count_lines_inside_quoted_cells() {
    // The gene symbol spans two lines, so the next row starts on line 4, not 3.
    let text =
        format!("{GENETIC_HEADER}\nP1,HGNC:7577,\"MYH7\nsecond line\",,,\nP1,HGNC:bad,,,,\n");
    let (errors, _, _) = ingest_errors(&[("genetic_finding.csv", text)]);
    let hgnc = errors
        .iter()
        .find(|e| e.column.as_deref() == Some("hgnc_id"))
        .expect("hgnc error");
    assert_eq!(hgnc.line, 4);
    // The line break inside the cell is a control character, so that cell is refused too.
    assert!(
        errors
            .iter()
            .any(|e| e.line == 2 && e.column.as_deref() == Some("gene_symbol"))
    );
}

#[test]
fn all_errors_of_all_files_are_reported_in_order() {
    let (errors, total, _) = ingest_errors(&[
        patient_row(0, "P1,1980-02-30,F,alive,,,,yes,yes,"),
        diagnosis_row(1, "P2,ORPHA:x,,,,"),
        (
            "phenotype.csv",
            with_row(PHENOTYPE_HEADER, PHENOTYPE_ROWS, 0, "P1,HP:1,maybe"),
        ),
    ]);
    assert_eq!(total, 5, "{errors:#?}");
    let places: Vec<(&str, u64, Option<&str>)> = errors
        .iter()
        .map(|e| (e.file, e.line, e.column.as_deref()))
        .collect();
    assert_eq!(
        places,
        vec![
            ("patient.csv", 2, Some("birth_date")),
            ("patient.csv", 2, Some("sex")),
            ("diagnosis.csv", 3, Some("code")),
            ("phenotype.csv", 2, Some("hpo_id")),
            ("phenotype.csv", 2, Some("excluded")),
        ]
    );
}

#[test]
fn a_flood_of_errors_is_capped_and_counted() {
    let rows: Vec<String> = (0..3000)
        .map(|i| format!("Q{i},1980-01-01,robot,,,,,yes,yes,"))
        .collect();
    let text = format!("{PATIENT_HEADER}\n{}\n", rows.join("\n"));
    let (errors, total, message) = ingest_errors(&[
        ("patient.csv", text),
        ("diagnosis.csv", format!("{DIAGNOSIS_HEADER}\n")),
        ("genetic_finding.csv", format!("{GENETIC_HEADER}\n")),
        ("phenotype.csv", format!("{PHENOTYPE_HEADER}\n")),
    ]);
    assert_eq!(total, 3000);
    assert_eq!(errors.len(), ern_ingest::MAX_ERRORS_PER_FILE);
    assert!(message.contains("… and 2950 more"), "{message}");
    assert!(message.lines().count() <= ern_ingest::MAX_ERRORS_SHOWN + 2);
}

#[test]
fn patient_csv_is_required_and_needs_a_header() {
    let dir = tempfile::tempdir().expect("temp dir");
    let missing = ingest(dir.path(), &key(), &dir.path().join("store"), &NoProgress);
    assert!(
        matches!(missing, Err(IngestError::MissingPatientFile { .. })),
        "{missing:?}"
    );
    let (errors, _, _) = ingest_errors(&[("patient.csv", String::new())]);
    assert_eq!((errors[0].file, errors[0].line), ("patient.csv", 1));
    assert!(errors[0].rule.contains("header row is required"));
}

#[test]
fn invalid_utf8_is_refused_with_its_line() {
    let dir = tempfile::tempdir().expect("temp dir");
    write_export(dir.path(), &[]);
    let mut bytes = format!("{PATIENT_HEADER}\n{}\n", PATIENT_ROWS.join("\n")).into_bytes();
    bytes.extend_from_slice(b"P6,1980,female,,,,,yes,yes,\xff\n");
    std::fs::write(dir.path().join("patient.csv"), bytes).expect("write");
    match ingest(dir.path(), &key(), &dir.path().join("store"), &NoProgress) {
        Err(IngestError::InvalidExport { errors, .. }) => {
            assert_eq!((errors[0].file, errors[0].line), ("patient.csv", 7));
            assert!(errors[0].rule.contains("UTF-8"));
        }
        other => panic!("expected an invalid export, got {other:?}"),
    }
}

#[test]
fn crlf_exports_and_blank_lines_keep_the_files_own_line_numbers() {
    // Windows exports end lines in CRLF; a blank line is skipped but still counted.
    let mut rows: Vec<&str> = DIAGNOSIS_ROWS.to_vec();
    rows[2] = "P3,ORPHA:x,,,,";
    let text = format!("{DIAGNOSIS_HEADER}\r\n{}\r\n\r\n", rows[..2].join("\r\n"))
        + &format!("{}\r\n", rows[2..].join("\r\n"));
    // Header line 1, rows on lines 2 and 3, a blank line 4, the bad code on line 5.
    expect_error(("diagnosis.csv", text), 5, Some("code"), "ORPHA", "ORPHA:x");
    let crlf = format!("{PATIENT_HEADER}\r\n{}\r\n", PATIENT_ROWS.join("\r\n"));
    let (errors, _, _) = ingest_errors(&[("patient.csv", crlf), diagnosis_row(3, "P5,OMIM:1,,,,")]);
    assert_eq!(
        errors.iter().map(|e| (e.file, e.line)).collect::<Vec<_>>(),
        vec![("diagnosis.csv", 5)],
        "a valid CRLF patient.csv adds no error: {errors:#?}"
    );
}

#[test]
fn quoting_that_readers_disagree_on_is_refused_with_its_line() {
    expect_error(
        patient_row(2, "P3,1990,unknown,,,,,unk\"nown,no,false"),
        4,
        None,
        "quote inside an unquoted cell",
        "unk",
    );
    expect_error(
        patient_row(2, "P3,1990,\"unknown\"x,,,,,unknown,no,false"),
        4,
        None,
        "text follows a closing quote",
        "",
    );
    expect_error(
        patient_row(2, "P3,1990,\"unknown,,,,,unknown,no,false"),
        4,
        None,
        "quoted cell is not closed",
        "",
    );
    expect_error(
        patient_row(3, "P4,2001-11-30,male,opted_out,,,,yes,yes,\rP9,1990"),
        5,
        None,
        "carriage return not followed by a line feed",
        "",
    );
}

/// Red team, 2026-12 (hostile exports): an export without its header row, or a
/// `patient.csv` linked to another file, printed the first line's cells in the error.
#[test]
fn a_file_without_its_header_row_is_refused_as_such_echoing_nothing() {
    let headerless = format!("{}\n", PATIENT_ROWS.join("\n"));
    let (errors, _, message) = ingest_errors(&[("patient.csv", headerless)]);
    assert_eq!(errors.len(), 1, "{message}");
    assert!(message.contains("not a header row"), "{message}");
    for cell in PATIENT_ROWS[0].split(',').filter(|c| c.len() > 3) {
        assert!(!message.contains(cell), "{cell} echoed: {message}");
    }
    let passwd = "root:x:0:0:root:/root:/bin/bash\ndaemon:x:1:1:daemon:/usr/sbin\n".to_string();
    let (_, _, message) = ingest_errors(&[("patient.csv", passwd)]);
    assert!(message.contains("not a header row"), "{message}");
    assert!(!message.contains("root"), "{message}");
}

/// A FIFO named like an export file once blocked ingest forever.
#[cfg(unix)]
#[test]
fn an_export_file_that_is_not_a_regular_file_is_refused_at_once() {
    let dir = tempfile::tempdir().expect("temp dir");
    let export = dir.path().join("export");
    std::fs::create_dir(&export).expect("export dir");
    write_export(&export, &[]);
    std::fs::remove_file(export.join("diagnosis.csv")).expect("remove");
    let fifo = std::process::Command::new("mkfifo")
        .arg(export.join("diagnosis.csv"))
        .status()
        .expect("mkfifo");
    assert!(fifo.success());
    match ingest(&export, &key(), &dir.path().join("store"), &NoProgress) {
        Err(IngestError::NotARegularFile { path }) => {
            assert!(path.ends_with("diagnosis.csv"), "{}", path.display())
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
}

/// A symbolic link planted at the store's lock file once had its target emptied.
#[cfg(unix)]
#[test]
fn a_link_planted_at_the_lock_file_is_not_followed() {
    let dir = tempfile::tempdir().expect("temp dir");
    let export = dir.path().join("export");
    std::fs::create_dir(&export).expect("export dir");
    write_export(&export, &[]);
    let store = dir.path().join("store");
    std::fs::create_dir(&store).expect("store");
    let victim = dir.path().join("victim.txt");
    std::fs::write(&victim, "precious").expect("victim");
    std::os::unix::fs::symlink(&victim, store.join(".ingest.lock")).expect("link");
    assert!(ingest(&export, &key(), &store, &NoProgress).is_err());
    assert_eq!(std::fs::read_to_string(&victim).expect("read"), "precious");
    assert!(!store.join("patient.parquet").exists());
}
