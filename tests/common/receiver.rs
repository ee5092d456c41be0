//! A webhook receiver for tests: a small HTTP/1.1 server on 127.0.0.1 that records every
//! request and answers 500 to the first `fail_first` of them (or to all while `failing`),
//! then 204; each answer closes the connection.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hmac::{Hmac, Mac};
use serde_json::Value;
use sha2::Sha256;

#[derive(Clone, Debug)]
pub struct Received {
    /// Header names in lower case.
    pub headers: HashMap<String, String>,
    pub body: Vec<u8>,
    /// What the receiver answered.
    pub status: u16,
}

impl Received {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap()
    }
}

pub struct Receiver {
    pub addr: SocketAddr,
    got: Arc<Mutex<Vec<Received>>>,
    fail_first: Arc<AtomicUsize>,
    pub failing: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
}

impl Receiver {
    pub fn start(fail_first: usize) -> Receiver {
        Self::bind(TcpListener::bind("127.0.0.1:0").unwrap(), fail_first)
    }

    /// On a given port (a receiver coming back where a dead one was).
    pub fn start_on(port: u16) -> Receiver {
        Self::bind(TcpListener::bind(("127.0.0.1", port)).unwrap(), 0)
    }

    fn bind(listener: TcpListener, fail_first: usize) -> Receiver {
        let r = Receiver {
            addr: listener.local_addr().unwrap(),
            got: Arc::default(),
            fail_first: Arc::new(AtomicUsize::new(fail_first)),
            failing: Arc::default(),
            stop: Arc::default(),
        };
        let (got, fail_first, failing, stop) = (
            Arc::clone(&r.got),
            Arc::clone(&r.fail_first),
            Arc::clone(&r.failing),
            Arc::clone(&r.stop),
        );
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if stop.load(Ordering::Acquire) {
                    return;
                }
                let Ok(conn) = conn else { continue };
                let (got, fail_first, failing) = (
                    Arc::clone(&got),
                    Arc::clone(&fail_first),
                    Arc::clone(&failing),
                );
                std::thread::spawn(move || {
                    let fail = failing.load(Ordering::Acquire)
                        || fail_first
                            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1))
                            .is_ok();
                    serve(conn, if fail { 500 } else { 204 }, &got);
                });
            }
        });
        r
    }

    pub fn url(&self) -> String {
        format!("http://{}/hook", self.addr)
    }

    /// Every request so far.
    pub fn all(&self) -> Vec<Received> {
        self.got.lock().unwrap().clone()
    }

    /// The requests it accepted (2xx).
    pub fn accepted(&self) -> Vec<Received> {
        self.all().into_iter().filter(|r| r.status < 300).collect()
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        let _ = TcpStream::connect(self.addr);
    }
}

fn serve(mut conn: TcpStream, status: u16, got: &Mutex<Vec<Received>>) {
    conn.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        match conn.read(&mut chunk) {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let headers: HashMap<String, String> = head
        .lines()
        .skip(1)
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let len: usize = headers
        .get("content-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    while buf.len() < head_end + len {
        match conn.read(&mut chunk) {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    got.lock().unwrap().push(Received {
        headers,
        body: buf[head_end..head_end + len].to_vec(),
        status,
    });
    let _ = conn.write_all(
        format!("HTTP/1.1 {status} X\r\ncontent-length: 0\r\nconnection: close\r\n\r\n").as_bytes(),
    );
}

/// Checks `Leaseline-Signature` as a receiver would: HMAC-SHA256(secret, "<t>.<body>"),
/// compared in constant time; returns `t`.
pub fn verify(secret: &str, r: &Received) -> Result<u64, String> {
    let sig = r
        .headers
        .get("leaseline-signature")
        .ok_or("no signature header")?;
    let mut t = None;
    let mut v1 = None;
    for part in sig.split(',') {
        match part.split_once('=') {
            Some(("t", v)) => t = v.parse::<u64>().ok(),
            Some(("v1", v)) => v1 = hex::decode(v).ok(),
            _ => {}
        }
    }
    let (t, v1) = (t.ok_or("no t")?, v1.ok_or("no v1")?);
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(format!("{t}.").as_bytes());
    mac.update(&r.body);
    mac.verify_slice(&v1)
        .map_err(|_| "signature mismatch".to_owned())?;
    Ok(t)
}
