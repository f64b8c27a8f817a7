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

use crate::api::ApiState;
use crate::error::ApiError;

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

#[cfg(test)]
mod tests {
    use axum::body::Body;
    use axum::http::{Request, StatusCode};
    use http_body_util::BodyExt;
    use tower::ServiceExt;

    use crate::api::api_router;
    use crate::api::tests::state;

    async fn post(path: &str, sql: &str) -> (StatusCode, String, Vec<u8>) {
        let response = api_router(state(false, true))
            .oneshot(
                Request::post(path)
                    .body(Body::from(sql.to_owned()))
                    .unwrap(),
            )
            .await
            .unwrap();
        let status = response.status();
        let content_type = response
            .headers()
            .get("content-type")
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        (status, content_type, body.to_vec())
    }

    #[tokio::test]
    async fn formats_and_refusals() {
        let sql = "SELECT 1 AS one, 'a' AS letter UNION ALL SELECT 2, 'b'";
        let (status, content_type, body) = post("/api/v1/sql", sql).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(content_type, "application/json");
        let rows: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(rows.as_array().unwrap().len(), 2);
        let (_, content_type, body) = post("/api/v1/sql?format=csv", sql).await;
        assert!(content_type.starts_with("text/csv"));
        assert!(String::from_utf8(body).unwrap().starts_with("one,letter\n"));
        let (_, content_type, body) = post("/api/v1/sql?format=arrow", sql).await;
        assert_eq!(content_type, "application/vnd.apache.arrow.stream");
        let reader =
            datafusion::arrow::ipc::reader::StreamReader::try_new(std::io::Cursor::new(body), None)
                .unwrap();
        let rows: usize = reader.map(|b| b.unwrap().num_rows()).sum();
        assert_eq!(rows, 2);
        // Empty results are still well-formed.
        let (_, _, body) = post("/api/v1/sql", "SELECT 1 AS one WHERE false").await;
        assert_eq!(body, b"[]\n");
        let (_, _, body) = post("/api/v1/sql?format=csv", "SELECT 1 AS one WHERE false").await;
        assert_eq!(body, b"one\n");
        for (path, sql) in [
            ("/api/v1/sql?format=xml", "SELECT 1"),
            ("/api/v1/sql", ""),
            ("/api/v1/sql", "DROP TABLE latency_minutes"),
        ] {
            let (status, _, body) = post(path, sql).await;
            assert_eq!(status, StatusCode::BAD_REQUEST, "{path} {sql}");
            let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
            assert_eq!(body["errorType"], "bad_data");
        }
    }
}
