//! `POST /api/v1/sql`: the body is one read-only SQL statement; the answer is its rows as JSON
//! (default: an array of objects), CSV (`?format=csv`, with a header line) or an Arrow IPC
//! stream (`?format=arrow`, exact types, `hdr` blobs intact).

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use datafusion::arrow::csv::WriterBuilder as CsvWriterBuilder;
use datafusion::arrow::ipc::writer::StreamWriter;
use datafusion::arrow::json::{ArrayWriter, WriterBuilder as JsonWriterBuilder};
use recmeter_aggregator::QueryOutput;
use serde::Deserialize;

use crate::error::ApiError;
use crate::state::ApiState;

/// Largest SQL text accepted (HTTP 413 beyond).
pub const MAX_SQL_BYTES: usize = 1 << 20;

/// Result encodings.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OutputFormat {
    #[default]
    Json,
    Csv,
    Arrow,
}

impl OutputFormat {
    fn content_type(self) -> &'static str {
        match self {
            OutputFormat::Json => "application/json",
            OutputFormat::Csv => "text/csv; charset=utf-8; header=present",
            OutputFormat::Arrow => "application/vnd.apache.arrow.stream",
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SqlParams {
    #[serde(default)]
    format: OutputFormat,
}

/// The handler. The body is taken as SQL text whatever its content type, so
/// `curl --data "SELECT …"` works as is.
pub async fn sql(
    State(state): State<ApiState>,
    params: Result<Query<SqlParams>, axum::extract::rejection::QueryRejection>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let Query(params) = params.map_err(|e| {
        ApiError::bad_request(format!("{}; `format` is json, csv or arrow", e.body_text()))
    })?;
    let body = body.map_err(|e| match e.status() {
        StatusCode::PAYLOAD_TOO_LARGE => {
            ApiError::too_large(format!("the SQL text is larger than {MAX_SQL_BYTES} bytes"))
        }
        _ => ApiError::bad_request(format!("cannot read the SQL text: {}", e.body_text())),
    })?;
    let sql = std::str::from_utf8(&body)
        .map_err(|_| ApiError::bad_request("the SQL text is not UTF-8"))?
        .trim();
    if sql.is_empty() {
        return Err(ApiError::bad_request(
            "send one SQL statement as the request body",
        ));
    }
    let output = state.engine.query(sql).await?;
    let format = params.format;
    let body = tokio::task::spawn_blocking(move || encode(&output, format))
        .await
        .map_err(|e| ApiError::internal(format!("encoding task failed: {e}")))??;
    Ok(([(header::CONTENT_TYPE, format.content_type())], body).into_response())
}

fn encode(output: &QueryOutput, format: OutputFormat) -> Result<Vec<u8>, ApiError> {
    let failed = |e: datafusion::arrow::error::ArrowError| {
        ApiError::bad_request(format!("cannot encode the result as {format:?}: {e}"))
    };
    let mut out = Vec::new();
    match format {
        OutputFormat::Json => {
            let mut writer: ArrayWriter<_> = JsonWriterBuilder::new()
                .with_explicit_nulls(true)
                .build(&mut out);
            for batch in &output.batches {
                writer.write(batch).map_err(failed)?;
            }
            writer.finish().map_err(failed)?;
            drop(writer);
            if out.is_empty() {
                out.extend_from_slice(b"[]");
            }
            out.push(b'\n');
        }
        OutputFormat::Csv => {
            let mut writer = CsvWriterBuilder::new().with_header(true).build(&mut out);
            if output.batches.is_empty() {
                // No batch, still a header.
                let empty =
                    datafusion::arrow::record_batch::RecordBatch::new_empty(output.schema.clone());
                writer.write(&empty).map_err(failed)?;
            }
            for batch in &output.batches {
                writer.write(batch).map_err(failed)?;
            }
        }
        OutputFormat::Arrow => {
            let mut writer = StreamWriter::try_new(&mut out, &output.schema).map_err(failed)?;
            for batch in &output.batches {
                writer.write(batch).map_err(failed)?;
            }
            writer.finish().map_err(failed)?;
        }
    }
    Ok(out)
}
