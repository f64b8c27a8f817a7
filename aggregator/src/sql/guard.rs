//! Guards that keep one hostile query from taking the service down: a nesting limit checked on
//! the query's tokens before anything recursive runs (parser, planner and optimizer all recurse
//! on the expression tree, and a thread's stack is finite), and cancellation that stops a
//! query's work, not only its answer (ADR 014).

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};

use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::common::config::ConfigOptions;
use datafusion::common::tree_node::{Transformed, TreeNode};
use datafusion::common::{DataFusionError, Statistics};
use datafusion::execution::{RecordBatchStream, SendableRecordBatchStream, TaskContext};
use datafusion::physical_optimizer::PhysicalOptimizerRule;
use datafusion::physical_plan::{DisplayAs, DisplayFormatType, ExecutionPlan, PlanProperties};
use datafusion::sql::sqlparser::dialect::GenericDialect;
use datafusion::sql::sqlparser::keywords::Keyword;
use datafusion::sql::sqlparser::tokenizer::{Token, Tokenizer};
use futures::Stream;

use crate::error::{Error, Result};

/// Bytes of stack a query thread needs per level of nesting the limit allows, measured on the
/// deepest expressions DataFusion plans (chains of `+`, `OR`, `||`, `UNION ALL`, joins), with a
/// margin; see ADR 014.
pub const STACK_BYTES_PER_LEVEL: usize = 64 << 10;

/// Stack of a query thread for nesting up to `max_depth`: enough for the deepest query the
/// limit lets through. Only the pages a query touches are ever resident.
pub fn stack_bytes(max_depth: usize) -> usize {
    (8 << 20) + max_depth.saturating_mul(STACK_BYTES_PER_LEVEL)
}

/// Refuses a query that nests or chains more than `max_depth` operators, measured on its tokens
/// without building a tree: at each bracket level, every operator, keyword and comma so far
/// counts, plus one per enclosing bracket. That bounds how deep any tree parsed from it can be
/// (each level of a tree takes at least one such token), so a query that passes can be parsed,
/// planned and dropped on a thread of [`stack_bytes`].
pub fn check_depth(sql: &str, max_depth: usize) -> Result<()> {
    let tokens = Tokenizer::new(&GenericDialect {}, sql)
        .tokenize()
        .map_err(|e| Error::Query(format!("cannot read the SQL: {e}")))?;
    // The count of each open bracket level, innermost last; their sum is the depth here.
    let mut levels: Vec<usize> = vec![0];
    let mut depth = 0usize;
    for token in &tokens {
        let counts = match token {
            Token::Whitespace(_) | Token::EOF | Token::Period => false,
            Token::LParen | Token::LBracket | Token::LBrace => {
                depth += 1;
                levels.push(0);
                false
            }
            Token::RParen | Token::RBracket | Token::RBrace => {
                if levels.len() > 1 {
                    depth -= levels.pop().unwrap_or(0) + 1;
                }
                false
            }
            Token::Word(w) => w.keyword != Keyword::NoKeyword && w.quote_style.is_none(),
            Token::Number(..) | Token::Placeholder(_) => false,
            // Literals of every quoting style.
            t if is_literal(t) => false,
            _ => true,
        };
        if counts {
            depth += 1;
            if let Some(level) = levels.last_mut() {
                *level += 1;
            }
        }
        if depth > max_depth {
            return Err(Error::Query(format!(
                "the query nests or chains more than {max_depth} operators, keywords and \
                 brackets (sql.max_expression_depth); split it into smaller queries, or raise \
                 the limit"
            )));
        }
    }
    Ok(())
}

fn is_literal(token: &Token) -> bool {
    matches!(
        token,
        Token::SingleQuotedString(_)
            | Token::DoubleQuotedString(_)
            | Token::TripleSingleQuotedString(_)
            | Token::TripleDoubleQuotedString(_)
            | Token::DollarQuotedString(_)
            | Token::SingleQuotedByteStringLiteral(_)
            | Token::DoubleQuotedByteStringLiteral(_)
            | Token::TripleSingleQuotedByteStringLiteral(_)
            | Token::TripleDoubleQuotedByteStringLiteral(_)
            | Token::SingleQuotedRawStringLiteral(_)
            | Token::DoubleQuotedRawStringLiteral(_)
            | Token::TripleSingleQuotedRawStringLiteral(_)
            | Token::TripleDoubleQuotedRawStringLiteral(_)
            | Token::NationalStringLiteral(_)
            | Token::EscapedStringLiteral(_)
            | Token::UnicodeStringLiteral(_)
            | Token::HexStringLiteral(_)
    )
}

/// Set when a query is cancelled (its deadline passed or its client went away). Every operator
/// of its plan checks it before each batch, so work stops within a batch even in operators that
/// never wait (a cross join of in-memory rows), and in the tasks DataFusion spawned for it.
#[derive(Debug, Clone, Default)]
pub struct Cancel(Arc<AtomicBool>);

impl Cancel {
    pub fn cancel(&self) {
        self.0.store(true, Ordering::Release);
    }

    fn is_cancelled(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }

    /// The physical optimizer rule that puts this check above every operator of a plan.
    pub fn rule(&self) -> Arc<dyn PhysicalOptimizerRule + Send + Sync> {
        Arc::new(CancelRule(self.clone()))
    }
}

/// Cancels on drop: held by whatever owns a query's run.
#[derive(Debug)]
pub struct CancelOnDrop(pub Cancel);

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        self.0.cancel();
    }
}

#[derive(Debug)]
struct CancelRule(Cancel);

impl PhysicalOptimizerRule for CancelRule {
    fn optimize(
        &self,
        plan: Arc<dyn ExecutionPlan>,
        _config: &ConfigOptions,
    ) -> datafusion::common::Result<Arc<dyn ExecutionPlan>> {
        plan.transform_up(|node| {
            Ok(Transformed::yes(
                Arc::new(CancelExec::new(node, self.0.clone())) as Arc<dyn ExecutionPlan>,
            ))
        })
        .map(|t| t.data)
    }

    fn name(&self) -> &str {
        "recmeter_cancel"
    }

    fn schema_check(&self) -> bool {
        true
    }
}

/// Passes its input's batches on until the query is cancelled, then answers an error.
#[derive(Debug)]
struct CancelExec {
    input: Arc<dyn ExecutionPlan>,
    cancel: Cancel,
}

impl CancelExec {
    fn new(input: Arc<dyn ExecutionPlan>, cancel: Cancel) -> Self {
        Self { input, cancel }
    }
}

impl DisplayAs for CancelExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "CancelExec")
    }
}

impl ExecutionPlan for CancelExec {
    fn name(&self) -> &str {
        "CancelExec"
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

    fn with_new_children(
        self: Arc<Self>,
        mut children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> datafusion::common::Result<Arc<dyn ExecutionPlan>> {
        match (children.pop(), children.is_empty()) {
            (Some(input), true) => Ok(Arc::new(CancelExec::new(input, self.cancel.clone()))),
            _ => Err(DataFusionError::Internal(
                "CancelExec takes exactly one child".into(),
            )),
        }
    }

    fn execute(
        &self,
        partition: usize,
        context: Arc<TaskContext>,
    ) -> datafusion::common::Result<SendableRecordBatchStream> {
        if self.cancel.is_cancelled() {
            return Err(cancelled());
        }
        Ok(Box::pin(CancelStream {
            inner: self.input.execute(partition, context)?,
            cancel: self.cancel.clone(),
        }))
    }

    fn partition_statistics(
        &self,
        partition: Option<usize>,
    ) -> datafusion::common::Result<Arc<Statistics>> {
        self.input.partition_statistics(partition)
    }
}

struct CancelStream {
    inner: SendableRecordBatchStream,
    cancel: Cancel,
}

impl Stream for CancelStream {
    type Item = datafusion::common::Result<RecordBatch>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.cancel.is_cancelled() {
            return Poll::Ready(Some(Err(cancelled())));
        }
        self.inner.as_mut().poll_next(cx)
    }
}

impl RecordBatchStream for CancelStream {
    fn schema(&self) -> SchemaRef {
        self.inner.schema()
    }
}

fn cancelled() -> DataFusionError {
    DataFusionError::Execution("the query was cancelled".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn depth_ok(sql: &str, limit: usize) -> bool {
        check_depth(sql, limit).is_ok()
    }

    #[test]
    fn long_chains_and_deep_nesting_are_refused_on_the_tokens() {
        let plus = format!("SELECT 1{}", "+1".repeat(2_000));
        let or = format!("SELECT * FROM t WHERE a=1{}", " OR a=1".repeat(2_000));
        let union = format!("SELECT 1, 2{}", " UNION ALL SELECT 1, 2".repeat(3_000));
        let concat = format!("SELECT 'a'{}", "||'a'".repeat(3_000));
        let tables = format!(
            "SELECT 1 FROM t0{}",
            (1..3_000).map(|i| format!(", t{i}")).collect::<String>()
        );
        let brackets = format!("SELECT {}1{}", "(".repeat(2_000), ")".repeat(2_000));
        for sql in [&plus, &or, &union, &concat, &tables, &brackets] {
            let e = check_depth(sql, 1_000).unwrap_err();
            assert!(e.to_string().contains("sql.max_expression_depth"), "{e}");
        }
        // A big but flat query passes: brackets closed are not counted again.
        let flat = (0..200)
            .map(|i| format!("sum(requests_le_0_2 * {i})"))
            .collect::<Vec<_>>()
            .join(" + 0 * 0, ");
        assert!(depth_ok(
            &format!("SELECT {flat} FROM latency_minutes"),
            1_000
        ));
        assert!(depth_ok(
            "SELECT service, hdr_quantile(hdr_merge(hdr), 0.99) FROM latency_minutes \
             WHERE minute >= now() - INTERVAL '5 minutes' AND service = 'a+b+c' GROUP BY service",
            30
        ));
        // Strings and quoted names hold no operators.
        assert!(depth_ok(&format!("SELECT '{}'", "+".repeat(10_000)), 10));
    }
}
