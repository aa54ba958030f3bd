//! The gRPC services of `ern.v1`, one module each; they share the [`crate::core`].

mod node_link;
mod operator;
mod researcher;
mod steward;

pub use node_link::NodeLinkService;
pub use operator::OperatorService;
pub use researcher::ResearcherService;
pub use steward::StewardService;

use std::collections::HashMap;

use tonic::Status;

use crate::core::{Coordinator, internal};

/// Longest title of a question or a study, in characters: a title is one line of a list.
const MAX_TITLE_CHARS: usize = 200;

/// Longest purpose of a question or a study, in characters.
const MAX_PURPOSE_CHARS: usize = 2000;

/// Checks a title (required) and a purpose (required when `purpose_required`), both
/// trimmed, against their lengths; `what` names the thing titled ("question", "study").
fn check_title_purpose(
    what: &str,
    title: &str,
    purpose: &str,
    purpose_required: bool,
) -> Result<(), Status> {
    if title.is_empty() {
        return Err(Status::invalid_argument(format!("a {what} needs a title")));
    }
    if title.chars().count() > MAX_TITLE_CHARS {
        return Err(Status::invalid_argument(format!(
            "title length limit: a title is at most {MAX_TITLE_CHARS} characters"
        )));
    }
    if purpose_required && purpose.is_empty() {
        return Err(Status::invalid_argument(format!(
            "a {what} needs a purpose"
        )));
    }
    if purpose.chars().count() > MAX_PURPOSE_CHARS {
        return Err(Status::invalid_argument(format!(
            "purpose length limit: a purpose is at most {MAX_PURPOSE_CHARS} characters"
        )));
    }
    Ok(())
}

/// The title of study `id`; empty if there is no such study (a stored question's study
/// always exists: submission checks it, and migration 8 made one for every older question).
fn study_title(core: &Coordinator, id: &str) -> Result<String, Status> {
    Ok(core
        .db()
        .study(id)
        .map_err(internal)?
        .map(|study| study.title)
        .unwrap_or_default())
}

/// Study titles read once per list call, however many of its questions share a study.
#[derive(Debug, Default)]
struct StudyTitles(HashMap<String, String>);

impl StudyTitles {
    /// The title of study `id` (see [`study_title`]).
    fn of(&mut self, core: &Coordinator, id: &str) -> Result<String, Status> {
        if let Some(title) = self.0.get(id) {
            return Ok(title.clone());
        }
        let title = study_title(core, id)?;
        self.0.insert(id.to_string(), title.clone());
        Ok(title)
    }
}

/// A site and what its node last reported (none if it never connected).
type SiteRecord = (String, Option<crate::db::NodeRecord>);

/// A page of the network's sites (sorted by id) with their records, and the next page's
/// token: what the operator's node list and the researcher's site list are made of.
fn sites_page(
    core: &Coordinator,
    page_size: u32,
    page_token: &str,
) -> Result<(Vec<SiteRecord>, String), Status> {
    let page = crate::paging::PageRequest::parse(page_size, page_token)?;
    let mut sites = core
        .db()
        .sites_page(page.after.as_deref().unwrap_or(""), page.fetch())
        .map_err(internal)?;
    let next_page_token = page.finish(&mut sites, String::clone);
    let mut records = Vec::with_capacity(sites.len());
    for site in sites {
        let record = core.db().node(&site).map_err(internal)?;
        records.push((site, record));
    }
    Ok((records, next_page_token))
}
