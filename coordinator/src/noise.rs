//! What the researcher is told about the noise in a merged table.
//!
//! Nodes that noise their release (DESIGN.md, "Studies and privacy budgets") say how, per
//! released partial: the mechanism, the variance of their draw, its 95 % margin. The
//! coordinator keeps that beside each stored answer (in the Arrow schema's metadata of
//! the stored partials, or of a secure round's totals, under [`NOISE_METADATA`]), adds the
//! variances of every answering site per aggregate at the merge, and stores the summary
//! in the merged table's schema metadata, where `ern results` and `GetResults` read it.
//! It is a description for the researcher, not a guarantee: each node enforces its own.

use std::collections::HashMap;
use std::sync::Arc;

use arrow::datatypes::{Schema, SchemaRef};
use ern_proto::{arrow_ipc, v1};
use ern_queries::QueryPlan;
use serde::{Deserialize, Serialize};

/// The schema metadata key of the noise description.
pub const NOISE_METADATA: &str = "ern.noise";

/// One site's noise on one released partial.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct SiteNoise {
    partial: u32,
    mechanism: String,
    variance: f64,
    margin95: u64,
}

/// The noise on one aggregate of a merged table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AggregateNoise {
    /// The aggregate as planned (an AVG's sum and count apart).
    pub aggregate: String,
    /// The mechanism, or `mixed`.
    pub mechanism: String,
    /// Sites whose noise it carries.
    pub sites: u32,
    /// Variance of the total noise.
    pub variance: f64,
    /// 95 % half-width of the total noise.
    pub margin95: u64,
}

impl From<AggregateNoise> for v1::AggregateNoise {
    fn from(noise: AggregateNoise) -> Self {
        v1::AggregateNoise {
            aggregate: noise.aggregate,
            mechanism: noise.mechanism,
            sites: noise.sites,
            variance: noise.variance,
            margin95: noise.margin95,
        }
    }
}

/// Stored answer bytes (an Arrow IPC stream) with the noise reports of the sites in it
/// (one list per site) in the schema's metadata; unchanged where no site noised.
pub fn with_site_noise(bytes: Vec<u8>, sites: &[Vec<v1::PartialNoise>]) -> Result<Vec<u8>, String> {
    if sites.iter().all(Vec::is_empty) {
        return Ok(bytes);
    }
    let lists: Vec<Vec<SiteNoise>> = sites
        .iter()
        .filter(|reports| !reports.is_empty())
        .map(|reports| {
            reports
                .iter()
                .map(|report| SiteNoise {
                    partial: report.partial,
                    mechanism: report.mechanism.chars().take(40).collect(),
                    variance: if report.variance.is_finite() {
                        report.variance.max(0.0)
                    } else {
                        0.0
                    },
                    margin95: report.margin95,
                })
                .collect()
        })
        .collect();
    let (schema, batches) = arrow_ipc::decode(&bytes).map_err(|e| e.to_string())?;
    let json = serde_json::to_string(&lists).map_err(|e| e.to_string())?;
    let mut metadata = schema.metadata().clone();
    metadata.insert(NOISE_METADATA.to_string(), json);
    let schema: SchemaRef = Arc::new(Schema::new_with_metadata(schema.fields().clone(), metadata));
    let batches = batches
        .into_iter()
        .map(|batch| batch.with_schema(Arc::clone(&schema)))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| e.to_string())?;
    arrow_ipc::encode(&schema, &batches).map_err(|e| e.to_string())
}

/// The site noise lists a stored answer's schema carries.
fn site_noise_of(schema: &Schema) -> Vec<Vec<SiteNoise>> {
    schema
        .metadata()
        .get(NOISE_METADATA)
        .and_then(|json| serde_json::from_str(json).ok())
        .unwrap_or_default()
}

/// The names of a question's released partials, in order: each aggregate, an AVG as its
/// sum and its count, a variance or standard deviation as its count, sum and sum of
/// squares ([`ern_queries::validate::AggregateKind::partial_labels`]).
fn partial_names(plan: &QueryPlan) -> Vec<String> {
    let mut names = Vec::new();
    for aggregate in &plan.barrier().aggregates {
        let name = aggregate.expr.schema_name().to_string();
        for label in aggregate.kind.partial_labels() {
            names.push(if label.is_empty() {
                name.clone()
            } else {
                format!("{name} {label}")
            });
        }
    }
    names
}

/// The noise of every aggregate of a merge over answers with `schemas`.
pub fn merged_noise<'a>(
    plan: &QueryPlan,
    schemas: impl IntoIterator<Item = &'a Schema>,
) -> Vec<AggregateNoise> {
    let names = partial_names(plan);
    let mut per_partial: HashMap<u32, Vec<SiteNoise>> = HashMap::new();
    for schema in schemas {
        for site in site_noise_of(schema) {
            for noise in site {
                per_partial.entry(noise.partial).or_default().push(noise);
            }
        }
    }
    let mut summary = Vec::new();
    for (index, name) in names.into_iter().enumerate() {
        let Some(draws) = per_partial.get(&(index as u32)) else {
            continue;
        };
        let variance: f64 = draws.iter().map(|draw| draw.variance).sum();
        let mechanism = match draws.first() {
            Some(first) if draws.iter().all(|d| d.mechanism == first.mechanism) => {
                first.mechanism.clone()
            }
            _ => "mixed".to_string(),
        };
        let margin95 = match draws.as_slice() {
            [one] if one.mechanism != "skellam" => one.margin95,
            _ => (1.96 * variance.sqrt()).ceil() as u64,
        };
        summary.push(AggregateNoise {
            aggregate: name,
            mechanism,
            sites: draws.len() as u32,
            variance,
            margin95,
        });
    }
    summary
}

/// `schema` with the merged noise summary in its metadata (unchanged for none).
pub fn with_merged_noise(schema: SchemaRef, noise: &[AggregateNoise]) -> SchemaRef {
    if noise.is_empty() {
        return schema;
    }
    let Ok(json) = serde_json::to_string(noise) else {
        return schema;
    };
    let mut metadata = schema.metadata().clone();
    metadata.insert(NOISE_METADATA.to_string(), json);
    Arc::new(Schema::new_with_metadata(schema.fields().clone(), metadata))
}

/// The noise summary of a stored merged table (Arrow IPC bytes); empty where none.
pub fn noise_of_result(bytes: &[u8]) -> Vec<AggregateNoise> {
    arrow_ipc::decode(bytes)
        .ok()
        .and_then(|(schema, _)| {
            schema
                .metadata()
                .get(NOISE_METADATA)
                .and_then(|json| serde_json::from_str(json).ok())
        })
        .unwrap_or_default()
}
