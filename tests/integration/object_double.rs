//! A stand-in for Amazon S3 and Google Cloud Storage, which cannot run here. It speaks the
//! part of their XML object API that `object_store` uses, path-style (`/{bucket}/{key}`):
//! PUT, GET (with `Range`), HEAD, DELETE, DeleteObjects (`POST ?delete`, which S3 requires to
//! carry a matching `Content-MD5`) and ListObjectsV2 (`list-type=2`, paged by continuation
//! token), with the documented headers and XML bodies. It keeps objects in memory.
//!
//! It checks what it receives as the real service does and refuses anything else with the
//! real error code:
//! - S3: every request carries an AWS Signature Version 4 (`AWS4-HMAC-SHA256`) for the
//!   configured key and region, signed within 15 minutes, over `host`, `x-amz-date` and
//!   `x-amz-content-sha256`, and the body hashes to the signed payload hash
//!   (`SignatureDoesNotMatch`, `InvalidAccessKeyId`, `XAmzContentSHA256Mismatch`, 403/400).
//! - GCS: every request carries a bearer JWT (RS256) issued by the configured service
//!   account, signed by its key, with a scope that grants storage and unexpired (401).
//!
//! Every request is logged with its answer (a DeleteObjects as one `DELETE` per key), so a
//! test can assert that none was refused.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, percent_decode_str, utf8_percent_encode};
use ring::hmac;
use ring::signature::{self, KeyPair};

/// What the double accepts as authentication.
#[derive(Clone)]
pub enum Auth {
    S3 {
        access_key: String,
        secret_key: String,
        region: String,
    },
    Gcs {
        client_email: String,
        /// The service account's public key (PKCS#1 DER).
        public_key: Vec<u8>,
    },
}

impl Auth {
    /// GCS auth for the service account in `key_json` (a Google service-account key file).
    pub fn gcs(key_json: &str) -> Self {
        let key: serde_json::Value = serde_json::from_str(key_json).unwrap();
        let pem = key["private_key"].as_str().unwrap();
        let der: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
        let der = base64::engine::general_purpose::STANDARD
            .decode(der)
            .unwrap();
        let pair = signature::RsaKeyPair::from_pkcs8(&der).unwrap();
        Auth::Gcs {
            client_email: key["client_email"].as_str().unwrap().to_owned(),
            public_key: pair.public_key().as_ref().to_vec(),
        }
    }
}

/// One request as the double saw it.
#[derive(Debug, Clone)]
pub struct Logged {
    pub method: String,
    /// The object key (or list prefix), decoded.
    pub key: String,
    pub status: u16,
    /// Why it was refused, for a refused request.
    pub refusal: Option<String>,
}

#[derive(Clone)]
struct Object {
    body: Bytes,
    etag: String,
    modified: SystemTime,
}

struct Inner {
    bucket: String,
    auth: Auth,
    objects: BTreeMap<String, Object>,
    log: Vec<Logged>,
    puts: u64,
}

/// A running double; stops when dropped.
pub struct ObjectDouble {
    /// Its base URL, `http://127.0.0.1:PORT`.
    pub url: String,
    inner: Arc<Mutex<Inner>>,
    runtime: Option<tokio::runtime::Runtime>,
}

/// Listing page size: small, so listings take several pages (S3's own is 1 000).
const PAGE: usize = 2;

impl ObjectDouble {
    pub fn start(bucket: &str, auth: Auth) -> Self {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let inner = Arc::new(Mutex::new(Inner {
            bucket: bucket.to_owned(),
            auth,
            objects: BTreeMap::new(),
            log: Vec::new(),
            puts: 0,
        }));
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let app = Router::new().fallback(handle).with_state(inner.clone());
        runtime.spawn(async move { axum::serve(listener, app).await });
        Self {
            url,
            inner,
            runtime: Some(runtime),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The stored keys and their sizes.
    pub fn objects(&self) -> Vec<(String, usize)> {
        self.lock()
            .objects
            .iter()
            .map(|(k, o)| (k.clone(), o.body.len()))
            .collect()
    }

    /// Every request so far.
    pub fn log(&self) -> Vec<Logged> {
        self.lock().log.clone()
    }

    /// The requests it refused.
    pub fn refused(&self) -> Vec<Logged> {
        self.log()
            .into_iter()
            .filter(|l| l.refusal.is_some())
            .collect()
    }

    /// Objects written so far.
    pub fn puts(&self) -> u64 {
        self.lock().puts
    }

    /// Cuts the object at `key` to half its length, as a bad copy would.
    pub fn truncate(&self, key: &str) {
        let mut inner = self.lock();
        let object = inner.objects.get_mut(key).unwrap();
        object.body = object.body.slice(..object.body.len() / 2);
    }
}

impl Drop for ObjectDouble {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_timeout(Duration::from_secs(1));
        }
    }
}

fn error(status: StatusCode, code: &str, message: &str) -> Response {
    let body = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>{code}</Code><Message>{}</Message></Error>",
        xml_escape(message)
    );
    (status, [(header::CONTENT_TYPE, "application/xml")], body).into_response()
}

async fn handle(
    State(inner): State<Arc<Mutex<Inner>>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let mut inner = inner.lock().unwrap_or_else(PoisonError::into_inner);
    let path = uri.path().trim_start_matches('/');
    let (bucket, key) = path.split_once('/').unwrap_or((path, ""));
    let bucket = percent_decode_str(bucket).decode_utf8_lossy().into_owned();
    let key = percent_decode_str(key).decode_utf8_lossy().into_owned();
    let query = query_pairs(uri.query().unwrap_or(""));
    let checked = match &inner.auth {
        Auth::S3 {
            access_key,
            secret_key,
            region,
        } => check_sigv4(
            &method, &uri, &headers, &body, access_key, secret_key, region,
        ),
        Auth::Gcs {
            client_email,
            public_key,
        } => check_jwt(&headers, client_email, public_key),
    };
    let response = match checked {
        Err((status, code, why)) => Err((error(status, code, &why), why)),
        Ok(()) if bucket != inner.bucket => {
            let why = format!("no bucket `{bucket}`");
            Err((error(StatusCode::NOT_FOUND, "NoSuchBucket", &why), why))
        }
        Ok(()) if method == Method::POST && key.is_empty() && query.contains_key("delete") => {
            match delete_objects(&mut inner, &headers, &body) {
                Ok(response) => return response,
                Err((status, code, why)) => Err((error(status, code, &why), why)),
            }
        }
        Ok(()) => Ok(answer(&mut inner, &method, &key, &query, &headers, body)),
    };
    let (response, refusal) = match response {
        Ok(r) => (r, None),
        Err((r, why)) => (r, Some(why)),
    };
    let logged_key = if key.is_empty() {
        query.get("prefix").cloned().unwrap_or_default()
    } else {
        key
    };
    inner.log.push(Logged {
        method: method.to_string(),
        key: logged_key,
        status: response.status().as_u16(),
        refusal,
    });
    response
}

fn answer(
    inner: &mut Inner,
    method: &Method,
    key: &str,
    query: &BTreeMap<String, String>,
    headers: &HeaderMap,
    body: Bytes,
) -> Response {
    // Anything this double does not implement (multipart parts, copies, conditional
    // requests, delimited listings) is refused loudly rather than half-served.
    let not_implemented = |what: &str| {
        error(
            StatusCode::NOT_IMPLEMENTED,
            "NotImplemented",
            &format!("the double does not implement {what}"),
        )
    };
    const LIST_PARAMETERS: [&str; 5] = [
        "list-type",
        "prefix",
        "continuation-token",
        "start-after",
        "encoding-type",
    ];
    let listing = key.is_empty();
    if let Some(p) = query
        .keys()
        .find(|p| !listing || !LIST_PARAMETERS.contains(&p.as_str()))
    {
        return not_implemented(&format!("the query parameter `{p}`"));
    }
    for h in [
        "x-amz-copy-source",
        "if-match",
        "if-none-match",
        "x-goog-if-generation-match",
    ] {
        if headers.contains_key(h) {
            return not_implemented(&format!("the header `{h}`"));
        }
    }
    if listing {
        return if *method == Method::GET && query.get("list-type").map(String::as_str) == Some("2")
        {
            list(inner, query)
        } else {
            error(
                StatusCode::NOT_IMPLEMENTED,
                "NotImplemented",
                "only ListObjectsV2 is served on a bucket",
            )
        };
    }
    match *method {
        Method::PUT => {
            let etag = format!("\"{}\"", hex(digest(&body)).get(..32).unwrap_or_default());
            inner.puts += 1;
            inner.objects.insert(
                key.to_owned(),
                Object {
                    body,
                    etag: etag.clone(),
                    modified: SystemTime::now(),
                },
            );
            (StatusCode::OK, [(header::ETAG, etag)]).into_response()
        }
        Method::GET | Method::HEAD => {
            let Some(object) = inner.objects.get(key) else {
                return error(StatusCode::NOT_FOUND, "NoSuchKey", "no such key");
            };
            let len = object.body.len();
            let (status, range) = match headers.get(header::RANGE).and_then(|v| v.to_str().ok()) {
                None => (StatusCode::OK, 0..len),
                Some(r) => match parse_range(r, len) {
                    Some(range) => (StatusCode::PARTIAL_CONTENT, range),
                    None => {
                        return error(
                            StatusCode::RANGE_NOT_SATISFIABLE,
                            "InvalidRange",
                            "the requested range is not satisfiable",
                        );
                    }
                },
            };
            let mut response = if *method == Method::HEAD {
                (status, [(header::CONTENT_LENGTH, len.to_string())]).into_response()
            } else {
                (status, object.body.slice(range.clone())).into_response()
            };
            let h = response.headers_mut();
            h.insert(header::ETAG, object.etag.parse().unwrap());
            h.insert(
                header::LAST_MODIFIED,
                httpdate::fmt_http_date(object.modified).parse().unwrap(),
            );
            if status == StatusCode::PARTIAL_CONTENT {
                h.insert(
                    header::CONTENT_RANGE,
                    format!("bytes {}-{}/{len}", range.start, range.end - 1)
                        .parse()
                        .unwrap(),
                );
            }
            response
        }
        Method::DELETE => {
            inner.objects.remove(key);
            StatusCode::NO_CONTENT.into_response()
        }
        _ => error(
            StatusCode::METHOD_NOT_ALLOWED,
            "MethodNotAllowed",
            "method not allowed",
        ),
    }
}

/// DeleteObjects: `<Delete><Object><Key>…</Key></Object>…</Delete>`, answered with the keys
/// deleted (a missing key counts as deleted, as in S3).
fn delete_objects(
    inner: &mut Inner,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<Response, Refusal> {
    use md5::{Digest, Md5};
    let md5 = headers
        .get("content-md5")
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| {
            (
                StatusCode::BAD_REQUEST,
                "InvalidRequest",
                "Missing required header for this request: Content-Md5".to_owned(),
            )
        })?;
    if md5 != base64::engine::general_purpose::STANDARD.encode(Md5::digest(body)) {
        return Err((
            StatusCode::BAD_REQUEST,
            "BadDigest",
            "the Content-MD5 does not match the body".into(),
        ));
    }
    let text = std::str::from_utf8(body).map_err(|_| {
        (
            StatusCode::BAD_REQUEST,
            "MalformedXML",
            "not UTF-8".to_owned(),
        )
    })?;
    let mut result = String::from(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<DeleteResult xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\">",
    );
    for piece in text.split("<Key>").skip(1) {
        let (key, _) = piece.split_once("</Key>").ok_or_else(|| {
            (
                StatusCode::BAD_REQUEST,
                "MalformedXML",
                "unclosed <Key>".to_owned(),
            )
        })?;
        let key = xml_unescape(key);
        inner.objects.remove(&key);
        result.push_str(&format!(
            "<Deleted><Key>{}</Key></Deleted>",
            xml_escape(&key)
        ));
        inner.log.push(Logged {
            method: "DELETE".into(),
            key,
            status: 200,
            refusal: None,
        });
    }
    result.push_str("</DeleteResult>");
    Ok((
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/xml")],
        result,
    )
        .into_response())
}

fn list(inner: &Inner, query: &BTreeMap<String, String>) -> Response {
    let prefix = query.get("prefix").map_or("", String::as_str);
    let after = query
        .get("continuation-token")
        .or_else(|| query.get("start-after"))
        .map_or("", String::as_str);
    let matching: Vec<_> = inner
        .objects
        .iter()
        .filter(|(k, _)| k.starts_with(prefix) && k.as_str() > after)
        .collect();
    let page = &matching[..matching.len().min(PAGE)];
    let truncated = matching.len() > PAGE;
    let mut xml = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<ListBucketResult xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\"><Name>{}</Name><Prefix>{}</Prefix><KeyCount>{}</KeyCount><MaxKeys>{PAGE}</MaxKeys><IsTruncated>{truncated}</IsTruncated>",
        xml_escape(&inner.bucket),
        xml_escape(prefix),
        page.len()
    );
    for (key, object) in page {
        let modified = humantime::format_rfc3339_millis(object.modified);
        xml.push_str(&format!(
            "<Contents><Key>{}</Key><LastModified>{modified}</LastModified><ETag>{}</ETag><Size>{}</Size><StorageClass>STANDARD</StorageClass></Contents>",
            xml_escape(key),
            xml_escape(&object.etag),
            object.body.len()
        ));
    }
    if truncated && let Some((last, _)) = page.last() {
        xml.push_str(&format!(
            "<NextContinuationToken>{}</NextContinuationToken>",
            xml_escape(last)
        ));
    }
    xml.push_str("</ListBucketResult>");
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/xml")],
        xml,
    )
        .into_response()
}

type Refusal = (StatusCode, &'static str, String);

/// AWS Signature Version 4, as documented for S3 ("Authenticating requests: using the
/// Authorization header").
#[allow(clippy::too_many_arguments)]
fn check_sigv4(
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    body: &[u8],
    access_key: &str,
    secret_key: &str,
    region: &str,
) -> Result<(), Refusal> {
    let denied = |why: String| (StatusCode::FORBIDDEN, "SignatureDoesNotMatch", why);
    let get = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let authorization = get("authorization").ok_or_else(|| {
        (
            StatusCode::FORBIDDEN,
            "AccessDenied",
            "no Authorization header".into(),
        )
    })?;
    let fields = authorization
        .strip_prefix("AWS4-HMAC-SHA256 ")
        .ok_or_else(|| denied(format!("not AWS4-HMAC-SHA256: {authorization}")))?;
    let mut credential = None;
    let mut signed_headers = None;
    let mut signature = None;
    for field in fields.split(',') {
        match field.trim().split_once('=') {
            Some(("Credential", v)) => credential = Some(v),
            Some(("SignedHeaders", v)) => signed_headers = Some(v),
            Some(("Signature", v)) => signature = Some(v),
            _ => return Err(denied(format!("unexpected field `{field}`"))),
        }
    }
    let (Some(credential), Some(signed_headers), Some(signature)) =
        (credential, signed_headers, signature)
    else {
        return Err(denied(
            "Credential, SignedHeaders and Signature are required".into(),
        ));
    };
    let scope: Vec<&str> = credential.split('/').collect();
    let [key_id, date, scope_region, "s3", "aws4_request"] = scope[..] else {
        return Err(denied(format!("malformed credential scope `{credential}`")));
    };
    if key_id != access_key {
        return Err((
            StatusCode::FORBIDDEN,
            "InvalidAccessKeyId",
            format!("unknown access key `{key_id}`"),
        ));
    }
    if scope_region != region {
        return Err(denied(format!(
            "signed for region `{scope_region}`, the bucket is in `{region}`"
        )));
    }
    let amz_date = get("x-amz-date").ok_or_else(|| denied("no x-amz-date".into()))?;
    if !amz_date.starts_with(date) {
        return Err(denied(format!("x-amz-date {amz_date} is not on {date}")));
    }
    let signed_at = parse_amz_date(amz_date)
        .ok_or_else(|| denied(format!("malformed x-amz-date {amz_date}")))?;
    let skew = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
        .abs_diff(signed_at);
    if skew > 15 * 60 {
        return Err((
            StatusCode::FORBIDDEN,
            "RequestTimeTooSkewed",
            format!("signed {skew} s from now"),
        ));
    }
    let names: Vec<&str> = signed_headers.split(';').collect();
    for required in ["host", "x-amz-content-sha256", "x-amz-date"] {
        if !names.contains(&required) {
            return Err(denied(format!("`{required}` is not signed")));
        }
    }
    let payload_hash = get("x-amz-content-sha256").unwrap_or_default();
    if payload_hash != "UNSIGNED-PAYLOAD" && payload_hash != hex(digest(body)) {
        return Err((
            StatusCode::BAD_REQUEST,
            "XAmzContentSHA256Mismatch",
            "the body does not hash to x-amz-content-sha256".into(),
        ));
    }
    let mut canonical_headers = String::new();
    for name in &names {
        let value = get(name).ok_or_else(|| denied(format!("signed header `{name}` is absent")))?;
        canonical_headers.push_str(&format!("{name}:{}\n", value.trim()));
    }
    // S3 encodes each path segment itself: what the client signed must be that encoding.
    let canonical_uri = uri
        .path()
        .split('/')
        .map(|segment| {
            utf8_percent_encode(&percent_decode_str(segment).decode_utf8_lossy(), UNRESERVED)
                .to_string()
        })
        .collect::<Vec<_>>()
        .join("/");
    let canonical_request = [
        method.as_str(),
        &canonical_uri,
        &canonical_query(uri.query().unwrap_or("")),
        &canonical_headers,
        signed_headers,
        payload_hash,
    ]
    .join("\n");
    let string_to_sign = [
        "AWS4-HMAC-SHA256",
        amz_date,
        &scope[1..].join("/"),
        &hex(digest(canonical_request.as_bytes())),
    ]
    .join("\n");
    let mut key = hmac_sha256(format!("AWS4{secret_key}").as_bytes(), date.as_bytes());
    for part in [region, "s3", "aws4_request"] {
        key = hmac_sha256(&key, part.as_bytes());
    }
    if hex(hmac_sha256(&key, string_to_sign.as_bytes())) != signature {
        return Err(denied(
            "the signature does not match the secret key's".into(),
        ));
    }
    Ok(())
}

/// A bearer JWT as `object_store` signs for a service account (RS256, the storage scope).
fn check_jwt(headers: &HeaderMap, client_email: &str, public_key: &[u8]) -> Result<(), Refusal> {
    let denied = |why: String| (StatusCode::UNAUTHORIZED, "AuthenticationRequired", why);
    let token = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .ok_or_else(|| denied("no bearer token".into()))?;
    let parts: Vec<&str> = token.split('.').collect();
    let [head, claims, signature] = parts[..] else {
        return Err(denied("not a JWT".into()));
    };
    let json = |part: &str| -> Option<serde_json::Value> {
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(part).ok()?).ok()
    };
    let (Some(head_json), Some(claims_json), Ok(signature)) =
        (json(head), json(claims), URL_SAFE_NO_PAD.decode(signature))
    else {
        return Err(denied("malformed JWT".into()));
    };
    if head_json["alg"] != "RS256" {
        return Err(denied(format!("alg {} is not RS256", head_json["alg"])));
    }
    signature::UnparsedPublicKey::new(&signature::RSA_PKCS1_2048_8192_SHA256, public_key)
        .verify(format!("{head}.{claims}").as_bytes(), &signature)
        .map_err(|_| denied("the JWT is not signed by the service account's key".into()))?;
    if claims_json["iss"] != client_email {
        return Err(denied(format!(
            "issuer {} is not the service account",
            claims_json["iss"]
        )));
    }
    let scope = claims_json["scope"].as_str().unwrap_or_default();
    if !scope
        .split(' ')
        .any(|s| s.ends_with("/auth/cloud-platform") || s.contains("/auth/devstorage."))
    {
        return Err(denied(format!(
            "scope `{scope}` does not grant Cloud Storage"
        )));
    }
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    if claims_json["exp"].as_u64().is_none_or(|exp| exp <= now) {
        return Err(denied("the token has expired".into()));
    }
    Ok(())
}

fn digest(bytes: &[u8]) -> Vec<u8> {
    ring::digest::digest(&ring::digest::SHA256, bytes)
        .as_ref()
        .to_vec()
}

fn hmac_sha256(key: &[u8], message: &[u8]) -> Vec<u8> {
    hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, key), message)
        .as_ref()
        .to_vec()
}

fn hex(bytes: impl AsRef<[u8]>) -> String {
    bytes.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

/// SigV4's URI encoding: everything but unreserved characters.
const UNRESERVED: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

fn query_pairs(query: &str) -> BTreeMap<String, String> {
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            let decode = |s: &str| {
                percent_decode_str(&s.replace('+', " "))
                    .decode_utf8_lossy()
                    .into_owned()
            };
            (decode(k), decode(v))
        })
        .collect()
}

fn canonical_query(query: &str) -> String {
    query_pairs(query)
        .iter()
        .map(|(k, v)| {
            format!(
                "{}={}",
                utf8_percent_encode(k, UNRESERVED),
                utf8_percent_encode(v, UNRESERVED)
            )
        })
        .collect::<Vec<_>>()
        .join("&")
}

/// `yyyymmddThhmmssZ` as Unix seconds.
fn parse_amz_date(s: &str) -> Option<u64> {
    let d = s.as_bytes();
    if d.len() != 16 || d[8] != b'T' || d[15] != b'Z' {
        return None;
    }
    let n = |r: std::ops::Range<usize>| s.get(r)?.parse::<u64>().ok();
    let (y, m, day) = (n(0..4)?, n(4..6)?, n(6..8)?);
    // Days from the civil date (Howard Hinnant's algorithm), for years after 1970.
    let (y, m) = if m <= 2 { (y - 1, m + 9) } else { (y, m - 3) };
    let era = y / 400;
    let yoe = y - era * 400;
    let doy = (153 * m + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(days * 86_400 + n(9..11)? * 3_600 + n(11..13)? * 60 + n(13..15)?)
}

fn parse_range(range: &str, len: usize) -> Option<std::ops::Range<usize>> {
    let spec = range.strip_prefix("bytes=")?;
    if spec.contains(',') {
        return None;
    }
    let (start, end) = spec.split_once('-')?;
    let range = match (start.parse::<usize>().ok(), end.parse::<usize>().ok()) {
        (Some(s), Some(e)) => s..(e + 1).min(len),
        (Some(s), None) => s..len,
        (None, Some(suffix)) => len.saturating_sub(suffix)..len,
        (None, None) => return None,
    };
    (range.start < range.end).then_some(range)
}

/// XML's predefined entities, `&` first.
const ENTITIES: [(&str, &str); 5] = [
    ("&", "&amp;"),
    ("<", "&lt;"),
    (">", "&gt;"),
    ("\"", "&quot;"),
    ("'", "&apos;"),
];

fn xml_unescape(s: &str) -> String {
    // `&amp;` last, so `&amp;lt;` stays `&lt;`.
    ENTITIES
        .iter()
        .rev()
        .fold(s.to_owned(), |s, (c, e)| s.replace(e, c))
}

fn xml_escape(s: &str) -> String {
    ENTITIES
        .iter()
        .fold(s.to_owned(), |s, (c, e)| s.replace(c, e))
}
