//! A question is planned once at the coordinator: at submission. A steward's look, each
//! site's answer and the merge use the plan kept since; after a restart the plan is built
//! once more from the stored SQL, and the steward's report is read as stored.

use crate::common;

use std::sync::Arc;

use arrow::array::{ArrayRef, Int64Array, RecordBatch, StringArray};
use ern_coordinator::limits::Limits;
use ern_coordinator::model::{Role, SiteState, now_seconds};
use ern_coordinator::{Coordinator, Db, Timing};
use ern_proto::approval::Approval;
use ern_proto::{arrow_ipc, v1};

/// One site's released partials for `common::SQL`: sex and its count.
fn answer(query_id: &str, counts: &[(&str, i64)]) -> v1::WorkResult {
    let sexes: Vec<&str> = counts.iter().map(|(sex, _)| *sex).collect();
    let ns: Vec<i64> = counts.iter().map(|(_, n)| *n).collect();
    let batch = RecordBatch::try_from_iter(vec![
        ("__g0", Arc::new(StringArray::from(sexes)) as ArrayRef),
        ("__p0", Arc::new(Int64Array::from(ns)) as ArrayRef),
    ])
    .expect("batch");
    let bytes = arrow_ipc::encode(&batch.schema(), &[batch]).expect("encode");
    v1::WorkResult {
        query_id: query_id.into(),
        outcome: Some(v1::work_result::Outcome::Released(v1::Released {
            arrow_ipc: bytes,
            ..Default::default()
        })),
        ..Default::default()
    }
}

fn approve_and_dispatch(db: &Db, query_id: &str, site: &str) {
    let now = now_seconds();
    let approval = Approval {
        study_id: query_id.into(),
        site_id: site.into(),
        query_hash: ern_queries::query_hash(common::SQL),
        expires_at: now + 3600,
        key_id: "0123456789abcdef".into(),
        signature: vec![1u8; 64],
    };
    assert!(db.approve(query_id, "s", &approval, now).expect("approve"));
    assert!(db.mark_dispatched(query_id, site, now).expect("dispatch"));
}

#[tokio::test]
async fn a_question_is_planned_once_at_submission_and_once_after_a_restart() {
    let net = common::start(Limits::default()).await;
    let mut researcher = net.researcher(net.user("ada", Role::Researcher, "")).await;
    let mut steward = net.steward(net.user("sam", Role::Steward, "a")).await;
    assert_eq!(net.core.plans_built(), 0);

    let submitted = researcher
        .submit(common::submit("by sex", common::SQL))
        .await
        .expect("submit")
        .into_inner();
    let id = submitted.query_id;
    assert_eq!(net.core.plans_built(), 1, "planned at submission");
    let stored = net.core.db().report(&id).expect("report").expect("row");
    assert!(stored.contains("patient"), "{stored}");

    for _ in 0..3 {
        let review = steward
            .show_query(v1::ShowQueryRequest {
                query_id: id.clone(),
            })
            .await
            .expect("show")
            .into_inner();
        assert_eq!(review.tables, vec!["patient".to_string()]);
        assert_eq!(review.group_by.len(), 1, "{:?}", review.group_by);
    }
    assert_eq!(net.core.plans_built(), 1, "a steward's look plans nothing");

    approve_and_dispatch(net.core.db(), &id, "a");
    approve_and_dispatch(net.core.db(), &id, "b");
    net.core
        .handle_result("a", answer(&id, &[("female", 7), ("male", 9)]))
        .await
        .expect("answer a");
    assert_eq!(
        net.core.db().targets(&id).expect("targets")[0].state,
        SiteState::Answered
    );
    assert_eq!(net.core.plans_built(), 1, "an answer's check plans nothing");

    // A restart: a new coordinator over the same database builds the plan once more,
    // from the stored SQL, for the last answer's check and the merge together.
    let restarted = Coordinator::new(Db::open(&net.db_path()).expect("db"), Timing::default())
        .expect("coordinator");
    restarted
        .handle_result("b", answer(&id, &[("female", 6)]))
        .await
        .expect("answer b");
    assert_eq!(restarted.plans_built(), 1, "rebuilt once after a restart");
    let result = restarted.db().result(&id).expect("result").expect("merged");
    assert_eq!(result.rows, 2);
    let (_, batches) = arrow_ipc::decode(&result.arrow_ipc).expect("decode");
    let n = batches[0]
        .column_by_name("n")
        .expect("n")
        .as_any()
        .downcast_ref::<Int64Array>()
        .expect("counts")
        .iter()
        .flatten()
        .sum::<i64>();
    assert_eq!(n, 22, "7 + 9 + 6 merged");
    assert_eq!(net.core.plans_built(), 1);
}
