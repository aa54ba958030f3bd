//! One synthetic patient and all their rows: demographics, consent, diagnoses with onset
//! and diagnostic delay, genetic findings and phenotypes.

use rand::Rng;

use super::catalogue::{Catalogue, GENERAL_HPO, Gene, Profile};
use super::table::SiteTables;
use ern_ingest::export::values::Date;

/// The registry's fixed "today" (2025-12-31), so output never depends on the clock.
const TODAY: i32 = 20_453;
const DAYS_PER_YEAR: f64 = 365.25;
/// Mean diagnostic delay, in years; the exponential gives a long tail.
const MEAN_DELAY_YEARS: f64 = 4.5;

/// Picks an item by weights that need not sum to one.
fn weighted<'a, T>(rng: &mut impl Rng, items: &'a [(T, f64)]) -> &'a T {
    let total: f64 = items.iter().map(|(_, w)| w).sum();
    let mut u = rng.random::<f64>() * total;
    for (item, weight) in items {
        if u < *weight {
            return item;
        }
        u -= weight;
    }
    &items[items.len() - 1].0
}

fn chance(rng: &mut impl Rng, p: f64) -> bool {
    rng.random::<f64>() < p
}

fn some(text: &str) -> Option<String> {
    Some(text.to_string())
}

fn date(days: i32) -> Option<String> {
    Some(Date::from_days_since_epoch(days).to_string())
}

fn boolean(rng: &mut impl Rng, p_true: f64, p_empty: f64) -> Option<String> {
    if chance(rng, p_empty) {
        None
    } else {
        some(if chance(rng, p_true) { "true" } else { "false" })
    }
}

/// A standard normal draw (Box-Muller).
fn normal(rng: &mut impl Rng) -> f64 {
    let u1: f64 = rng.random::<f64>().max(f64::MIN_POSITIVE);
    let u2: f64 = rng.random();
    (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
}

fn days_of_years(years: f64) -> i32 {
    (years * DAYS_PER_YEAR) as i32
}

/// Generates patient `number` of `site` into `tables`.
pub(crate) fn generate(
    rng: &mut impl Rng,
    site: usize,
    number: usize,
    catalogue: &Catalogue,
    tables: &mut SiteTables,
) {
    let local_id = format!("S{site:02}-{number:07}");
    // One in seven are children; adults centre on 48 years, spread over a century.
    let age_years = if chance(rng, 0.15) {
        rng.random_range(0.0..18.0)
    } else {
        (48.0 + 18.0 * normal(rng)).clamp(0.0, 100.0)
    };
    let birth_days = TODAY - days_of_years(age_years) - rng.random_range(0..365);
    let birth = Date::from_days_since_epoch(birth_days);
    let birth_date = match rng.random_range(0..10) {
        0..7 => birth.to_string(),
        7..9 => format!("{:04}-{:02}", birth.year, birth.month),
        _ => format!("{:04}", birth.year),
    };
    let sex = weighted(
        rng,
        &[
            ("female", 0.48),
            ("male", 0.495),
            ("undetermined", 0.005),
            ("unknown", 0.02),
        ],
    );
    let vital = *weighted(
        rng,
        &[
            (Some("alive"), 0.78),
            (Some("dead"), 0.07),
            (Some("lost_to_follow_up"), 0.05),
            (None, 0.075),
            (Some("opted_out"), 0.025),
        ],
    );
    let consent = weighted(rng, &[("yes", 0.95), ("no", 0.025), ("unknown", 0.025)]);
    let contact = weighted(rng, &[("yes", 0.7), ("no", 0.15), ("unknown", 0.15)]);
    let undiagnosed = chance(rng, 0.05);
    let disorder = catalogue.pick(rng.random());
    let profile = disorder.profile;

    // Onset: childhood for the disorder's paediatric share, otherwise adulthood; never
    // after today. The diagnostic delay is exponential (years, long tail); a delay that
    // would reach past today is redrawn within the time there was.
    let paediatric = age_years < 16.0 || chance(rng, profile.map_or(0.5, |p| p.paediatric));
    let onset_age: f64 = if paediatric {
        rng.random_range(0.0..age_years.clamp(0.01, 16.0))
    } else {
        rng.random_range(16.0..age_years.max(16.01))
    };
    let onset_days = (birth_days + days_of_years(onset_age)).min(TODAY);
    let mut delay_days = days_of_years(-MEAN_DELAY_YEARS * (1.0 - rng.random::<f64>()).ln());
    if onset_days + delay_days > TODAY {
        delay_days = rng.random_range(0..=(TODAY - onset_days));
    }
    let diagnosis_days = onset_days + delay_days;
    let death_date = (vital == Some("dead"))
        .then(|| date(rng.random_range(diagnosis_days..=TODAY)))
        .flatten();
    let first_contact = chance(rng, 0.85)
        .then(|| date((diagnosis_days - rng.random_range(0..400)).max(birth_days)))
        .flatten();

    let undiagnosed_cell = if undiagnosed {
        some("true")
    } else if chance(rng, 0.85) {
        some("false")
    } else {
        None
    };
    tables.patient.push([
        some(&local_id),
        Some(birth_date),
        some(sex),
        vital.map(str::to_string),
        death_date,
        first_contact,
        undiagnosed_cell,
        some(contact),
        some(consent),
        boolean(rng, 0.45, 0.2),
    ]);

    if undiagnosed {
        if chance(rng, 0.4) {
            let status = if chance(rng, 0.5) {
                "provisional"
            } else {
                "differential"
            };
            push_diagnosis(
                tables,
                &local_id,
                &disorder.orpha_code,
                Some(status),
                None,
                None,
            );
        }
        let count = rng.random_range(2..=6);
        push_phenotypes(rng, tables, &local_id, None, count);
        return;
    }

    let onset = onset_cells(rng, paediatric, onset_days);
    let diagnosed = chance(rng, 0.9).then_some(diagnosis_days);
    let status = *weighted(
        rng,
        &[
            (None, 0.6),
            (Some("confirmed"), 0.3),
            (Some("provisional"), 0.1),
        ],
    );
    let orpha = disorder.orpha_code.clone();
    push_diagnosis(tables, &local_id, &orpha, status, Some(onset), diagnosed);
    if let Some(profile) = profile {
        if chance(rng, 0.12) {
            push_diagnosis(
                tables,
                &local_id,
                &format!("ICD10:{}", profile.icd10),
                status,
                Some(onset),
                diagnosed,
            );
        }
        if chance(rng, 0.08) {
            push_diagnosis(
                tables,
                &local_id,
                &format!("OMIM:{}", profile.omim),
                status,
                Some(onset),
                diagnosed,
            );
        }
        if chance(rng, 0.4) {
            push_findings(rng, tables, &local_id, profile.genes);
        }
    }
    if chance(rng, 0.03) {
        let other = catalogue.pick(rng.random()).orpha_code.clone();
        let status = if chance(rng, 0.5) {
            "differential"
        } else {
            "refuted"
        };
        push_diagnosis(tables, &local_id, &other, Some(status), None, None);
    }
    let count = rng.random_range(0..=4);
    push_phenotypes(rng, tables, &local_id, profile, count);
}

/// Onset kind and date: childhood disorders are sometimes antenatal or at birth.
#[derive(Debug, Clone, Copy)]
struct Onset {
    kind: Option<&'static str>,
    date: Option<i32>,
}

fn onset_cells(rng: &mut impl Rng, paediatric: bool, onset_days: i32) -> Onset {
    let roll: f64 = rng.random();
    match (paediatric, roll) {
        (true, r) if r < 0.08 => Onset {
            kind: Some("antenatal"),
            date: None,
        },
        (true, r) if r < 0.22 => Onset {
            kind: Some("at_birth"),
            date: None,
        },
        (_, r) if r > 0.93 => Onset {
            kind: Some("undetermined"),
            date: None,
        },
        (_, r) if r > 0.85 => Onset {
            kind: None,
            date: None,
        },
        _ => Onset {
            kind: Some("date"),
            date: Some(onset_days),
        },
    }
}

fn push_diagnosis(
    tables: &mut SiteTables,
    local_id: &str,
    code: &str,
    status: Option<&str>,
    onset: Option<Onset>,
    diagnosed: Option<i32>,
) {
    let onset = onset.unwrap_or(Onset {
        kind: None,
        date: None,
    });
    tables.diagnosis.push([
        some(local_id),
        some(code),
        status.map(str::to_string),
        onset.kind.map(str::to_string),
        onset.date.and_then(date),
        diagnosed.and_then(date),
    ]);
}

fn push_findings(rng: &mut impl Rng, tables: &mut SiteTables, local_id: &str, genes: &[Gene]) {
    if genes.is_empty() {
        return;
    }
    let findings = if chance(rng, 0.2) { 2 } else { 1 };
    for _ in 0..findings {
        let gene = genes[rng.random_range(0..genes.len())];
        let hgvs = chance(rng, 0.85).then(|| {
            const BASES: [char; 4] = ['A', 'C', 'G', 'T'];
            let reference = rng.random_range(0..4);
            let alternative = (reference + rng.random_range(1..4)) % 4;
            format!(
                "{}:c.{}{}>{}",
                gene.transcript,
                rng.random_range(1..6000),
                BASES[reference],
                BASES[alternative]
            )
        });
        let zygosity = *weighted(
            rng,
            &[
                (Some("heterozygous"), 0.8),
                (Some("homozygous"), 0.05),
                (Some("hemizygous"), 0.03),
                (Some("compound_heterozygous"), 0.04),
                (Some("unknown"), 0.03),
                (None, 0.05),
            ],
        );
        let causative = boolean(rng, 0.85, 0.1);
        tables.genetic_finding.push([
            some(local_id),
            some(gene.hgnc_id),
            chance(rng, 0.95).then(|| gene.symbol.to_string()),
            hgvs,
            zygosity.map(str::to_string),
            causative,
        ]);
    }
}

fn push_phenotypes(
    rng: &mut impl Rng,
    tables: &mut SiteTables,
    local_id: &str,
    profile: Option<&Profile>,
    count: usize,
) {
    let specific: &[&str] = profile.map_or(&[], |p| p.hpo);
    let mut chosen: Vec<&str> = Vec::with_capacity(count);
    for _ in 0..count {
        let from_specific = !specific.is_empty() && chance(rng, 0.6);
        let pool = if from_specific { specific } else { GENERAL_HPO };
        let term = pool[rng.random_range(0..pool.len())];
        if chosen.contains(&term) {
            continue;
        }
        chosen.push(term);
        let excluded = if chance(rng, 0.1) {
            some("true")
        } else if chance(rng, 0.5) {
            some("false")
        } else {
            None
        };
        tables
            .phenotype
            .push([some(local_id), some(term), excluded]);
    }
}
