//! A connection's bytes, watched: reads tell the watchdog a request has begun, and hyper's own
//! answers to requests it cannot parse — an empty `400`, `414` or `431` written before any
//! handler runs — are replaced by the same status with a problem+json body, logged and
//! counted like every other answer.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use axum::http::StatusCode;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use super::conn::{Activity, MAX_HEAD_BYTES};
use crate::http::{record, ApiError, MAX_URI_BYTES};
use crate::metrics::Metrics;

pub(super) struct Watched {
    stream: TcpStream,
    activity: Arc<Activity>,
    metrics: Arc<Metrics>,
    /// Our answer in place of hyper's, and how much of it is written.
    replacement: Option<(Vec<u8>, usize)>,
}

impl Watched {
    pub(super) fn new(stream: TcpStream, activity: Arc<Activity>, metrics: Arc<Metrics>) -> Self {
        Watched {
            stream,
            activity,
            metrics,
            replacement: None,
        }
    }

    /// Writes what is left of the replacement answer, if any.
    fn poll_replacement(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while let Some((bytes, written)) = &mut self.replacement {
            if *written == bytes.len() {
                self.replacement = None;
                break;
            }
            let n = ready!(Pin::new(&mut self.stream).poll_write(cx, &bytes[*written..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            *written += n;
        }
        Poll::Ready(Ok(()))
    }

    /// If `head` is hyper's own bare error answer, takes it in and queues ours instead.
    fn replace(&mut self, head: &[u8]) -> bool {
        if self.activity.busy() {
            // A handler is answering: these bytes are its answer.
            return false;
        }
        let Some(status) = bare_error(head) else {
            return false;
        };
        let request_id = crate::http::new_request_id();
        let request_id = request_id.to_str().expect("hex");
        let detail = match status {
            StatusCode::URI_TOO_LONG => {
                format!("the URL is longer than {} KiB", MAX_URI_BYTES / 1024)
            }
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE => format!(
                "the request head is larger than {} KiB: a URL may have at most {} KiB, the headers 16 KiB",
                MAX_HEAD_BYTES / 1024,
                MAX_URI_BYTES / 1024
            ),
            _ => "the request could not be read: its request line or a header is malformed (a URL may only hold ASCII; encode other bytes as %XX)".into(),
        };
        let answer = ApiError::from_status(status, detail).to_http1(request_id);
        record(
            &self.metrics,
            request_id,
            "-",
            "unparsed",
            status,
            Duration::ZERO,
        );
        self.replacement = Some((answer, 0));
        true
    }
}

/// hyper's automatic answer to a request it cannot parse: `HTTP/1.1 400|414|431`, an empty
/// body, and no `x-request-id` (every answer of the router carries one).
fn bare_error(buf: &[u8]) -> Option<StatusCode> {
    let status = match buf.get(..13)? {
        b"HTTP/1.1 400 " => StatusCode::BAD_REQUEST,
        b"HTTP/1.1 414 " => StatusCode::URI_TOO_LONG,
        b"HTTP/1.1 431 " => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
        _ => return None,
    };
    let end = buf.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = buf.get(..end)?.to_ascii_lowercase();
    let has = |needle: &[u8]| head.windows(needle.len()).any(|w| w == needle);
    (has(b"\r\ncontent-length: 0") && !has(b"\r\nx-request-id:")).then_some(status)
}

impl AsyncRead for Watched {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        ready!(Pin::new(&mut self.stream).poll_read(cx, buf))?;
        if buf.filled().len() > before {
            self.activity.received();
        }
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for Watched {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        ready!(self.poll_replacement(cx))?;
        if self.replace(buf) {
            // hyper's bytes are taken in whole; ours go out now or on the next flush.
            let _ = self.poll_replacement(cx)?;
            return Poll::Ready(Ok(buf.len()));
        }
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        ready!(self.poll_replacement(cx))?;
        let first = bufs.iter().find(|b| !b.is_empty());
        if first.is_some_and(|b| self.replace(b)) {
            let _ = self.poll_replacement(cx)?;
            return Poll::Ready(Ok(bufs.iter().map(|b| b.len()).sum()));
        }
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_replacement(cx))?;
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_replacement(cx))?;
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_hypers_bare_error_heads_are_recognised() {
        let bare = b"HTTP/1.1 414 URI Too Long\r\nconnection: close\r\ncontent-length: 0\r\ndate: Mon, 23 Nov 2026 18:39:51 GMT\r\n\r\n";
        assert_eq!(bare_error(bare), Some(StatusCode::URI_TOO_LONG));
        let bare400 = b"HTTP/1.1 400 Bad Request\r\nconnection: close\r\ncontent-length: 0\r\n\r\n";
        assert_eq!(bare_error(bare400), Some(StatusCode::BAD_REQUEST));
        let ours = b"HTTP/1.1 400 Bad Request\r\ncontent-type: application/problem+json\r\nx-request-id: 01f7\r\ncontent-length: 0\r\n\r\n";
        assert_eq!(bare_error(ours), None);
        let with_body = b"HTTP/1.1 400 Bad Request\r\ncontent-length: 12\r\n\r\n{\"a\":\"b\"}";
        assert_eq!(bare_error(with_body), None);
        assert_eq!(
            bare_error(b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n"),
            None
        );
        assert_eq!(bare_error(b"HTTP/1.1 400 "), None, "an incomplete head");
        assert_eq!(bare_error(b"call_id,pool"), None);
    }
}
