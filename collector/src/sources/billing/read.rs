//! Reading an export: Parquet, or CSV with a header (gzip or not), or newline-delimited JSON,
//! its format told from its columns, each row normalized on its own so that one bad row is one
//! reject.

use std::io::{BufRead, BufReader, Read};

pub use super::format::Format;
use super::format::emit;
use super::gcp;
#[cfg(test)]
use super::line::Normalized;
use super::line::{CellError, Sink};
pub use super::row::{Defaults, FileError, Header, Row};

/// Normalizes the export in `reader` (gzip or plain CSV), named `object`, into `out`.
pub fn normalize(
    reader: impl Read,
    object: &str,
    defaults: &Defaults,
    out: &mut impl Sink,
) -> Result<Format, FileError> {
    let mut buffered = BufReader::with_capacity(256 * 1024, reader);
    if buffered.fill_buf()?.starts_with(super::parquet::MAGIC) {
        return super::parquet::normalize(buffered, object, defaults, out);
    }
    let gzip = buffered.fill_buf()?.starts_with(&[0x1f, 0x8b]);
    let reader: Box<dyn Read> = if gzip {
        Box::new(flate2::read::MultiGzDecoder::new(buffered))
    } else {
        Box::new(buffered)
    };
    // Newline-delimited JSON starts with an object.
    let mut reader = BufReader::with_capacity(256 * 1024, reader);
    let first = reader
        .fill_buf()?
        .iter()
        .find(|b| !b.is_ascii_whitespace())
        .copied();
    if first == Some(b'{') {
        gcp::normalize_ndjson(reader, object, defaults, out)?;
        return Ok(Format::GcpJson);
    }
    let mut csv = csv::ReaderBuilder::new()
        .has_headers(true)
        .flexible(true)
        .from_reader(reader);
    let header = match csv.headers() {
        Ok(h) if h.is_empty() || (h.len() == 1 && h[0].trim().is_empty()) => {
            return Err(FileError::Empty);
        }
        Ok(h) => Header::new(h),
        Err(e) => return Err(header_error(e)),
    };
    let format = Format::detect(&header).ok_or(FileError::UnknownFormat)?;
    let mut record = csv::StringRecord::new();
    let mut row = 0u64;
    loop {
        row += 1;
        match csv.read_record(&mut record) {
            Ok(false) => break,
            Ok(true) => {}
            Err(e) => {
                // Of the kind the reader gave: the bucket's failures (`Other`) are told apart
                // from bytes that are no export (a gzip stream cut short).
                if let csv::ErrorKind::Io(io) = e.kind() {
                    return Err(FileError::Io(std::io::Error::new(io.kind(), e.to_string())));
                }
                out.row();
                out.reject(CellError::new("", format!("not a CSV row: {e}"), "").at(object, row));
                continue;
            }
        }
        out.row();
        if record.len() != header.len {
            let raw = record.iter().collect::<Vec<_>>().join(",");
            out.reject(
                CellError::new(
                    "",
                    format!("{} fields, the header has {}", record.len(), header.len),
                    &raw,
                )
                .at(object, row),
            );
            continue;
        }
        let cells = Row {
            header: &header,
            record: &record,
        };
        emit(format, cells, defaults, object, row, out);
    }
    Ok(format)
}

fn header_error(e: csv::Error) -> FileError {
    match e.into_kind() {
        csv::ErrorKind::Io(e) => FileError::Io(e),
        other => FileError::Header(format!("{other:?}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEADER: &str = "BilledCost,ChargePeriodStart,ChargePeriodEnd,EffectiveCost,ProviderName,BillingAccountId,BillingCurrency,ServiceName,Tags\n";

    #[test]
    fn one_bad_row_is_one_reject_and_the_rest_are_lines() {
        let text = format!(
            "{HEADER}1.5,2024-09-18 22:00:00,2024-09-18 23:00:00,1.25,AWS,1,USD,S3,NULL\n\
             1.5x,2024-09-18 22:00:00,2024-09-18 23:00:00,1.25,AWS,1,USD,S3,NULL\n\
             1,2\n\
             2,2024-09-18 23:00:00,2024-09-19 00:00:00,2,AWS,1,USD,EC2,\"{{\"\"env\"\":\"\"prod\"\"}}\"\n"
        );
        let mut out = Normalized::default();
        let format = normalize(
            text.as_bytes(),
            "bills/a.csv",
            &Defaults::default(),
            &mut out,
        );
        assert_eq!(format.unwrap(), Format::Focus);
        assert_eq!(out.rows, 4);
        assert_eq!(out.lines.len(), 2);
        assert_eq!(
            (out.lines[1].source_row, out.lines[1].tags["env"].as_str()),
            (4, "prod")
        );
        let rows: Vec<(u64, &str)> = out
            .rejects
            .iter()
            .map(|r| (r.source_row, r.column.as_str()))
            .collect();
        assert_eq!(rows, [(2, "BilledCost"), (3, "")]);
        assert_eq!(out.rejects[0].raw, "1.5x");
        assert_eq!(out.rejects[0].source_object, "bills/a.csv");
    }

    #[test]
    fn gzip_is_read_and_other_files_are_named() {
        use std::io::Write;
        let text = format!("{HEADER}1,2024-09-18,2024-09-19,1,AWS,1,USD,S3,\n");
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(text.as_bytes()).unwrap();
        let mut out = Normalized::default();
        normalize(
            &gz.finish().unwrap()[..],
            "a.csv.gz",
            &Defaults::default(),
            &mut out,
        )
        .unwrap();
        assert_eq!(out.lines.len(), 1);
        let e = normalize(&b"a,b\n1,2\n"[..], "x", &Defaults::default(), &mut out).unwrap_err();
        assert!(e.to_string().contains("not a billing export"), "{e}");
        assert!(matches!(
            normalize(&b""[..], "x", &Defaults::default(), &mut out),
            Err(FileError::Empty)
        ));
        // A gzip stream cut short is an error naming the read, not a panic or a partial file
        // taken as whole.
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(text.repeat(1_000).as_bytes()).unwrap();
        let gz = gz.finish().unwrap();
        let e = normalize(
            &gz[..gz.len() / 2],
            "cut.gz",
            &Defaults::default(),
            &mut out,
        );
        assert!(matches!(e, Err(FileError::Io(_))), "{e:?}");
    }
}
