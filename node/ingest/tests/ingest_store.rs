//! What a successful ingest writes, and what a failed one leaves alone: pseudonyms checked
//! against an independent HMAC, consent, coarsening, derived ages, the exact Arrow schema,
//! and atomic replacement of the tables.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::Path;

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::datatypes::{Date32Type, Int32Type};
use ern_ingest::progress::NoProgress;
use ern_ingest::store;
use ern_ingest::{IngestError, ingest};
use ern_node::pseudonym::Pseudonymiser;
use ern_node::schema;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use ring::hmac;

const PATIENTS: &str = "\
local_id,birth_date,sex,vital_status,death_date,first_contact_date,undiagnosed,contact_for_research,consent_data_reuse,biosample_available
HOSP-0001,1980-05-12,female,alive,,2010-01-01,false,yes,yes,true
HOSP-0002,1975-03,male,dead,2020-01-01,,,no,yes,
HOSP-0003,1990,unknown,,,,,unknown,no,false
HOSP-0004,2001-11-30,male,opted_out,,,,yes,yes,
HOSP-0005,1960-07-01,female,lost_to_follow_up,,,true,yes,yes,false
HOSP-0006,1999,male,,,,,yes,unknown,
";
const DIAGNOSES: &str = "\
local_id,code,status,onset,onset_date,diagnosis_date
HOSP-0001,ORPHA:154,confirmed,date,1999-04-01,2003-02-01
HOSP-0001,ORPHA:154,confirmed,date,1999-05-12,2003-05-11
HOSP-0002,ICD10:I42.1,,at_birth,,1990-01-01
HOSP-0002,OMIM:192600,refuted,date,1980-02-01,1990-03-01
HOSP-0003,ORPHA:130,,,,
HOSP-0004,ORPHA:130,,antenatal,,
HOSP-0005,ORPHA:324,provisional,undetermined,,
";
const FINDINGS: &str = "\
local_id,hgnc_id,gene_symbol,hgvs,zygosity,causative
HOSP-0001,HGNC:7577,MYH7,NM_000257.4:c.1208G>A,heterozygous,true
HOSP-0003,HGNC:4296,GLA,,hemizygous,true
";
const PHENOTYPES: &str = "\
local_id,hpo_id,excluded
HOSP-0001,HP:0001639,false
HOSP-0005,HP:0001279,
HOSP-0006,HP:0001279,true
";

fn write_export(dir: &Path) {
    for (name, text) in [
        ("patient.csv", PATIENTS),
        ("diagnosis.csv", DIAGNOSES),
        ("genetic_finding.csv", FINDINGS),
        ("phenotype.csv", PHENOTYPES),
    ] {
        std::fs::write(dir.join(name), text).expect("write export file");
    }
}

fn read_table(store: &Path, table: &str) -> RecordBatch {
    let file = File::open(store::table_path(store, table)).expect("open table");
    let reader = ParquetRecordBatchReaderBuilder::try_new(file)
        .expect("parquet")
        .build()
        .expect("reader");
    let batches: Vec<RecordBatch> = reader.collect::<Result<_, _>>().expect("read");
    arrow::compute::concat_batches(&schema::by_name(table).expect("schema"), &batches)
        .expect("concat")
}

fn strings(batch: &RecordBatch, column: &str) -> Vec<Option<String>> {
    let array = batch.column_by_name(column).expect("column");
    array
        .as_string::<i32>()
        .iter()
        .map(|v| v.map(str::to_string))
        .collect()
}

fn ints(batch: &RecordBatch, column: &str) -> Vec<Option<i32>> {
    batch
        .column_by_name(column)
        .expect("column")
        .as_primitive::<Int32Type>()
        .iter()
        .collect()
}

/// HMAC-SHA256 computed here with ring's primitive, independently of ern's pseudonymiser.
fn expected_pid(key: &[u8; 32], local_id: &str) -> String {
    hex::encode(hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, key), local_id.as_bytes()).as_ref())
}

struct Ingested {
    _dir: tempfile::TempDir,
    store: std::path::PathBuf,
}

fn ingest_with(key: [u8; 32]) -> Ingested {
    let dir = tempfile::tempdir().expect("temp dir");
    let export = dir.path().join("export");
    std::fs::create_dir(&export).expect("mkdir");
    write_export(&export);
    let store = dir.path().join("store");
    ingest(&export, &Pseudonymiser::new(&key), &store, &NoProgress).expect("ingest");
    Ingested { _dir: dir, store }
}

const KEY_A: [u8; 32] = [0xa5; 32];
const KEY_B: [u8; 32] = [0x5a; 32];

#[test]
fn pid_is_hmac_sha256_of_the_local_id_under_the_site_key() {
    let ingested = ingest_with(KEY_A);
    let patient = read_table(&ingested.store, "patient");
    let pids: Vec<String> = strings(&patient, "pid").into_iter().flatten().collect();
    let expected: Vec<String> = ["HOSP-0001", "HOSP-0002", "HOSP-0005"]
        .iter()
        .map(|id| expected_pid(&KEY_A, id))
        .collect();
    assert_eq!(pids, expected);
    assert!(pids.iter().all(|p| {
        p.len() == 64
            && p.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    }));

    // Stable across runs, different under another key.
    let again = read_table(&ingest_with(KEY_A).store, "patient");
    assert_eq!(strings(&again, "pid"), strings(&patient, "pid"));
    let other = read_table(&ingest_with(KEY_B).store, "patient");
    let other_pids: Vec<String> = strings(&other, "pid").into_iter().flatten().collect();
    assert!(other_pids.iter().all(|p| !pids.contains(p)));

    // Every table's pid points at the same patient.
    let diagnosis = read_table(&ingested.store, "diagnosis");
    assert_eq!(
        strings(&diagnosis, "pid")[0].as_deref(),
        Some(expected[0].as_str())
    );
}

#[test]
fn no_local_id_appears_in_any_store_file() {
    let ingested = ingest_with(KEY_A);
    let local_ids: Vec<String> = (1..=6).map(|i| format!("HOSP-{i:04}")).collect();
    for entry in std::fs::read_dir(&ingested.store).expect("store") {
        let path = entry.expect("entry").path();
        if path.is_dir() {
            continue;
        }
        let bytes = std::fs::read(&path).expect("read");
        for id in &local_ids {
            let found = bytes.windows(id.len()).any(|w| w == id.as_bytes());
            assert!(!found, "{} holds {id}", path.display());
        }
    }
    for table in schema::PATIENT_TABLES {
        let batch = read_table(&ingested.store, table);
        for (index, field) in batch.schema().fields().iter().enumerate() {
            if let Some(values) = batch.column(index).as_string_opt::<i32>() {
                for value in values.iter().flatten() {
                    assert!(
                        !local_ids.iter().any(|id| value.contains(id.as_str())),
                        "{table}.{} holds a local id",
                        field.name()
                    );
                }
            }
        }
    }
}

#[test]
fn tables_have_exactly_the_contract_schema() {
    let ingested = ingest_with(KEY_A);
    for table in schema::PATIENT_TABLES {
        let file = File::open(store::table_path(&ingested.store, table)).expect("open");
        let builder = ParquetRecordBatchReaderBuilder::try_new(file).expect("parquet");
        let read = builder.schema();
        let expected = schema::by_name(table).expect("schema");
        assert_eq!(read.fields(), expected.fields(), "{table}");
    }
}

#[test]
fn patients_without_consent_and_all_their_rows_are_left_out() {
    let ingested = ingest_with(KEY_A);
    let left_out = ["HOSP-0003", "HOSP-0004", "HOSP-0006"].map(|id| expected_pid(&KEY_A, id));
    for table in schema::PATIENT_TABLES {
        let batch = read_table(&ingested.store, table);
        for pid in strings(&batch, "pid").into_iter().flatten() {
            assert!(
                !left_out.contains(&pid),
                "{table} holds a patient without consent"
            );
        }
    }
    assert_eq!(read_table(&ingested.store, "patient").num_rows(), 3);
    assert_eq!(read_table(&ingested.store, "diagnosis").num_rows(), 5);
    assert_eq!(read_table(&ingested.store, "genetic_finding").num_rows(), 1);
    assert_eq!(read_table(&ingested.store, "phenotype").num_rows(), 2);
}

#[test]
fn birth_dates_are_coarsened_and_values_carried_over() {
    let ingested = ingest_with(KEY_A);
    let patient = read_table(&ingested.store, "patient");
    assert_eq!(
        ints(&patient, "birth_year"),
        vec![Some(1980), Some(1975), Some(1960)]
    );
    assert_eq!(
        ints(&patient, "birth_month"),
        vec![Some(5), Some(3), Some(7)]
    );
    assert_eq!(
        strings(&patient, "vital_status"),
        vec![
            Some("alive".into()),
            Some("dead".into()),
            Some("lost_to_follow_up".into())
        ]
    );
    assert_eq!(
        strings(&patient, "contact_for_research"),
        vec![Some("yes".into()), Some("no".into()), Some("yes".into())]
    );
    let death: Vec<Option<i32>> = patient
        .column_by_name("death_date")
        .expect("death")
        .as_primitive::<Date32Type>()
        .iter()
        .collect();
    assert_eq!(death, vec![None, Some(18_262), None]); // 2020-01-01
    let undiagnosed = patient
        .column_by_name("undiagnosed")
        .expect("undiagnosed")
        .as_boolean();
    assert_eq!(
        undiagnosed.iter().collect::<Vec<_>>(),
        vec![Some(false), None, Some(true)]
    );
    // No column keeps the day of birth or the consent answer.
    assert!(patient.schema().fields().iter().all(|f| !["birth_date", "consent_data_reuse", "local_id"].contains(&f.name().as_str())));
}

#[test]
fn diagnosis_ages_systems_and_defaults_are_derived() {
    let ingested = ingest_with(KEY_A);
    let diagnosis = read_table(&ingested.store, "diagnosis");
    assert_eq!(
        strings(&diagnosis, "code_system")
            .into_iter()
            .flatten()
            .collect::<Vec<_>>(),
        vec!["ORPHA", "ORPHA", "ICD10", "OMIM", "ORPHA"]
    );
    assert_eq!(
        strings(&diagnosis, "status")
            .into_iter()
            .flatten()
            .collect::<Vec<_>>(),
        vec![
            "confirmed",
            "confirmed",
            "confirmed",
            "refuted",
            "provisional"
        ]
    );
    // Born 1980-05: onset 1999-04 is before the birthday (18), 1999-05 on it (19).
    // Born 1975-03: at birth is 0; 1980-02 is before the birthday (4); diagnosis 1990-01 (14), 1990-03 (15).
    assert_eq!(
        ints(&diagnosis, "age_at_onset"),
        vec![Some(18), Some(19), Some(0), Some(4), None]
    );
    assert_eq!(
        ints(&diagnosis, "age_at_diagnosis"),
        vec![Some(22), Some(23), Some(14), Some(15), None]
    );
    let phenotype = read_table(&ingested.store, "phenotype");
    let excluded = phenotype
        .column_by_name("excluded")
        .expect("excluded")
        .as_boolean();
    assert_eq!(
        excluded.iter().collect::<Vec<_>>(),
        vec![Some(false), Some(false)]
    );
    assert_eq!(excluded.null_count(), 0);
}

fn snapshot(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut files = BTreeMap::new();
    for entry in walk(dir) {
        let name = entry
            .strip_prefix(dir)
            .expect("prefix")
            .display()
            .to_string();
        files.insert(name, std::fs::read(&entry).expect("read"));
    }
    files
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).expect("read dir") {
        let path = entry.expect("entry").path();
        if path.is_dir() {
            out.extend(walk(&path))
        } else {
            out.push(path)
        }
    }
    out
}

#[test]
fn a_failed_ingest_leaves_the_store_byte_identical() {
    let ingested = ingest_with(KEY_A);
    std::fs::write(ingested.store.join("audit.log"), "entry 1\n").expect("audit");
    let before = snapshot(&ingested.store);

    let bad = tempfile::tempdir().expect("temp dir");
    write_export(bad.path());
    let broken = PATIENTS.replace("HOSP-0002,1975-03,male", "HOSP-0002,1975-03,robot");
    std::fs::write(bad.path().join("patient.csv"), broken).expect("write");
    let result = ingest(
        bad.path(),
        &Pseudonymiser::new(&KEY_B),
        &ingested.store,
        &NoProgress,
    );
    assert!(
        matches!(result, Err(IngestError::InvalidExport { .. })),
        "{result:?}"
    );
    assert_eq!(snapshot(&ingested.store), before);

    // A missing patient file: also nothing touched.
    std::fs::remove_file(bad.path().join("patient.csv")).expect("remove");
    assert!(
        ingest(
            bad.path(),
            &Pseudonymiser::new(&KEY_B),
            &ingested.store,
            &NoProgress
        )
        .is_err()
    );
    assert_eq!(snapshot(&ingested.store), before);
}

#[test]
fn a_successful_ingest_replaces_tables_and_keeps_other_files() {
    let ingested = ingest_with(KEY_A);
    std::fs::write(ingested.store.join("audit.log"), "entry 1\n").expect("audit");
    let export = tempfile::tempdir().expect("temp dir");
    write_export(export.path());
    std::fs::write(export.path().join("patient.csv"), PATIENTS.replace("consent_data_reuse,biosample_available\nHOSP-0001,1980-05-12,female,alive,,2010-01-01,false,yes,yes,true", "consent_data_reuse,biosample_available\nHOSP-0001,1980-05-12,female,alive,,2010-01-01,false,yes,no,true")).expect("write");
    ingest(
        export.path(),
        &Pseudonymiser::new(&KEY_A),
        &ingested.store,
        &NoProgress,
    )
    .expect("second ingest");
    assert_eq!(read_table(&ingested.store, "patient").num_rows(), 2);
    assert_eq!(
        std::fs::read_to_string(ingested.store.join("audit.log")).expect("audit"),
        "entry 1\n"
    );
    let leftovers: Vec<_> = std::fs::read_dir(&ingested.store)
        .expect("store")
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().starts_with(".staging"))
        .collect();
    assert!(leftovers.is_empty());
}

#[test]
fn an_interrupted_commit_is_rolled_forward_and_an_unfinished_one_discarded() {
    let ingested = ingest_with(KEY_A);
    let before = std::fs::read(store::table_path(&ingested.store, "patient")).expect("patient");
    let other = ingest_with(KEY_B);
    let newer = std::fs::read(store::table_path(&other.store, "patient")).expect("patient");

    // Unfinished staging (no commit mark): discarded, tables unchanged.
    let unfinished = ingested.store.join(".staging-1");
    std::fs::create_dir(&unfinished).expect("mkdir");
    std::fs::write(unfinished.join("patient.parquet"), &newer).expect("write");
    store::recover(&ingested.store).expect("recover");
    assert!(!unfinished.exists());
    assert_eq!(
        std::fs::read(store::table_path(&ingested.store, "patient")).expect("patient"),
        before
    );

    // Committed staging: moved into place.
    let committed = ingested.store.join(".staging-2");
    std::fs::create_dir(&committed).expect("mkdir");
    std::fs::write(committed.join("patient.parquet"), &newer).expect("write");
    std::fs::write(committed.join("COMMITTED"), "").expect("mark");
    store::recover(&ingested.store).expect("recover");
    assert!(!committed.exists());
    assert_eq!(
        std::fs::read(store::table_path(&ingested.store, "patient")).expect("patient"),
        newer
    );
}

/// `text` with its data rows in reverse order (header first).
fn rows_reversed(text: &str) -> String {
    let mut lines: Vec<&str> = text.lines().collect();
    lines[1..].reverse();
    format!("{}\n", lines.join("\n"))
}

/// Every row of every table as text, sorted: the store's content regardless of row order.
fn store_rows(store: &Path) -> BTreeMap<&'static str, Vec<String>> {
    use arrow::util::display::{ArrayFormatter, FormatOptions};
    let mut tables = BTreeMap::new();
    for table in ["patient", "diagnosis", "genetic_finding", "phenotype"] {
        let batch = read_table(store, table);
        let options = FormatOptions::default().with_null("∅");
        let formatters: Vec<ArrayFormatter> = batch
            .columns()
            .iter()
            .map(|column| ArrayFormatter::try_new(column.as_ref(), &options).expect("formatter"))
            .collect();
        let mut rows: Vec<String> = (0..batch.num_rows())
            .map(|row| {
                formatters
                    .iter()
                    .map(|f| f.value(row).to_string())
                    .collect::<Vec<_>>()
                    .join("|")
            })
            .collect();
        rows.sort();
        tables.insert(table, rows);
    }
    tables
}

#[test]
fn the_order_of_export_rows_does_not_change_what_is_stored() {
    // Sorted patients with rows in patient order take the fast paths (ids rising, each
    // dependent row next to the previous one); reversed dependent rows make every lookup
    // a search, and reversed patients make the index a hash table.
    let sorted = ingest_with(KEY_A);
    let expected = store_rows(&sorted.store);
    assert_eq!(expected["diagnosis"].len(), 5, "{expected:#?}");
    let key = Pseudonymiser::new(&KEY_A);
    for reverse_patients in [false, true] {
        let dir = tempfile::tempdir().expect("temp dir");
        let export = dir.path().join("export");
        std::fs::create_dir(&export).expect("mkdir");
        let patients = if reverse_patients {
            rows_reversed(PATIENTS)
        } else {
            PATIENTS.to_string()
        };
        for (name, text) in [
            ("patient.csv", patients),
            ("diagnosis.csv", rows_reversed(DIAGNOSES)),
            ("genetic_finding.csv", rows_reversed(FINDINGS)),
            ("phenotype.csv", rows_reversed(PHENOTYPES)),
        ] {
            std::fs::write(export.join(name), text).expect("write export file");
        }
        let store = dir.path().join("store");
        ingest(&export, &key, &store, &NoProgress).expect("ingest");
        assert_eq!(
            store_rows(&store),
            expected,
            "reversed patients: {reverse_patients}"
        );
    }
}

#[test]
fn a_repeated_local_id_is_found_in_sorted_and_unsorted_patient_files() {
    for patients in [
        // Rising ids but one repeated: not strictly rising, so the hash table finds it.
        PATIENTS.replace("HOSP-0003", "HOSP-0002"),
        rows_reversed(&PATIENTS.replace("HOSP-0005", "HOSP-0001")),
    ] {
        let dir = tempfile::tempdir().expect("temp dir");
        let export = dir.path().join("export");
        std::fs::create_dir(&export).expect("mkdir");
        write_export(&export);
        std::fs::write(export.join("patient.csv"), &patients).expect("write");
        let result = ingest(
            &export,
            &Pseudonymiser::new(&KEY_A),
            &dir.path().join("store"),
            &NoProgress,
        );
        match result {
            Err(IngestError::InvalidExport { errors, .. }) => {
                assert!(
                    errors
                        .iter()
                        .any(|e| e.column.as_deref() == Some("local_id")
                            && e.rule.contains("unique")),
                    "{errors:#?}"
                );
            }
            other => panic!("expected a refused export, got {other:?}"),
        }
    }
}

#[test]
fn a_generation_abandoned_half_written_leaves_the_store_as_it_was() {
    // What an ingest that fails while writing (a full disk, a build error in one table)
    // leaves: some tables written to staging, no commit.
    let ingested = ingest_with(KEY_A);
    let before = snapshot(&ingested.store);
    let other = ingest_with(KEY_B);
    {
        let staged = store::StagedGeneration::begin(&ingested.store).expect("begin");
        staged
            .write_table("patient", &read_table(&other.store, "patient"))
            .expect("write one table");
        // A second writer is refused while this generation holds the store.
        assert!(matches!(
            store::StagedGeneration::begin(&ingested.store),
            Err(IngestError::Busy { .. })
        ));
    }
    assert_eq!(snapshot(&ingested.store), before);
    let leftovers = std::fs::read_dir(&ingested.store)
        .expect("store")
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().starts_with(".staging"))
        .count();
    assert_eq!(leftovers, 0, "the staging directory is removed");
}
