//! The clinical vocabulary of the synthetic registries: which cardiac disorders are
//! common and which are rare, and the genes, variants, codes and phenotypes that go
//! with them.
//!
//! Disorders come from the shipped Orphanet cardiac classification. A dozen well-known
//! ones carry most patients; every other disease-level term shares a Zipf-shaped tail,
//! so a site sees most rare disorders once or twice, or not at all.

use ern_node::reference::OrphaTerm;

/// A gene with its HGNC id and a reference transcript for HGVS strings.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Gene {
    pub(crate) symbol: &'static str,
    pub(crate) hgnc_id: &'static str,
    pub(crate) transcript: &'static str,
}

const fn gene(symbol: &'static str, hgnc_id: &'static str, transcript: &'static str) -> Gene {
    Gene {
        symbol,
        hgnc_id,
        transcript,
    }
}

const MYH7: Gene = gene("MYH7", "HGNC:7577", "NM_000257.4");
const MYBPC3: Gene = gene("MYBPC3", "HGNC:7551", "NM_000256.3");
const TNNT2: Gene = gene("TNNT2", "HGNC:11949", "NM_001276345.2");
const TNNI3: Gene = gene("TNNI3", "HGNC:11947", "NM_000363.5");
const TTN: Gene = gene("TTN", "HGNC:12403", "NM_001267550.2");
const LMNA: Gene = gene("LMNA", "HGNC:6636", "NM_170707.4");
const RBM20: Gene = gene("RBM20", "HGNC:27424", "NM_001134363.3");
const PKP2: Gene = gene("PKP2", "HGNC:9024", "NM_004572.4");
const DSP: Gene = gene("DSP", "HGNC:3052", "NM_004415.4");
const DSG2: Gene = gene("DSG2", "HGNC:3049", "NM_001943.5");
const KCNQ1: Gene = gene("KCNQ1", "HGNC:6294", "NM_000218.3");
const KCNH2: Gene = gene("KCNH2", "HGNC:6251", "NM_000238.4");
const SCN5A: Gene = gene("SCN5A", "HGNC:10593", "NM_198056.3");
const GLA: Gene = gene("GLA", "HGNC:4296", "NM_000169.3");
const RYR2: Gene = gene("RYR2", "HGNC:10484", "NM_001035.3");
const TTR: Gene = gene("TTR", "HGNC:12405", "NM_000371.4");
const PTPN11: Gene = gene("PTPN11", "HGNC:9644", "NM_002834.5");

/// HPO terms common to cardiac disorders.
pub(crate) const GENERAL_HPO: &[&str] = &[
    "HP:0001635", // congestive heart failure
    "HP:0001279", // syncope
    "HP:0011675", // arrhythmia
    "HP:0005110", // atrial fibrillation
    "HP:0002094", // dyspnea
    "HP:0001962", // palpitations
    "HP:0100749", // chest pain
    "HP:0001645", // sudden cardiac death
    "HP:0012722", // heart block
    "HP:0004308", // ventricular arrhythmia
];

/// A common disorder: its code, weight in the population, and what comes with it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Profile {
    pub(crate) orpha_code: &'static str,
    pub(crate) weight: f64,
    pub(crate) genes: &'static [Gene],
    pub(crate) icd10: &'static str,
    pub(crate) omim: &'static str,
    pub(crate) hpo: &'static [&'static str],
    /// Share of patients whose onset is in childhood.
    pub(crate) paediatric: f64,
}

const COMMON: &[Profile] = &[
    Profile {
        orpha_code: "ORPHA:217569",
        weight: 14.0,
        genes: &[MYH7, MYBPC3, TNNT2, TNNI3],
        icd10: "I42.1",
        omim: "192600",
        hpo: &["HP:0001639", "HP:0001712", "HP:0005157"],
        paediatric: 0.15,
    },
    Profile {
        orpha_code: "ORPHA:154",
        weight: 10.0,
        genes: &[TTN, LMNA, RBM20, MYH7],
        icd10: "I42.0",
        omim: "115200",
        hpo: &["HP:0001644", "HP:0001635"],
        paediatric: 0.1,
    },
    Profile {
        orpha_code: "ORPHA:217656",
        weight: 6.0,
        genes: &[PKP2, DSP, DSG2],
        icd10: "I42.8",
        omim: "609040",
        hpo: &["HP:0011703", "HP:0004308"],
        paediatric: 0.05,
    },
    Profile {
        orpha_code: "ORPHA:101016",
        weight: 6.0,
        genes: &[KCNQ1, KCNH2, SCN5A],
        icd10: "I45.8",
        omim: "192500",
        hpo: &["HP:0001657", "HP:0001279"],
        paediatric: 0.4,
    },
    Profile {
        orpha_code: "ORPHA:130",
        weight: 6.0,
        genes: &[SCN5A],
        icd10: "I49.8",
        omim: "601144",
        hpo: &["HP:0004308", "HP:0001279"],
        paediatric: 0.05,
    },
    Profile {
        orpha_code: "ORPHA:324",
        weight: 4.0,
        genes: &[GLA],
        icd10: "E75.2",
        omim: "301500",
        hpo: &["HP:0001639", "HP:0000083", "HP:0001009"],
        paediatric: 0.3,
    },
    Profile {
        orpha_code: "ORPHA:54260",
        weight: 3.0,
        genes: &[MYH7, TTN],
        icd10: "Q24.8",
        omim: "604169",
        hpo: &["HP:0011664", "HP:0001635"],
        paediatric: 0.35,
    },
    Profile {
        orpha_code: "ORPHA:3286",
        weight: 2.0,
        genes: &[RYR2],
        icd10: "I47.2",
        omim: "604772",
        hpo: &["HP:0004756", "HP:0001279"],
        paediatric: 0.7,
    },
    Profile {
        orpha_code: "ORPHA:85447",
        weight: 2.0,
        genes: &[TTR],
        icd10: "E85.1",
        omim: "105210",
        hpo: &["HP:0001639", "HP:0003477"],
        paediatric: 0.0,
    },
    Profile {
        orpha_code: "ORPHA:648",
        weight: 2.0,
        genes: &[PTPN11],
        icd10: "Q87.1",
        omim: "163950",
        hpo: &["HP:0001642", "HP:0004322"],
        paediatric: 0.95,
    },
];

/// Share of patients whose disorder comes from the long tail.
const TAIL_SHARE: f64 = 0.06;

/// Zipf exponent of the tail.
const TAIL_EXPONENT: f64 = 1.1;

/// A disorder patients can have: its code and, for the common ones, its profile.
#[derive(Debug, Clone)]
pub(crate) struct Disorder {
    pub(crate) orpha_code: String,
    pub(crate) profile: Option<&'static Profile>,
}

/// The disorder table with cumulative weights for sampling.
#[derive(Debug)]
pub(crate) struct Catalogue {
    entries: Vec<Disorder>,
    cumulative: Vec<f64>,
}

/// Disorder types that a patient is diagnosed with (groups and categories are not).
fn is_diagnosable(term: &OrphaTerm) -> bool {
    matches!(
        term.disorder_type.as_str(),
        "Disease"
            | "Malformation syndrome"
            | "Clinical subtype"
            | "Etiological subtype"
            | "Morphological anomaly"
    )
}

impl Catalogue {
    /// Builds the catalogue from the Orphanet terms: common profiles first, then the tail
    /// in a fixed pseudo-random order (so "rare" is not simply "low code number").
    pub(crate) fn new(terms: &[OrphaTerm]) -> Catalogue {
        let mut entries: Vec<Disorder> = COMMON
            .iter()
            .map(|p| Disorder {
                orpha_code: p.orpha_code.to_string(),
                profile: Some(p),
            })
            .collect();
        let mut weights: Vec<f64> = COMMON.iter().map(|p| p.weight).collect();
        let common_weight: f64 = weights.iter().sum();
        let mut tail: Vec<&str> = terms
            .iter()
            .filter(|t| is_diagnosable(t) && !COMMON.iter().any(|p| p.orpha_code == t.orpha_code))
            .map(|t| t.orpha_code.as_str())
            .collect();
        tail.sort_by_key(|code| scramble(code));
        let tail_norm: f64 = (1..=tail.len())
            .map(|rank| (rank as f64).powf(-TAIL_EXPONENT))
            .sum();
        let tail_weight = common_weight * TAIL_SHARE / (1.0 - TAIL_SHARE);
        for (rank, code) in tail.into_iter().enumerate() {
            weights.push(tail_weight * ((rank + 1) as f64).powf(-TAIL_EXPONENT) / tail_norm);
            entries.push(Disorder {
                orpha_code: code.to_string(),
                profile: None,
            });
        }
        let mut total = 0.0;
        let cumulative = weights
            .iter()
            .map(|w| {
                total += w;
                total
            })
            .collect();
        Catalogue {
            entries,
            cumulative,
        }
    }

    /// The disorder at quantile `u` in [0, 1).
    pub(crate) fn pick(&self, u: f64) -> &Disorder {
        let total = self.cumulative.last().copied().unwrap_or(1.0);
        let index = self.cumulative.partition_point(|&c| c <= u * total);
        &self.entries[index.min(self.entries.len() - 1)]
    }
}

/// A fixed, platform-independent shuffle key (FNV-1a).
fn scramble(text: &str) -> u64 {
    text.bytes().fold(0xcbf2_9ce4_8422_2325, |hash, b| {
        (hash ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    })
}
