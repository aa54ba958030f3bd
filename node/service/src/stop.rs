//! A time limit that stops the work (rule 8).
//!
//! Aborting the task that runs a query does not stop it: an operator that loops over its
//! child's batches without touching a scan (an aggregate over a join's output, say) never
//! yields to tokio, so the abort waits, the core stays busy and the memory grows (red
//! team: a legal 8-way self-join kept a core at 100 % long after its refusal). Every
//! operator of a site's physical plan is therefore wrapped in [`StopExec`]: its output
//! stream checks a [`StopSignal`] before every batch it hands on, and yields to tokio
//! through DataFusion's cooperative budget. Once the signal is raised, every operator
//! fails at its next batch boundary and the query's tasks end.
//!
//! Queries also run on a runtime of their own ([`QueryRuntime`]), so however long a
//! question computes, the node's link (its heartbeats, other answers) is served by
//! threads no question occupies.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};

use arrow::datatypes::SchemaRef;
use datafusion::common::tree_node::{Transformed, TreeNode, TreeNodeRecursion};
use datafusion::error::{DataFusionError, Result};
use datafusion::execution::{RecordBatchStream, SendableRecordBatchStream, TaskContext};
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_plan::coop::make_cooperative;
use datafusion::physical_plan::{DisplayAs, DisplayFormatType, ExecutionPlan, PlanProperties};
use futures::Stream;

/// The threads questions run on, apart from the runtime that serves the link.
#[derive(Debug)]
pub struct QueryRuntime {
    runtime: Option<tokio::runtime::Runtime>,
}

impl QueryRuntime {
    /// A runtime of `threads` threads, each with the stack the deepest accepted question
    /// needs.
    pub fn new(threads: usize) -> std::io::Result<Self> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads.max(1))
            .thread_name("ern-query")
            .thread_stack_size(ern_queries::validate::PLANNING_STACK_BYTES)
            .enable_time()
            .build()?;
        Ok(QueryRuntime {
            runtime: Some(runtime),
        })
    }

    /// Where to spawn a question's work.
    pub fn handle(&self) -> Option<&tokio::runtime::Handle> {
        self.runtime.as_ref().map(tokio::runtime::Runtime::handle)
    }
}

impl Drop for QueryRuntime {
    fn drop(&mut self) {
        // Dropped from async code (an engine dropped in a task), a runtime may not block.
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

/// Raised when a query must stop; shared by every operator of its plan.
#[derive(Debug, Clone, Default)]
pub struct StopSignal(Arc<AtomicBool>);

impl StopSignal {
    /// Asks every operator of the query to stop at its next batch.
    pub fn raise(&self) {
        self.0.store(true, Ordering::Release);
    }

    fn raised(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }
}

/// Wraps every operator of `plan` so that it stops when `signal` is raised.
pub fn stoppable(
    plan: Arc<dyn ExecutionPlan>,
    signal: &StopSignal,
) -> Result<Arc<dyn ExecutionPlan>> {
    plan.transform_up(|node| {
        Ok(Transformed::yes(Arc::new(StopExec {
            input: node,
            signal: signal.clone(),
        }) as Arc<dyn ExecutionPlan>))
    })
    .map(|transformed| transformed.data)
}

/// One operator whose output stops when the query's [`StopSignal`] is raised.
#[derive(Debug)]
pub struct StopExec {
    input: Arc<dyn ExecutionPlan>,
    signal: StopSignal,
}

impl DisplayAs for StopExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "StopExec")
    }
}

impl ExecutionPlan for StopExec {
    fn name(&self) -> &str {
        "StopExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        self.input.properties()
    }

    fn maintains_input_order(&self) -> Vec<bool> {
        vec![true]
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![&self.input]
    }

    fn apply_expressions(
        &self,
        _f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> Result<TreeNodeRecursion>,
    ) -> Result<TreeNodeRecursion> {
        Ok(TreeNodeRecursion::Continue)
    }

    fn with_new_children(
        self: Arc<Self>,
        mut children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        match (children.pop(), children.is_empty()) {
            (Some(input), true) => Ok(Arc::new(StopExec {
                input,
                signal: self.signal.clone(),
            })),
            _ => Err(DataFusionError::Internal(
                "StopExec wraps exactly one operator".into(),
            )),
        }
    }

    fn execute(
        &self,
        partition: usize,
        context: Arc<TaskContext>,
    ) -> Result<SendableRecordBatchStream> {
        let input = self.input.execute(partition, context)?;
        Ok(Box::pin(StopStream {
            schema: input.schema(),
            input: make_cooperative(input),
            signal: self.signal.clone(),
        }))
    }
}

/// The output of a [`StopExec`].
struct StopStream {
    schema: SchemaRef,
    input: SendableRecordBatchStream,
    signal: StopSignal,
}

impl Stream for StopStream {
    type Item = Result<arrow::array::RecordBatch>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.signal.raised() {
            return Poll::Ready(Some(Err(DataFusionError::ResourcesExhausted(
                "the query was stopped at this site's time limit".into(),
            ))));
        }
        self.input.as_mut().poll_next(cx)
    }
}

impl RecordBatchStream for StopStream {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }
}
