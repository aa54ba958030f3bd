//! A real ern network for end-to-end tests: the `ern` binary started as separate
//! processes (one coordinator, one node per site) with their own config files, talking
//! gRPC over loopback, and driven through the same commands a user types.

#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// The `ern` binary under test.
pub(crate) fn ern_bin() -> &'static str {
    env!("CARGO_BIN_EXE_ern")
}

/// Runs `ern` with `args` and no coordinator environment.
pub(crate) fn ern(args: &[&str]) -> Output {
    Command::new(ern_bin())
        .args(args)
        .env("ERN_LOG", "warn")
        .env_remove("ERN_TOKEN")
        .env_remove("ERN_COORDINATOR")
        .env_remove("ERN_CA")
        .output()
        .expect("run ern")
}

/// Text of stdout.
pub(crate) fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Text of stderr.
pub(crate) fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// A path as text.
pub(crate) fn path(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

/// Asserts success and returns stdout.
#[track_caller]
pub(crate) fn ok(output: Output) -> String {
    assert!(
        output.status.success(),
        "ern failed\nstdout: {}\nstderr: {}",
        stdout(&output),
        stderr(&output)
    );
    stdout(&output)
}

/// Polls `condition` every 50 ms until it holds or `timeout` passes.
#[track_caller]
pub(crate) fn wait_until(what: &str, timeout: Duration, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `ern synth` of `sites` exports with `patients` in all into `out`.
#[track_caller]
pub(crate) fn synth(out: &Path, sites: usize, patients: usize, seed: u64) {
    ok(ern(&[
        "synth",
        "--sites",
        &sites.to_string(),
        "--patients",
        &patients.to_string(),
        "--seed",
        &seed.to_string(),
        "--out",
        path(out),
    ]));
}

/// Starts `ern` with `args` in the background, its stderr appended to `log`.
pub(crate) fn spawn_logged(args: &[&str], log: &Path) -> Child {
    Command::new(ern_bin())
        .args(args)
        .env("ERN_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::from(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(log)
                .expect("log file"),
        ))
        .spawn()
        .expect("start ern")
}

/// A free loopback port.
pub(crate) fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("address")
        .port()
}

/// One site of the test network.
#[derive(Debug, Clone)]
pub(crate) struct Site {
    /// Site id.
    pub(crate) id: String,
    /// Its raw export.
    pub(crate) export: PathBuf,
    /// Its directory (store, keys, node.toml).
    pub(crate) dir: PathBuf,
    /// The steward's private key.
    pub(crate) steward_key: PathBuf,
    /// The steward's token.
    pub(crate) steward_token: String,
    /// The node's token.
    pub(crate) node_token: String,
}

/// How the harness's nodes combine their numbers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Aggregation {
    /// No `[secure_aggregation]` in node.toml: every question runs per site, each node
    /// dropping its own groups under k (a question is answered while another approved
    /// site is offline).
    PerSite,
    /// Every site makes an identity key (`ern keygen site`) and every node.toml turns
    /// secure aggregation on with the roster of all the network's sites: an eligible
    /// question approved by at least 3 sites runs securely, waiting for every approved
    /// node (up to the site timeout).
    Secure,
}

/// The study the harness's researcher is on, and submits under ([`Network::submit`]).
pub(crate) const STUDY: &str = "study-1";

/// A site's identity key directory (`ern keygen site --out`), inside the site directory.
pub(crate) const IDENTITY_DIR: &str = "identity";

/// A coordinator and its sites, as processes.
pub(crate) struct Network {
    /// Everything lives here.
    pub(crate) dir: tempfile::TempDir,
    /// The coordinator's URL.
    pub(crate) url: String,
    /// The network CA certificate.
    pub(crate) ca: PathBuf,
    port: u16,
    /// coordinator.toml.
    pub(crate) coordinator_config: PathBuf,
    coordinator: Option<Child>,
    nodes: HashMap<String, Child>,
    /// The operator's token.
    pub(crate) operator: String,
    /// A researcher's token.
    pub(crate) researcher: String,
    /// The sites.
    pub(crate) sites: Vec<Site>,
    /// The minimum group size every node applies.
    pub(crate) k: u32,
    /// Per-site or secure aggregation at every node.
    pub(crate) aggregation: Aggregation,
}

impl Network {
    /// Synthesises `sites` exports, ingests them, creates keys and configs, starts the
    /// coordinator and enrols everyone, with the researcher on study [`STUDY`]. Nodes are
    /// not started. Every question runs per
    /// site ([`Aggregation::PerSite`]).
    pub(crate) fn new(sites: usize, patients: usize, k: u32) -> Network {
        Network::with_aggregation(sites, patients, k, Aggregation::PerSite)
    }

    /// As [`Network::new`], with secure aggregation on at every node and every site in
    /// every roster ([`Aggregation::Secure`]).
    pub(crate) fn secure(sites: usize, patients: usize, k: u32) -> Network {
        Network::with_aggregation(sites, patients, k, Aggregation::Secure)
    }

    /// As [`Network::new`], with the nodes' aggregation chosen.
    pub(crate) fn with_aggregation(
        sites: usize,
        patients: usize,
        k: u32,
        aggregation: Aggregation,
    ) -> Network {
        let dir = tempfile::tempdir().expect("temp dir");
        let root = dir.path().to_path_buf();
        let exports = root.join("exports");
        synth(&exports, sites, patients, 11);
        let port = free_port();
        // The network's certificates, as an operator makes them.
        let tls = root.join("tls");
        let mut keygen = vec!["keygen", "tls", "--out", path(&tls)];
        let ids: Vec<String> = (1..=sites).map(|index| format!("site-{index}")).collect();
        for id in &ids {
            keygen.extend(["--site", id.as_str()]);
        }
        ok(ern(&keygen));
        let coordinator_config = root.join("coordinator.toml");
        std::fs::write(
            &coordinator_config,
            format!(
                "listen = \"127.0.0.1:{port}\"\ndatabase = \"coordinator.db\"\nsite_timeout_seconds = 60\nheartbeat_seconds = 1\n\n[tls]\ncert = \"tls/coordinator.pem\"\nkey = \"tls/coordinator.key\"\nclient_ca = \"tls/ca.pem\"\n"
            ),
        )
        .expect("coordinator.toml");
        let operator = ok(ern(&[
            "coordinator",
            "user",
            "add",
            "admin",
            "--role",
            "operator",
            "--config",
            path(&coordinator_config),
        ]))
        .trim()
        .to_string();
        let mut network = Network {
            dir,
            url: format!("https://127.0.0.1:{port}"),
            ca: tls.join("ca.pem"),
            port,
            coordinator_config,
            coordinator: None,
            nodes: HashMap::new(),
            operator,
            researcher: String::new(),
            sites: Vec::new(),
            k,
            aggregation,
        };
        network.start_coordinator();
        network.researcher = network.add_user("ada", "researcher", "");
        ok(network.ern_as(
            &network.operator,
            &[
                "operator",
                "study",
                "add",
                STUDY,
                "--title",
                "Cardiac registries",
                "--purpose",
                "Patients by sex and birth band across the network",
                "--researcher",
                "ada",
            ],
        ));
        let mut roster = Vec::new();
        for index in 1..=sites {
            let id = format!("site-{index}");
            let site_dir = root.join(&id);
            std::fs::create_dir_all(&site_dir).expect("site dir");
            let key = site_dir.join("pseudonym.key");
            ok(ern(&["keygen", "pseudonym", "--out", path(&key)]));
            let export = exports.join(format!("site-{index}"));
            ok(ern(&[
                "ingest",
                "--input",
                path(&export),
                "--key",
                path(&key),
                "--out",
                path(&site_dir.join("store")),
            ]));
            ok(ern(&[
                "keygen",
                "steward",
                "--out",
                path(&site_dir.join("steward")),
            ]));
            let steward_token = network.add_first_user(&format!("steward-{index}"), "steward", &id);
            let node_token = network.add_user(&format!("node-{index}"), "node", &id);
            std::fs::write(site_dir.join("node.token"), format!("{node_token}\n")).expect("token");
            if aggregation == Aggregation::Secure {
                roster.push(site_identity(&site_dir.join(IDENTITY_DIR), &id));
            }
            network.sites.push(Site {
                id,
                export,
                steward_key: site_dir.join("steward.key"),
                dir: site_dir,
                steward_token,
                node_token,
            });
        }
        // Every node's configuration, once every site's roster line is known.
        for site in &network.sites {
            std::fs::write(
                site.dir.join("node.toml"),
                node_toml(&site.id, k, &network.url, aggregation, &roster),
            )
            .expect("node.toml");
        }
        network
    }

    /// Everything the coordinator and the nodes have logged so far.
    pub(crate) fn logs(&self) -> String {
        let mut files = vec![self.dir.path().join("coordinator.log")];
        files.extend(self.sites.iter().map(|site| site.dir.join("node.log")));
        files
            .iter()
            .filter_map(|file| std::fs::read_to_string(file).ok())
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Every secret the network holds: tokens, and the private keys' PEM bodies.
    pub(crate) fn secrets(&self) -> Vec<String> {
        let mut secrets = vec![self.operator.clone(), self.researcher.clone()];
        for site in &self.sites {
            secrets.push(site.steward_token.clone());
            secrets.push(site.node_token.clone());
            for key in [
                site.steward_key.clone(),
                site.dir.join("pseudonym.key"),
                self.dir
                    .path()
                    .join("tls")
                    .join(format!("node-{}.key", site.id)),
            ]
            .into_iter()
            .chain(
                (self.aggregation == Aggregation::Secure)
                    .then(|| site.dir.join(IDENTITY_DIR).join("site.key")),
            ) {
                let text = std::fs::read_to_string(&key).expect("key file");
                secrets.extend(
                    text.lines()
                        .filter(|line| !line.starts_with("-----") && line.len() > 16)
                        .map(str::to_string),
                );
            }
        }
        secrets
    }

    /// The site with this id.
    pub(crate) fn site(&self, id: &str) -> &Site {
        self.sites.iter().find(|s| s.id == id).expect("known site")
    }

    /// Enrols a user through the operator API; returns the token.
    pub(crate) fn add_user(&self, name: &str, role: &str, site: &str) -> String {
        self.add_user_with(&[], name, role, site)
    }

    /// Enrols a user with more options of `ern operator user add` (e.g. `--expires`).
    pub(crate) fn add_user_with(
        &self,
        extra: &[&str],
        name: &str,
        role: &str,
        site: &str,
    ) -> String {
        let mut args = vec!["operator", "user", "add", name, "--role", role];
        if !site.is_empty() {
            args.extend(["--site", site]);
        }
        args.extend_from_slice(extra);
        ok(self.ern_as(&self.operator, &args)).trim().to_string()
    }

    /// Enrols the first user of a site new to the network (`--new-site`).
    pub(crate) fn add_first_user(&self, name: &str, role: &str, site: &str) -> String {
        self.add_user_with(&["--new-site"], name, role, site)
    }

    /// Runs `ern` with `args` as the holder of `token` (through ERN_COORDINATOR and
    /// ERN_TOKEN, as a user would).
    pub(crate) fn ern_as(&self, token: &str, args: &[&str]) -> Output {
        Command::new(ern_bin())
            .args(args)
            .env("ERN_LOG", "warn")
            .env("ERN_COORDINATOR", &self.url)
            .env("ERN_CA", &self.ca)
            .env("ERN_TOKEN", token)
            .output()
            .expect("run ern")
    }

    /// Starts (or restarts) the coordinator process and waits until it accepts
    /// connections.
    pub(crate) fn start_coordinator(&mut self) {
        assert!(self.coordinator.is_none(), "coordinator already running");
        let child = spawn_logged(
            &[
                "coordinator",
                "serve",
                "--config",
                path(&self.coordinator_config),
            ],
            &self.dir.path().join("coordinator.log"),
        );
        self.coordinator = Some(child);
        let port = self.port;
        wait_until("the coordinator to listen", Duration::from_secs(20), || {
            TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
    }

    /// kill -9 of the coordinator.
    pub(crate) fn kill_coordinator(&mut self) {
        if let Some(mut child) = self.coordinator.take() {
            child.kill().expect("SIGKILL");
            child.wait().expect("reap");
        }
    }

    /// Starts a site's node process (`ern node serve --config node.toml`).
    pub(crate) fn start_node(&mut self, id: &str) {
        let site = self.site(id).clone();
        let child = spawn_logged(
            &[
                "node",
                "serve",
                "--config",
                path(&site.dir.join("node.toml")),
            ],
            &site.dir.join("node.log"),
        );
        self.nodes.insert(id.to_string(), child);
    }

    /// Starts a node and waits until the coordinator lists it as connected.
    pub(crate) fn start_node_connected(&mut self, id: &str) {
        self.start_node(id);
        self.wait_connected(id);
    }

    /// Waits until the coordinator lists the site's node as connected.
    pub(crate) fn wait_connected(&self, id: &str) {
        wait_until(
            &format!("node {id} to connect"),
            Duration::from_secs(30),
            || self.node_connected(id),
        );
    }

    /// Whether `ern operator nodes --format json` shows the site connected.
    pub(crate) fn node_connected(&self, id: &str) -> bool {
        let nodes = json(&ok(
            self.ern_as(&self.operator, &["operator", "nodes", "--format", "json"])
        ));
        nodes
            .as_array()
            .expect("a list of nodes")
            .iter()
            .any(|node| node["site"] == id && node["connected"] == serde_json::Value::Bool(true))
    }

    /// Submits `sql` as the researcher under study [`STUDY`]; returns the question id.
    pub(crate) fn submit(&self, sql: &str, title: &str, sites: &[&str]) -> String {
        let joined = sites.join(",");
        let mut args = vec![
            "submit",
            "--study",
            STUDY,
            "--sql-text",
            sql,
            "--title",
            title,
        ];
        if !sites.is_empty() {
            args.extend(["--sites", &joined]);
        }
        ok(self.ern_as(&self.researcher, &args)).trim().to_string()
    }

    /// The site's steward reviews `id` (`ern steward show`) and approves the query hash
    /// and the study shown there, for the site, with the site's own key.
    pub(crate) fn approve(&self, site_id: &str, id: &str) -> Output {
        let site = self.site(site_id);
        let shown = ok(self.ern_as(&site.steward_token, &["steward", "show", id]));
        let line = |prefix: &str| {
            shown
                .lines()
                .find_map(|line| line.strip_prefix(prefix))
                .unwrap_or_else(|| panic!("ern steward show prints {prefix:?}: {shown}"))
                .trim()
                .to_string()
        };
        let (hash, study) = (line("query hash: "), line("study: "));
        self.ern_as(
            &site.steward_token,
            &[
                "steward",
                "approve",
                id,
                "--key",
                path(&site.steward_key),
                "--site",
                site_id,
                "--hash",
                &hash,
                "--study",
                &study,
            ],
        )
    }

    /// `ern status ID --format json`.
    pub(crate) fn status(&self, id: &str) -> serde_json::Value {
        json(&ok(self.ern_as(
            &self.researcher,
            &["status", id, "--format", "json"],
        )))
    }

    /// State and detail of each site in `ern status ID`, by site id.
    pub(crate) fn site_states(&self, id: &str) -> BTreeMap<String, (String, String)> {
        let status = self.status(id);
        status["sites"]
            .as_array()
            .expect("sites")
            .iter()
            .map(|site| {
                let text = |key: &str| site[key].as_str().expect("a string").to_string();
                (text("site"), (text("state"), text("detail")))
            })
            .collect()
    }

    /// Whether `ern status ID` says complete.
    pub(crate) fn is_complete(&self, id: &str) -> bool {
        self.status(id)["state"] == "complete"
    }

    /// Waits for a question to complete.
    pub(crate) fn wait_complete(&self, id: &str) {
        wait_until(
            &format!("question {id} to complete"),
            Duration::from_secs(60),
            || self.is_complete(id),
        );
    }

    /// The merged table as CSV rows (header dropped).
    pub(crate) fn results_csv(&self, id: &str) -> Vec<Vec<String>> {
        let text = ok(self.ern_as(&self.researcher, &["results", id, "--format", "csv"]));
        parse_csv(&text)
    }

    /// Stops a node process.
    pub(crate) fn stop_node(&mut self, id: &str) {
        if let Some(mut child) = self.nodes.remove(id) {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// `ern keygen site --out DIR --site ID`; returns the roster line it prints last
/// (`ID = "<64 hex>"`), as the site's operator sends it to the other sites.
#[track_caller]
pub(crate) fn site_identity(dir: &Path, id: &str) -> String {
    let printed = ok(ern(&["keygen", "site", "--out", path(dir), "--site", id]));
    let line = printed.lines().last().expect("a roster line").to_string();
    assert!(
        line.starts_with(&format!("{id} = \"")) && line.len() == id.len() + 4 + 64 + 1,
        "not a roster line: {line}"
    );
    line
}

/// A site's node.toml: its store, steward key, k, coordinator and certificates, and with
/// [`Aggregation::Secure`] its identity key and the roster (`roster`: every site's line).
pub(crate) fn node_toml(
    id: &str,
    k: u32,
    url: &str,
    aggregation: Aggregation,
    roster: &[String],
) -> String {
    let mut toml = format!(
        "site_id = \"{id}\"\nstore = \"store\"\nstewards = [\"steward.pub\"]\nk = {k}\ncoordinator = \"{url}\"\ntoken_file = \"node.token\"\n\n[tls]\nca = \"../tls/ca.pem\"\ncert = \"../tls/node-{id}.pem\"\nkey = \"../tls/node-{id}.key\"\n"
    );
    if aggregation == Aggregation::Secure {
        toml.push_str(&format!(
            "\n[secure_aggregation]\nenabled = true\nidentity_key = \"{IDENTITY_DIR}/site.key\"\n\n[secure_aggregation.roster]\n{}\n",
            roster.join("\n")
        ));
    }
    toml
}

impl Drop for Network {
    fn drop(&mut self) {
        for (_, mut child) in self.nodes.drain() {
            let _ = child.kill();
            let _ = child.wait();
        }
        self.kill_coordinator();
    }
}

/// CSV text to rows, header dropped.
/// Parses a command's JSON output.
pub(crate) fn json(text: &str) -> serde_json::Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

pub(crate) fn parse_csv(text: &str) -> Vec<Vec<String>> {
    let mut reader = csv::Reader::from_reader(text.as_bytes());
    reader
        .records()
        .map(|r| r.expect("csv row").iter().map(str::to_string).collect())
        .collect()
}

/// The test question: patients by sex and 20-year birth band.
pub(crate) const SEX_BAND_SQL: &str = "SELECT p.sex, (p.birth_year / 20) * 20 AS band, COUNT(DISTINCT p.pid) AS patients FROM patient p GROUP BY p.sex, (p.birth_year / 20) * 20 ORDER BY p.sex, band";

/// The answer to [`SEX_BAND_SQL`] computed independently from the raw exports of `sites`
/// under per-site suppression: consenting patients counted per (sex, band) at each site,
/// groups under `k` dropped at that site, the rest summed.
pub(crate) fn expected_sex_band(exports: &[&Path], k: u64) -> BTreeMap<(String, i64), u64> {
    let mut pooled = BTreeMap::new();
    for export in exports {
        for (key, count) in sex_band_counts(export) {
            if count >= k {
                *pooled.entry(key).or_default() += count;
            }
        }
    }
    pooled
}

/// The answer to [`SEX_BAND_SQL`] computed independently from the raw exports of `sites`
/// under secure aggregation: consenting patients counted per (sex, band) over all sites
/// together, and only then cells under `k` dropped.
pub(crate) fn expected_sex_band_secure(exports: &[&Path], k: u64) -> BTreeMap<(String, i64), u64> {
    let mut pooled: BTreeMap<(String, i64), u64> = BTreeMap::new();
    for export in exports {
        for (key, count) in sex_band_counts(export) {
            *pooled.entry(key).or_default() += count;
        }
    }
    pooled.retain(|_, count| *count >= k);
    pooled
}

/// The sex and birth year of each consenting patient of one raw export (the patients its
/// store holds).
pub(crate) fn consenting_patients(export: &Path) -> Vec<(String, i64)> {
    let mut reader = csv::Reader::from_path(export.join("patient.csv")).expect("patient.csv");
    let headers = reader.headers().expect("header").clone();
    let column = |name: &str| headers.iter().position(|h| h == name).expect("column");
    let (sex, birth, vital, consent) = (
        column("sex"),
        column("birth_date"),
        column("vital_status"),
        column("consent_data_reuse"),
    );
    let mut patients = Vec::new();
    for record in reader.records() {
        let record = record.expect("row");
        if &record[consent] != "yes" || &record[vital] == "opted_out" {
            continue;
        }
        let year: i64 = record[birth][..4].parse().expect("year");
        patients.push((record[sex].to_string(), year));
    }
    patients
}

/// Consenting patients of one raw export per (sex, 20-year birth band).
fn sex_band_counts(export: &Path) -> BTreeMap<(String, i64), u64> {
    let mut site: BTreeMap<(String, i64), u64> = BTreeMap::new();
    for (sex, year) in consenting_patients(export) {
        *site.entry((sex, year / 20 * 20)).or_default() += 1;
    }
    site
}

/// CSV rows of the test question as a map.
pub(crate) fn sex_band_rows(rows: &[Vec<String>]) -> BTreeMap<(String, i64), u64> {
    rows.iter()
        .map(|r| {
            (
                (r[0].clone(), r[1].parse().expect("band")),
                r[2].parse().expect("count"),
            )
        })
        .collect()
}
