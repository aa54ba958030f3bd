//! The README's "Running a network" walk-through, run as written: the shell block between
//! `<!-- quickstart:begin -->` and `<!-- quickstart:end -->` executes with the `ern`
//! under test on PATH, a coordinator and three nodes as separate processes, with secure
//! aggregation on: every site makes its identity key and every node.toml pins the roster.

use crate::harness;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn quickstart_script() -> String {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md"))
        .expect("README.md");
    let begin = readme
        .find("<!-- quickstart:begin -->")
        .expect("quickstart begin marker");
    let end = readme
        .find("<!-- quickstart:end -->")
        .expect("quickstart end marker");
    let block = &readme[begin..end];
    let start = block.find("```sh\n").expect("sh fence") + "```sh\n".len();
    let stop = block.rfind("```").expect("closing fence");
    block[start..stop].to_string()
}

#[test]
fn the_readme_network_walkthrough_runs_as_written() {
    let dir = tempfile::tempdir().expect("temp dir");
    let bin_dir = std::path::Path::new(harness::ern_bin())
        .parent()
        .expect("bin dir")
        .to_path_buf();
    let path = format!(
        "{}:{}",
        bin_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let script = dir.path().join("quickstart.sh");
    std::fs::write(&script, quickstart_script()).expect("script");
    let mut child = Command::new("bash")
        .arg(&script)
        .current_dir(dir.path())
        .env("PATH", path)
        .env("ERN_PORT", harness::free_port().to_string())
        .env("ERN_LOG", "warn")
        .env_remove("ERN_TOKEN")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("bash");
    let deadline = Instant::now() + Duration::from_secs(240);
    loop {
        if child.try_wait().expect("wait").is_some() {
            break;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("the walk-through did not finish in time");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let output = child.wait_with_output().expect("output");
    let out = String::from_utf8_lossy(&output.stdout);
    let err = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "stdout:\n{out}\nstderr:\n{err}");
    assert!(out.contains("state: complete"), "{out}");
    assert!(out.contains("approved q-"), "{out}");
    // The study: listed by its researcher, shown to every steward, signed by each.
    assert!(out.contains("Rare cardiac diseases by sex"), "{out}");
    assert!(out.contains("researchers on the study: ada"), "{out}");
    assert_eq!(
        out.matches("for site-1 under study cardiac-sex").count()
            + out.matches("for site-2 under study cardiac-sex").count()
            + out.matches("for site-3 under study cardiac-sex").count(),
        3,
        "{out}"
    );
    // The steward's review names the mode and the domain; the question ran securely.
    assert!(
        out.contains("mode: secure aggregation: k applies to network totals of 4 cells"),
        "{out}"
    );
    assert!(
        out.contains("mode: secure aggregation: k applies to the network total"),
        "{out}"
    );
    assert!(out.contains("\"mode\": \"secure\""), "{out}");
    assert!(
        out.contains("aggregated (secure: in the network total)"),
        "{out}"
    );
    assert!(
        !out.contains("eligible for secure aggregation, but"),
        "{out}"
    );
    let roster = std::fs::read_to_string(dir.path().join("roster.toml")).expect("roster.toml");
    for site in ["site-1", "site-2", "site-3"] {
        assert!(roster.contains(&format!("{site} = \"")), "{roster}");
    }
    let csv = std::fs::read_to_string(dir.path().join("result.csv")).expect("result.csv");
    let rows = harness::parse_csv(&csv);
    assert!(csv.starts_with("sex,patients\n"), "{csv}");
    assert!(rows.len() >= 2, "{csv}");
    let total: u64 = rows
        .iter()
        .map(|r| r[1].parse::<u64>().expect("count"))
        .sum();
    assert!(total > 15_000, "{csv}");
}
