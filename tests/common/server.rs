//! Runs `examples/serve` on a fixture and talks HTTP/1.1 to it over a plain socket (one request
//! per connection), for the server tests.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::{example_binary, fixture};

/// A running server; killed when dropped.
pub struct Server {
    pub child: Child,
    pub address: String,
    pub log: std::sync::Arc<std::sync::Mutex<String>>,
}

impl Server {
    /// Starts the server on the tiny Qwen3-Next fixture with `args` added, on a free port.
    pub fn start(args: &[&str]) -> Server {
        let model = fixture("qwen3-next-tiny");
        let mut child = Command::new(example_binary("serve"))
            .args([
                "--model",
                model.to_str().expect("UTF-8 path"),
                "--port",
                "0",
            ])
            .args(args)
            .env("HF_HUB_OFFLINE", "1")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start examples/serve");
        let mut lines = BufReader::new(child.stderr.take().expect("stderr")).lines();
        let mut seen = String::new();
        let address = loop {
            let Some(Ok(line)) = lines.next() else {
                let _ = child.kill();
                panic!("serve exited before listening:\n{seen}");
            };
            seen.push_str(&line);
            seen.push('\n');
            if let Some(address) = line.strip_prefix("serve: listening on http://") {
                break address.to_string();
            }
        };
        let log = std::sync::Arc::new(std::sync::Mutex::new(seen));
        let sink = std::sync::Arc::clone(&log);
        std::thread::spawn(move || {
            for line in lines.map_while(Result::ok) {
                let mut log = sink.lock().unwrap();
                log.push_str(&line);
                log.push('\n');
            }
        });
        Server {
            child,
            address,
            log,
        }
    }

    /// One request; returns the status, the headers (lower-cased names) and the body.
    pub fn request(&self, method: &str, path: &str, body: &[u8]) -> Response {
        let mut stream = self.send(method, path, body);
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw).expect("read the response");
        Response::parse(&raw)
    }

    /// POSTs JSON and returns the response.
    pub fn post(&self, path: &str, json: &serde_json::Value) -> Response {
        self.request("POST", path, json.to_string().as_bytes())
    }

    /// Sends a request and returns the open connection (to read a stream piece by piece).
    pub fn send(&self, method: &str, path: &str, body: &[u8]) -> TcpStream {
        let mut stream = TcpStream::connect(&self.address).expect("connect to the server");
        stream
            .set_read_timeout(Some(Duration::from_secs(120)))
            .expect("timeout");
        let head = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n",
            self.address,
            body.len()
        );
        stream.write_all(head.as_bytes()).expect("send the head");
        // A server may answer (e.g. 413) and close before reading all of a large body.
        let _ = stream.write_all(body);
        stream
    }

    /// Reads an open streaming answer until its first `data:` event has arrived and returns
    /// the bytes read so far. The headers come as soon as the request is queued; the first
    /// event of a completion is its first token, so after this the request holds a batch place.
    pub fn read_until_first_event(stream: &mut TcpStream) -> Vec<u8> {
        let mut seen = Vec::new();
        while !String::from_utf8_lossy(&seen).contains("data:") {
            let mut buffer = [0u8; 256];
            let n = stream.read(&mut buffer).expect("read the stream");
            assert!(n > 0, "the stream ended before its first event");
            seen.extend_from_slice(&buffer[..n]);
        }
        seen
    }

    /// The Prometheus text of /metrics.
    pub fn metrics(&self) -> String {
        self.request("GET", "/metrics", b"").body
    }

    /// One metric's value (a line `name value`).
    pub fn metric(&self, name: &str) -> f64 {
        let text = self.metrics();
        text.lines()
            .find_map(|line| line.strip_prefix(&format!("{name} ")))
            .unwrap_or_else(|| panic!("{name} not in /metrics:\n{text}"))
            .parse()
            .expect("a number")
    }

    /// Sends SIGTERM.
    pub fn terminate(&self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success());
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A parsed HTTP response.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Response {
    pub fn parse(raw: &[u8]) -> Response {
        let split = raw
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .expect("an HTTP response");
        let head = String::from_utf8_lossy(&raw[..split]);
        let body = &raw[split + 4..];
        let mut lines = head.lines();
        let status = lines
            .next()
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|s| s.parse().ok())
            .expect("a status line");
        let headers: Vec<(String, String)> = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
            .collect();
        let chunked = headers
            .iter()
            .any(|(k, v)| k == "transfer-encoding" && v.contains("chunked"));
        let body = if chunked {
            dechunk(body)
        } else {
            body.to_vec()
        };
        Response {
            status,
            headers,
            body: String::from_utf8(body).expect("a UTF-8 body"),
        }
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }

    /// The `data:` payloads of a server-sent-events body.
    pub fn events(&self) -> Vec<String> {
        sse_data(&self.body)
    }
}

/// The `data:` payloads of server-sent events.
pub fn sse_data(body: &str) -> Vec<String> {
    body.lines()
        .filter_map(|l| l.strip_prefix("data:"))
        .map(|d| d.trim_start().to_string())
        .collect()
}

/// The payload of a `Transfer-Encoding: chunked` body.
fn dechunk(mut body: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(eol) = body.windows(2).position(|w| w == b"\r\n") {
        let size = std::str::from_utf8(&body[..eol])
            .ok()
            .and_then(|s| usize::from_str_radix(s.trim(), 16).ok());
        let rest = &body[eol + 2..];
        match size {
            Some(size) if size > 0 && rest.len() >= size => {
                out.extend_from_slice(&rest[..size]);
                body = rest[size..].strip_prefix(b"\r\n").unwrap_or(&rest[size..]);
            }
            _ => break,
        }
    }
    out
}
