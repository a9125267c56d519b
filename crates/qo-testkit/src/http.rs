//! A minimal HTTP/1.0 GET over plain TCP, enough to ask a local service whether it answers.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::ServiceError;

/// How long one GET may take, connect and answer together.
const GET_TIMEOUT: Duration = Duration::from_secs(5);
/// The status line is in the first bytes; no more is read.
const MAX_HEAD: usize = 1024;

/// Sends `GET` to a plain `http://host:port/path` URL and returns the status code of the answer.
/// Meant for readiness checks of local services: no TLS, no redirects, no body, at most 5 s.
///
/// # Errors
///
/// [`ServiceError::Failed`] (tool `http`) when the URL is not a plain `http://` URL, the
/// connection fails or times out, or the answer does not start with an HTTP status line.
pub async fn http_get_status(url: &str) -> Result<u16, ServiceError> {
    let fail = |reason: String| ServiceError::Failed {
        tool: "http".to_owned(),
        reason: format!("GET {url}: {reason}"),
    };
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| fail("only plain http:// URLs are supported".to_owned()))?;
    let (authority, path) = match rest.find('/') {
        Some(i) => rest.split_at(i),
        None => (rest, "/"),
    };
    if authority.is_empty() || !authority.contains(':') {
        return Err(fail("the URL needs an explicit host:port".to_owned()));
    }
    let exchange = async {
        let mut stream = TcpStream::connect(authority).await?;
        let request =
            format!("GET {path} HTTP/1.0\r\nHost: {authority}\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await?;
        let mut head = Vec::with_capacity(MAX_HEAD);
        let mut buf = [0u8; 256];
        while head.len() < MAX_HEAD && !head.contains(&b'\n') {
            let n = stream.read(&mut buf).await?;
            if n == 0 {
                break;
            }
            head.extend_from_slice(&buf[..n]);
        }
        Ok::<_, std::io::Error>(head)
    };
    let head = tokio::time::timeout(GET_TIMEOUT, exchange)
        .await
        .map_err(|_| fail(format!("no answer within {} s", GET_TIMEOUT.as_secs())))?
        .map_err(|e| fail(e.to_string()))?;
    parse_status_line(&head).ok_or_else(|| {
        fail(format!(
            "not an HTTP answer: {:?}",
            String::from_utf8_lossy(&head)
        ))
    })
}

/// The status code of `HTTP/x.y NNN ...` at the start of `head`.
fn parse_status_line(head: &[u8]) -> Option<u16> {
    let line = head.split(|&b| b == b'\n').next()?;
    let line = std::str::from_utf8(line).ok()?;
    let mut parts = line.split_whitespace();
    let version = parts.next()?;
    if !version.starts_with("HTTP/") {
        return None;
    }
    parts.next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_lines_parse() {
        assert_eq!(parse_status_line(b"HTTP/1.1 200 OK\r\nx: y\r\n"), Some(200));
        assert_eq!(parse_status_line(b"HTTP/1.0 404 Not Found\r\n"), Some(404));
        assert_eq!(parse_status_line(b"SSH-2.0-OpenSSH\r\n"), None);
        assert_eq!(parse_status_line(b""), None);
    }

    #[tokio::test]
    async fn bad_urls_are_refused() {
        for url in ["https://127.0.0.1:1/", "http://localhost/", "ftp://x:1/"] {
            let err = http_get_status(url).await.expect_err(url);
            assert!(err.to_string().contains(url), "{err}");
        }
    }

    #[tokio::test]
    async fn a_closed_port_is_an_error() {
        let port = crate::free_port();
        let url = format!("http://127.0.0.1:{port}/");
        assert!(http_get_status(&url).await.is_err());
    }

    #[tokio::test]
    async fn a_local_server_answers() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let server = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.expect("accept");
            let mut buf = [0u8; 512];
            let n = s.read(&mut buf).await.expect("read");
            let req = String::from_utf8_lossy(&buf[..n]).into_owned();
            s.write_all(b"HTTP/1.1 204 No Content\r\n\r\n")
                .await
                .expect("write");
            req
        });
        let status = http_get_status(&format!("http://127.0.0.1:{port}/moto-api/"))
            .await
            .expect("GET");
        assert_eq!(status, 204);
        let req = server.await.expect("server task");
        assert!(req.starts_with("GET /moto-api/ HTTP/1.0\r\n"), "{req}");
    }
}
