//! The example questions of data-model.md (section 4) and the demo's showcase: every one
//! is accepted by the rules (tested), runs in `ern demo --sql`, and is listed by
//! `ern examples`. They live here, beside the rules, so that tests of every party can run
//! them.

/// One example question.
#[derive(Debug, Clone, Copy)]
pub struct Example {
    /// A short file-name-like name.
    pub name: &'static str,
    /// What it asks.
    pub title: &'static str,
    /// The SQL.
    pub sql: &'static str,
}

/// The example questions of data-model.md (section 4) and the showcase's; every one is
/// accepted by the rules (tested) and runs in `ern demo --sql`.
pub const EXAMPLES: &[Example] = &[
    Example {
        name: "patients-by-disorder-and-sex",
        title: "Patients per disorder and sex",
        sql: "SELECT d.code, p.sex, COUNT(DISTINCT p.pid) AS patients FROM patient p JOIN diagnosis d ON p.pid = d.pid GROUP BY d.code, p.sex",
    },
    Example {
        name: "cardiac-disorders-by-sex",
        title: "Patients per rare cardiac disorder (Orphanet name) and sex: per-site suppression hides most of it, secure aggregation releases the network totals",
        sql: "SELECT t.name AS disorder, p.sex, COUNT(DISTINCT p.pid) AS patients FROM patient p JOIN diagnosis d ON p.pid = d.pid JOIN orpha_term t ON d.code = t.orpha_code GROUP BY t.name, p.sex ORDER BY patients DESC, disorder, p.sex",
    },
    Example {
        name: "cardiomyopathy-by-decade",
        title: "Patients with any rare cardiomyopathy (ORPHA:167848 and all its descendants in the Orphanet hierarchy), by decade of birth",
        sql: "SELECT (p.birth_year / 10) * 10 AS decade, COUNT(DISTINCT p.pid) AS patients FROM patient p JOIN diagnosis d ON p.pid = d.pid JOIN orpha_closure c ON d.code = c.descendant WHERE c.ancestor = 'ORPHA:167848' GROUP BY (p.birth_year / 10) * 10 ORDER BY decade",
    },
    Example {
        name: "diagnostic-delay",
        title: "Mean diagnostic delay in years per disorder",
        sql: "SELECT d.code, AVG(d.age_at_diagnosis - d.age_at_onset) AS mean_delay, COUNT(DISTINCT d.pid) AS patients FROM diagnosis d WHERE d.age_at_onset IS NOT NULL AND d.age_at_diagnosis IS NOT NULL GROUP BY d.code",
    },
    Example {
        name: "diagnostic-delay-bands",
        title: "Distribution of the diagnostic delay in 5-year bands",
        sql: "SELECT d.code, ((d.age_at_diagnosis - d.age_at_onset) / 5) * 5 AS delay_band, COUNT(DISTINCT d.pid) AS patients FROM diagnosis d WHERE d.age_at_onset IS NOT NULL AND d.age_at_diagnosis IS NOT NULL GROUP BY d.code, ((d.age_at_diagnosis - d.age_at_onset) / 5) * 5",
    },
    Example {
        name: "delay-top-ten-disorders",
        title: "Mean diagnostic delay in years, for the ten disorders with most patients",
        sql: "SELECT t.name AS disorder, COUNT(DISTINCT d.pid) AS patients, AVG(d.age_at_diagnosis - d.age_at_onset) AS mean_delay_years FROM diagnosis d JOIN orpha_term t ON d.code = t.orpha_code WHERE d.age_at_onset IS NOT NULL AND d.age_at_diagnosis IS NOT NULL GROUP BY t.name ORDER BY patients DESC LIMIT 10",
    },
    Example {
        name: "hcm-causative-genes",
        title: "Most frequent causative genes among patients with hypertrophic cardiomyopathy (ORPHA:217569 group)",
        sql: "SELECT g.gene_symbol, COUNT(DISTINCT g.pid) AS patients FROM genetic_finding g JOIN diagnosis d ON g.pid = d.pid JOIN orpha_closure c ON d.code = c.descendant WHERE c.ancestor = 'ORPHA:217569' AND g.causative GROUP BY g.gene_symbol ORDER BY patients DESC, g.gene_symbol",
    },
    Example {
        name: "undiagnosed-with-phenotype",
        title: "Share of undiagnosed patients with a given phenotype (HP:0001639, hypertrophic cardiomyopathy)",
        sql: "SELECT p.undiagnosed, COUNT(DISTINCT p.pid) AS patients FROM patient p JOIN phenotype f ON p.pid = f.pid WHERE f.hpo_id = 'HP:0001639' AND NOT f.excluded GROUP BY p.undiagnosed",
    },
];
