//! Helpers for the SQL tests.

use datafusion::physical_plan::{ExecutionPlan, displayable};

/// Asserts that `plan` aggregates in one stage: no repartition and no partial states.
pub(super) fn assert_one_stage(plan: &dyn ExecutionPlan) {
    let shown = displayable(plan).indent(true).to_string();
    assert!(shown.contains("mode=SinglePartitioned"), "{shown}");
    assert!(!shown.contains("RepartitionExec"), "{shown}");
}
