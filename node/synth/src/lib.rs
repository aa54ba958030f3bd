//! `ern synth`: synthetic site exports, realistic enough for research demos and tests.
//!
//! Each site is an export in the interchange format (data-model.md section 1), written
//! with polars. The same arguments always give the same bytes: every site draws from its
//! own ChaCha8 stream seeded from the run's seed and the site number, and nothing reads
//! the clock (the registry's "today" is fixed).
//!
//! What makes it realistic: sites of different sizes, cardiac ORPHAcodes with a few common
//! disorders and a long tail, ICD-10 and OMIM codes for a minority, birth years over a
//! century, onset in childhood or adulthood with diagnostic delays of years, genes with
//! HGVS strings for about a third of patients, HPO phenotypes (some excluded), undiagnosed
//! patients, and 5-10% of patients without consent or opted out.
//!
//! # Trust boundary
//! None: every patient here is invented, and the output is an export like a hospital's,
//! read by `ern-ingest` through the same checks as real data.
//!
//! # Layout
//! - this module: [`synthesize`] and its configuration.
//! - `catalogue`: the disorders, genes and phenotypes drawn from, with their frequencies.
//! - `patient`: one patient's rows.
//! - `table`: the site's tables, written as the export's CSV files with polars.

mod catalogue;
mod patient;
mod table;

use std::path::{Path, PathBuf};

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use catalogue::Catalogue;
use ern_ingest::progress::Progress;
use ern_node::reference;
use table::SiteTables;

/// Errors of the synthetic generator.
#[derive(Debug, thiserror::Error)]
pub enum SynthError {
    /// The arguments make no registry.
    #[error("{0}")]
    Arguments(String),
    /// A file or directory could not be written.
    #[error("{}: {source}", path.display())]
    Io {
        /// The path.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// polars could not write a CSV file.
    #[error("writing {}: {message}", path.display())]
    Write {
        /// The file.
        path: PathBuf,
        /// What polars said.
        message: String,
    },
    /// The shipped reference data could not be read.
    #[error("reference data: {0}")]
    Reference(String),
}

/// What to generate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SynthConfig {
    /// Number of sites (hospitals).
    pub sites: usize,
    /// Patients over all sites.
    pub patients: usize,
    /// Seed of the whole run.
    pub seed: u64,
}

/// What was generated for one site.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SiteSummary {
    /// Directory of the site's export.
    pub dir: PathBuf,
    /// Rows per file: patient, diagnosis, genetic_finding, phenotype.
    pub rows: [usize; 4],
}

/// Patients per site: weights falling as 1/i^0.6, rounded by largest remainder so the
/// sizes differ from site to site and add up to `patients` exactly.
pub fn site_sizes(sites: usize, patients: usize) -> Vec<usize> {
    let weights: Vec<f64> = (1..=sites).map(|i| (i as f64).powf(-0.6)).collect();
    let total: f64 = weights.iter().sum();
    let exact: Vec<f64> = weights
        .iter()
        .map(|w| w / total * patients as f64)
        .collect();
    let mut sizes: Vec<usize> = exact.iter().map(|x| x.floor() as usize).collect();
    let mut order: Vec<usize> = (0..sites).collect();
    order.sort_by(|&a, &b| {
        (exact[b] - exact[b].floor())
            .total_cmp(&(exact[a] - exact[a].floor()))
            .then(a.cmp(&b))
    });
    let missing = patients - sizes.iter().sum::<usize>();
    for &site in order.iter().take(missing) {
        sizes[site] += 1;
    }
    sizes
}

/// The seed of one site's random stream (SplitMix64 of the run seed and site number).
fn site_seed(seed: u64, site: usize) -> u64 {
    let mut z = seed ^ (site as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Writes `DIR/site-1` … `DIR/site-N`, each a complete export.
pub fn synthesize(
    config: SynthConfig,
    out: &Path,
    progress: &dyn Progress,
) -> Result<Vec<SiteSummary>, SynthError> {
    if config.sites == 0 {
        return Err(SynthError::Arguments("--sites must be at least 1".into()));
    }
    let terms = reference::terms().map_err(|e| SynthError::Reference(e.to_string()))?;
    let catalogue = Catalogue::new(&terms);
    std::fs::create_dir_all(out).map_err(|source| SynthError::Io {
        path: out.into(),
        source,
    })?;
    let sizes = site_sizes(config.sites, config.patients);
    progress.stage("synthesising patients", config.patients as u64);
    let threads = std::thread::available_parallelism().map_or(1, usize::from);
    let mut summaries = Vec::with_capacity(config.sites);
    let sites: Vec<(usize, usize)> = sizes
        .into_iter()
        .enumerate()
        .map(|(i, n)| (i + 1, n))
        .collect();
    for batch in sites.chunks(threads) {
        let results: Vec<Result<SiteSummary, SynthError>> = std::thread::scope(|scope| {
            let handles: Vec<_> = batch
                .iter()
                .map(|&(site, patients)| {
                    let catalogue = &catalogue;
                    scope.spawn(move || {
                        let dir = out.join(format!("site-{site}"));
                        let mut rng = ChaCha8Rng::seed_from_u64(site_seed(config.seed, site));
                        let mut tables = SiteTables::new();
                        for number in 1..=patients {
                            patient::generate(&mut rng, site, number, catalogue, &mut tables);
                            if number % 10_000 == 0 {
                                progress.advance(10_000);
                            }
                        }
                        progress.advance((patients % 10_000) as u64);
                        let rows = tables.write(&dir)?;
                        Ok(SiteSummary { dir, rows })
                    })
                })
                .collect();
            handles.into_iter().map(ern_ingest::threads::join).collect()
        });
        for result in results {
            summaries.push(result?);
        }
    }
    progress.finish();
    Ok(summaries)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn site_sizes_differ_and_add_up() {
        let sizes = site_sizes(5, 1000);
        assert_eq!(sizes.iter().sum::<usize>(), 1000);
        assert!(sizes.windows(2).all(|w| w[0] >= w[1]), "{sizes:?}");
        assert!(sizes[0] > sizes[4] * 2, "{sizes:?}");
        assert_eq!(site_sizes(3, 2).iter().sum::<usize>(), 2);
    }

    #[test]
    fn site_seeds_differ() {
        assert_ne!(site_seed(1, 1), site_seed(1, 2));
        assert_ne!(site_seed(1, 1), site_seed(2, 1));
    }
}
