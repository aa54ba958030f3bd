//! What the coordinator keeps of a secure-aggregation round: never a site's own vector
//! (DESIGN.md, "Secure aggregation": "no one but a hospital ever sees that hospital's own
//! numbers"). A real coordinator and real nodes over mutual TLS run a round on hand-made
//! stores whose every count the test knows; then the coordinator's SQLite file and its
//! write-ahead log, and every log line at TRACE level, are searched for each site's plain
//! vector, in binary (u64 little- and big-endian) and in decimal.
//!
//! A test binary of its own: the log capture is a global subscriber, so that it sees the
//! coordinator's tasks wherever they run.

use std::io::Write;
use std::path::Path;
use std::sync::{Arc, Mutex, OnceLock};

use ern_proto::arrow_ipc;
use ern_queries::Planner;
use ern_queries::catalog::planning_state;
use ern_test_support::fixture::{collect_sql, plain_count_vector, pooled_plain_context};
use ern_test_support::network::{Network, Patient, SiteSetup, store_of};
use ern_test_support::rows;

/// The showcase question: patients per disorder (Orphanet name) and sex; its domain is
/// every disorder of the shipped table times the four sexes.
const DISORDER_BY_SEX: &str = "SELECT t.name AS disorder, p.sex, COUNT(DISTINCT p.pid) AS patients FROM patient p JOIN diagnosis d ON d.pid = p.pid JOIN orpha_term t ON t.orpha_code = d.code GROUP BY t.name, p.sex ORDER BY t.name, p.sex";

/// Each site's counts per disorder and sex, for plain DataFusion.
const PLAIN_COUNTS: &str = "SELECT t.name, p.sex, COUNT(DISTINCT p.pid) AS patients FROM patient p JOIN diagnosis d ON d.pid = p.pid JOIN orpha_term t ON t.orpha_code = d.code GROUP BY t.name, p.sex";

/// The network's answer: k = 5 on the pooled counts.
const POOLED_AT_K: &str = "SELECT t.name AS disorder, p.sex, COUNT(DISTINCT p.pid) AS patients FROM patient p JOIN diagnosis d ON d.pid = p.pid JOIN orpha_term t ON t.orpha_code = d.code GROUP BY t.name, p.sex HAVING COUNT(DISTINCT p.pid) >= 5 ORDER BY t.name, p.sex";

/// Everything every subscriber event wrote, as text.
fn log_buffer() -> &'static Arc<Mutex<Vec<u8>>> {
    static BUFFER: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    BUFFER.get_or_init(|| Arc::new(Mutex::new(Vec::new())))
}

/// One writer into [`log_buffer`].
struct BufferWriter(Arc<Mutex<Vec<u8>>>);

impl Write for BufferWriter {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Installs the global subscriber: every event of every target at TRACE, into the buffer.
fn capture_logs() {
    static INSTALLED: OnceLock<()> = OnceLock::new();
    INSTALLED.get_or_init(|| {
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::TRACE)
            .with_ansi(false)
            .with_writer(|| BufferWriter(Arc::clone(log_buffer())))
            .finish();
        tracing::subscriber::set_global_default(subscriber).expect("the only subscriber");
    });
}

fn logged_text() -> String {
    let bytes = log_buffer()
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .clone();
    String::from_utf8_lossy(&bytes).into_owned()
}

/// Each site's patients: no site has 5 in any cell; the network has 9 women and 8 men
/// with ORPHA:154 and 5 women with ORPHA:130 (released), 1 man and 2 of unknown sex with
/// ORPHA:130 (hidden). No released total equals any site's own count.
fn site_patients(site: &str) -> Vec<Patient> {
    let counts: &[(&str, &str, usize)] = match site {
        "site-a" => &[
            ("ORPHA:154", "female", 3),
            ("ORPHA:154", "male", 4),
            ("ORPHA:130", "female", 2),
            ("ORPHA:130", "male", 1),
        ],
        "site-b" => &[
            ("ORPHA:154", "female", 2),
            ("ORPHA:154", "male", 3),
            ("ORPHA:130", "unknown", 2),
        ],
        _ => &[
            ("ORPHA:154", "female", 4),
            ("ORPHA:154", "male", 1),
            ("ORPHA:130", "female", 3),
        ],
    };
    let mut patients = Vec::new();
    for (code, sex, count) in counts {
        for _ in 0..*count {
            let n = patients.len();
            patients.push(Patient::new(&format!("P{n}"), 1950 + n as u32, sex, code));
        }
    }
    patients
}

/// What a site's vector looks like if it leaked: the whole vector, and around each run
/// of its non-zero values a window of the vector (a store splits a long blob over pages,
/// so the pieces are searched too), as u64 little- and big-endian bytes and as decimal
/// lists.
struct Needles {
    bytes: Vec<(String, Vec<u8>)>,
    text: Vec<(String, String)>,
}

fn le(values: &[u64]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

fn be(values: &[u64]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_be_bytes()).collect()
}

fn decimal(values: &[u64], separator: &str) -> String {
    values
        .iter()
        .map(u64::to_string)
        .collect::<Vec<_>>()
        .join(separator)
}

impl Needles {
    fn of(site: &str, vector: &[u64]) -> Needles {
        let mut pieces = vec![(format!("{site}: the whole vector"), vector.to_vec())];
        // Windows: each run of non-zero slots with three slots either side.
        let mut slot = 0;
        while slot < vector.len() {
            if vector[slot] == 0 {
                slot += 1;
                continue;
            }
            let mut end = slot;
            while end < vector.len() && vector[end] != 0 {
                end += 1;
            }
            let (from, to) = (slot.saturating_sub(3), (end + 3).min(vector.len()));
            pieces.push((
                format!("{site}: slots {from}..{to}"),
                vector[from..to].to_vec(),
            ));
            slot = end;
        }
        assert!(pieces.len() > 1, "{site} has numbers to leak");
        let mut bytes = Vec::new();
        let mut text = Vec::new();
        for (name, values) in pieces {
            bytes.push((format!("{name}, u64 little-endian"), le(&values)));
            bytes.push((format!("{name}, u64 big-endian"), be(&values)));
            for separator in [", ", ",", " ", "\n"] {
                text.push((
                    format!("{name}, decimal separated by {separator:?}"),
                    decimal(&values, separator),
                ));
            }
        }
        Needles { bytes, text }
    }

    /// The names of the needles found in `haystack`.
    fn in_bytes(&self, haystack: &[u8]) -> Vec<String> {
        self.bytes
            .iter()
            .filter(|(_, needle)| {
                haystack
                    .windows(needle.len())
                    .any(|w| w == needle.as_slice())
            })
            .map(|(name, _)| name.clone())
            .collect()
    }

    fn in_text(&self, haystack: &str) -> Vec<String> {
        self.text
            .iter()
            .filter(|(_, needle)| haystack.contains(needle.as_str()))
            .map(|(name, _)| name.clone())
            .collect()
    }
}

/// `bytes` as a store would split them over 4 KiB pages with a 4-byte header each.
fn paged(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    for chunk in bytes.chunks(4092) {
        out.extend_from_slice(&[0xde, 0xad, 0xbe, 0xef]);
        out.extend_from_slice(chunk);
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_coordinator_never_holds_a_sites_plain_vector() {
    capture_logs();
    let work = tempfile::tempdir().expect("temp dir");
    let ids = ["site-a", "site-b", "site-c"];
    let setups: Vec<SiteSetup<'static>> = ids
        .into_iter()
        .enumerate()
        .map(|(index, id)| {
            let store = store_of(
                &work.path().join(id),
                &site_patients(id),
                &[index as u8 + 21; 32],
            );
            SiteSetup { id, store }
        })
        .collect();
    let stores: Vec<std::path::PathBuf> = setups.iter().map(|s| s.store.clone()).collect();

    let plan = Planner::new()
        .plan(DISORDER_BY_SEX, &planning_state().expect("planning state"))
        .await
        .expect("plan");
    assert_eq!(plan.mode().name(), "secure");
    let layout = plan.secure_layout().expect("layout");
    assert!(
        layout.domain().cells() > 200 * 4,
        "{}",
        layout.domain().cells()
    );
    let mut needles = Vec::new();
    for (id, store) in ids.iter().zip(&stores) {
        needles.push((
            *id,
            Needles::of(id, &plain_count_vector(store, layout, PLAIN_COUNTS).await),
        ));
    }

    let network = Network::start(setups, |_, _| {}).await;
    let id = network.ask(DISORDER_BY_SEX).await;

    // The round completed, and released exactly the pooled cells at k.
    let states = network.site_states(&id);
    assert!(
        states.iter().all(|(_, state, _)| state == "aggregated"),
        "{states:?}"
    );
    let (batches, results) = network.results(&id).await;
    assert_eq!(results.mode, "secure");
    let store_refs: Vec<&Path> = stores.iter().map(|s| s.as_path()).collect();
    let pooled = collect_sql(&pooled_plain_context(&store_refs).await, POOLED_AT_K).await;
    let released = rows::text_rows(&batches);
    assert_eq!(released, rows::text_rows(&pooled));
    assert_eq!(released.len(), 3, "{released:?}");

    // The coordinator's rows: no site has a stored partial; the question's stored totals
    // are the released cells and nothing else.
    let db = network.loopback.core.db();
    for target in db.targets(&id).expect("targets") {
        assert!(
            target.partial.is_none(),
            "{}: a partial is stored for a secure question",
            target.site
        );
    }
    let totals = db
        .secure_totals(&id)
        .expect("totals")
        .expect("the released totals are stored");
    let (_, total_batches) = arrow_ipc::decode(&totals).expect("decode");
    let mut stored = rows::text_rows(&total_batches);
    stored.sort();
    let mut shown = released.clone();
    shown.sort();
    assert_eq!(stored, shown, "the stored totals are the released table");

    // The files and the log never hold a site's plain vector.
    let db_path = network.loopback.db_path();
    let mut files = Vec::new();
    for suffix in ["", "-wal"] {
        let path = std::path::PathBuf::from(format!("{}{suffix}", db_path.display()));
        if let Ok(bytes) = std::fs::read(&path) {
            files.push((path, bytes));
        }
    }
    assert!(!files.is_empty() && !files[0].1.is_empty());
    let log = logged_text();
    assert!(
        log.contains("secure round complete"),
        "the capture saw the coordinator's round"
    );
    for (site, needles) in &needles {
        for (path, bytes) in &files {
            let found = needles.in_bytes(bytes);
            assert!(
                found.is_empty(),
                "{}: {site}'s vector: {found:?}",
                path.display()
            );
        }
        let found = needles.in_text(&log);
        assert!(found.is_empty(), "the log holds {site}'s vector: {found:?}");
    }

    // The search finds a vector where there is one: split over pages, and in a log line.
    for (site, needles) in &needles {
        let whole = &needles.bytes[0].1;
        let found = needles.in_bytes(&paged(whole));
        assert!(found.len() >= 2, "{site}: {found:?}");
    }
    let (site, control) = &needles[0];
    let vector: Vec<u64> = control.bytes[0]
        .1
        .chunks(8)
        .map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes")))
        .collect();
    tracing::trace!(target: "ern_coordinator::control", values = ?vector, "a control line");
    let found = control.in_text(&logged_text());
    assert!(!found.is_empty(), "{site}: the control line was not found");
}
