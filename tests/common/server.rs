//! A real `hybrid serve` on 127.0.0.1 (a free port), killed when dropped, and a small HTTP
//! helper for talking to it.
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

pub struct Server {
    pub child: Child,
    pub url: String,
}

impl Server {
    /// Starts `hybrid serve --addr 127.0.0.1:0 ARGS…` and waits until it listens.
    pub fn start(args: &[&str]) -> Server {
        Server::start_with_env(args, &[])
    }

    /// As [`start`](Self::start), with environment variables (the test hooks).
    pub fn start_with_env(args: &[&str], env: &[(&str, &str)]) -> Server {
        let mut child = Command::new(env!("CARGO_BIN_EXE_hybrid"))
            .args(["serve", "--addr", "127.0.0.1:0"])
            .args(args)
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("hybrid serve starts");
        // The server's stderr without its access log (a line per API request).
        let errors = BufReader::new(child.stderr.take().unwrap()).lines();
        std::thread::spawn(move || errors.map_while(Result::ok).filter(|l| !l.contains(" request_id=")).for_each(|l| eprintln!("{l}")));
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let url = loop {
            let line = lines.next().expect("hybrid serve exited before listening").unwrap();
            if let Some(rest) = line.split("listening on ").nth(1) {
                break rest.split_whitespace().next().unwrap().to_string();
            }
        };
        // Keep reading, so the server never blocks on a full stdout pipe.
        std::thread::spawn(move || lines.map_while(Result::ok).for_each(drop));
        Server { child, url }
    }

    pub fn smollm2(extra: &[&str]) -> Server {
        let mut args = vec!["--cloud-model", "smollm2-135m", "--browser-model", "smollm2-135m"];
        args.extend_from_slice(extra);
        Server::start(&args)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An HTTP answer: status, headers, body.
pub struct Answer {
    pub status: u16,
    pub headers: ureq::http::HeaderMap,
    pub body: String,
}

impl Answer {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder().http_status_as_error(false).build().new_agent()
}

/// Any request; `body` is sent as is.
pub fn call(method: &str, url: &str, headers: &[(&str, &str)], body: Option<&[u8]>) -> Answer {
    let mut request = ureq::http::Request::builder().method(method).uri(url);
    for (k, v) in headers {
        request = request.header(*k, *v);
    }
    let response = match body {
        Some(b) => agent().run(request.body(b.to_vec()).unwrap()),
        None => agent().run(request.body(()).unwrap()),
    }
    .unwrap_or_else(|e| panic!("{method} {url}: {e}"));
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let body = response.into_body().with_config().limit(1 << 30).read_to_string().unwrap_or_default();
    Answer { status, headers, body }
}

pub fn post_json(url: &str, body: &serde_json::Value) -> Answer {
    call("POST", url, &[("Content-Type", "application/json")], Some(body.to_string().as_bytes()))
}

pub fn completion(server: &Server, body: serde_json::Value) -> Answer {
    post_json(&format!("{}/v1/completions", server.url), &body)
}
