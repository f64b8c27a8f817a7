//! Helpers for the SQL tests.

use datafusion::physical_plan::{ExecutionPlan, displayable};

/// Asserts that `frame`'s plan aggregates in one stage: no repartition and no partial states.
pub(super) async fn assert_one_stage(frame: datafusion::dataframe::DataFrame) {
    let plan: std::sync::Arc<dyn ExecutionPlan> = frame.create_physical_plan().await.unwrap();
    let shown = displayable(plan.as_ref()).indent(true).to_string();
    assert!(shown.contains("mode=SinglePartitioned"), "{shown}");
    assert!(!shown.contains("RepartitionExec"), "{shown}");
}
