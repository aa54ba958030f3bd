//! The synthetic generator: deterministic bytes, valid exports, and stores whose counts,
//! queried with plain DataFusion, match what the CSV files imply.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;

use datafusion::arrow::array::{AsArray, RecordBatch};
use datafusion::arrow::datatypes::Int64Type;
use datafusion::prelude::{ParquetReadOptions, SessionContext};
use ern_ingest::ingest;
use ern_ingest::progress::NoProgress;
use ern_node::pseudonym::Pseudonymiser;
use ern_node::{schema, store};
use ern_synth::{SynthConfig, synthesize};

fn files(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    for site in std::fs::read_dir(dir).expect("read dir") {
        let site = site.expect("entry").path();
        for file in std::fs::read_dir(&site).expect("site dir") {
            let file = file.expect("entry").path();
            let name = file
                .strip_prefix(dir)
                .expect("prefix")
                .display()
                .to_string();
            out.insert(name, std::fs::read(&file).expect("read"));
        }
    }
    out
}

#[test]
fn the_same_arguments_give_identical_bytes() {
    let a = tempfile::tempdir().expect("temp dir");
    let b = tempfile::tempdir().expect("temp dir");
    let c = tempfile::tempdir().expect("temp dir");
    let config = SynthConfig {
        sites: 3,
        patients: 3000,
        seed: 11,
    };
    synthesize(config, a.path(), &NoProgress).expect("synth a");
    synthesize(config, b.path(), &NoProgress).expect("synth b");
    synthesize(SynthConfig { seed: 12, ..config }, c.path(), &NoProgress).expect("synth c");
    let (fa, fb, fc) = (files(a.path()), files(b.path()), files(c.path()));
    assert_eq!(fa.len(), 12);
    assert_eq!(fa, fb);
    assert_ne!(fa, fc);
}

/// Counts computed straight from the CSV files, without ern's ingest.
#[derive(Debug, Default)]
struct Expected {
    patients: i64,
    diagnoses: i64,
    findings: i64,
    phenotypes: i64,
    patients_per_code: HashMap<String, HashSet<String>>,
    undiagnosed: i64,
}

fn expected_counts(site: &Path) -> Expected {
    let mut expected = Expected::default();
    let mut consented = HashSet::new();
    let mut reader = csv::Reader::from_path(site.join("patient.csv")).expect("patient.csv");
    let header = reader.headers().expect("header").clone();
    let column = |name: &str| header.iter().position(|h| h == name).expect("column");
    let (id, consent, vital, undiagnosed) = (
        column("local_id"),
        column("consent_data_reuse"),
        column("vital_status"),
        column("undiagnosed"),
    );
    for row in reader.records() {
        let row = row.expect("row");
        if &row[consent] == "yes" && &row[vital] != "opted_out" {
            consented.insert(row[id].to_string());
            expected.patients += 1;
            expected.undiagnosed += i64::from(&row[undiagnosed] == "true");
        }
    }
    let count_rows = |file: &str, mut each: Box<dyn FnMut(&csv::StringRecord)>| -> i64 {
        let mut reader = csv::Reader::from_path(site.join(file)).expect("file");
        let mut n = 0;
        for row in reader.records() {
            let row = row.expect("row");
            if consented.contains(&row[0]) {
                n += 1;
                each(&row);
            }
        }
        n
    };
    let mut per_code: HashMap<String, HashSet<String>> = HashMap::new();
    expected.diagnoses = count_rows(
        "diagnosis.csv",
        Box::new(|row| {
            per_code
                .entry(row[1].to_string())
                .or_default()
                .insert(row[0].to_string());
        }),
    );
    expected.findings = count_rows("genetic_finding.csv", Box::new(|_| {}));
    expected.phenotypes = count_rows("phenotype.csv", Box::new(|_| {}));
    expected.patients_per_code = per_code;
    expected
}

async fn scalar(ctx: &SessionContext, sql: &str) -> i64 {
    let batches: Vec<RecordBatch> = ctx
        .sql(sql)
        .await
        .expect("plan")
        .collect()
        .await
        .expect("run");
    batches[0].column(0).as_primitive::<Int64Type>().value(0)
}

#[tokio::test]
async fn every_synthetic_site_ingests_and_queries_match_the_export() {
    let dir = tempfile::tempdir().expect("temp dir");
    let exports = dir.path().join("exports");
    let sites = synthesize(
        SynthConfig {
            sites: 3,
            patients: 6000,
            seed: 5,
        },
        &exports,
        &NoProgress,
    )
    .expect("synth");
    let sizes: Vec<usize> = sites.iter().map(|s| s.rows[0]).collect();
    assert!(
        sizes[0] > sizes[2],
        "sites should differ in size: {sizes:?}"
    );
    for (index, site) in sites.iter().enumerate() {
        let store_dir = dir.path().join(format!("store-{index}"));
        let report = ingest(
            &site.dir,
            &Pseudonymiser::new(&[index as u8; 32]),
            &store_dir,
            &NoProgress,
        )
        .expect("synthetic export ingests");
        let left_out = report.patients_left_out as f64 / report.patients_read as f64;
        assert!(
            (0.03..0.12).contains(&left_out),
            "share without consent {left_out}"
        );

        let ctx = SessionContext::new();
        for table in schema::PATIENT_TABLES {
            let path = store::table_path(&store_dir, table);
            ctx.register_parquet(
                table,
                path.to_str().expect("utf-8 path"),
                ParquetReadOptions::default(),
            )
            .await
            .expect("register");
        }
        let expected = expected_counts(&site.dir);
        assert_eq!(
            scalar(&ctx, "SELECT COUNT(*) FROM patient").await,
            expected.patients
        );
        assert_eq!(
            scalar(&ctx, "SELECT COUNT(DISTINCT pid) FROM patient").await,
            expected.patients
        );
        assert_eq!(
            scalar(&ctx, "SELECT COUNT(*) FROM diagnosis").await,
            expected.diagnoses
        );
        assert_eq!(
            scalar(&ctx, "SELECT COUNT(*) FROM genetic_finding").await,
            expected.findings
        );
        assert_eq!(
            scalar(&ctx, "SELECT COUNT(*) FROM phenotype").await,
            expected.phenotypes
        );
        assert_eq!(
            scalar(&ctx, "SELECT COUNT(*) FROM patient WHERE undiagnosed").await,
            expected.undiagnosed
        );
        for code in ["ORPHA:217569", "ORPHA:154", "ORPHA:130"] {
            let sql = format!(
                "SELECT COUNT(DISTINCT p.pid) FROM patient p JOIN diagnosis d ON p.pid = d.pid WHERE d.code = '{code}'"
            );
            let want = expected
                .patients_per_code
                .get(code)
                .map_or(0, |s| s.len() as i64);
            assert_eq!(scalar(&ctx, &sql).await, want, "{code}");
        }
        // Every dependent row belongs to a stored patient.
        let orphans = "SELECT COUNT(*) FROM diagnosis d LEFT JOIN patient p ON p.pid = d.pid WHERE p.pid IS NULL";
        assert_eq!(scalar(&ctx, orphans).await, 0);
        // Realism: a long tail of disorders, delays of years, genes for about a third.
        let codes = scalar(
            &ctx,
            "SELECT COUNT(DISTINCT code) FROM diagnosis WHERE code_system = 'ORPHA'",
        )
        .await;
        assert!(codes > 25, "only {codes} ORPHA codes");
        let delay = scalar(&ctx, "SELECT CAST(AVG(age_at_diagnosis - age_at_onset) AS BIGINT) FROM diagnosis WHERE age_at_onset IS NOT NULL AND age_at_diagnosis IS NOT NULL").await;
        assert!((1..=10).contains(&delay), "mean delay {delay}");
        let with_genes = scalar(&ctx, "SELECT COUNT(DISTINCT pid) FROM genetic_finding").await
            as f64
            / expected.patients as f64;
        assert!(
            (0.2..0.45).contains(&with_genes),
            "share with genes {with_genes}"
        );
    }
}
