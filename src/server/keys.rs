//! API keys and their limits. `--api-key-file` holds one key per line, optionally with a name
//! and limits:
//!
//! ```text
//! # KEY [name=NAME] [max_concurrent=N] [tokens_per_minute=N]
//! sk-team-a name=team-a max_concurrent=4 tokens_per_minute=20000
//! sk-ci name=ci
//! ```
//!
//! `--api-key` / `HYBRID_API_KEY` add one key named `default` without limits. A key's name
//! partitions the prefix cache (one caller cannot probe another's prompts through
//! `cached_tokens`) and labels its figures in `/metrics`.
use anyhow::{bail, Context};
use sha2::{Digest, Sha256};
use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The window of `tokens_per_minute`.
const RATE_WINDOW: Duration = Duration::from_secs(60);

pub struct ApiKey {
    pub name: String,
    /// sha256 of the key: comparing digests takes the same time whatever the key's length.
    digest: [u8; 32],
    pub max_concurrent: Option<usize>,
    pub tokens_per_minute: Option<u64>,
    in_flight: AtomicUsize,
    /// Tokens (prompt and completion) this key used, by when, within the last minute.
    usage: Mutex<VecDeque<(Instant, u64)>>,
}

/// Why a key may not start a request now: 429 with this many seconds in `Retry-After`.
#[derive(Debug)]
pub enum OverLimit {
    Concurrency { limit: usize },
    Tokens { limit: u64, retry_after_s: u64 },
}

/// A request in flight for a key; dropping it frees the slot.
pub struct InFlight(Arc<ApiKey>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

impl ApiKey {
    fn new(name: &str, key: &str) -> Self {
        Self {
            name: name.to_string(),
            digest: Sha256::digest(key.as_bytes()).into(),
            max_concurrent: None,
            tokens_per_minute: None,
            in_flight: AtomicUsize::new(0),
            usage: Mutex::new(VecDeque::new()),
        }
    }

    /// A slot for one more request, if the key's limits allow it now.
    pub fn begin(self: &Arc<Self>) -> Result<InFlight, OverLimit> {
        if let Some(limit) = self.tokens_per_minute {
            let now = Instant::now();
            let mut usage = self.usage.lock().unwrap_or_else(|e| e.into_inner());
            while usage.front().is_some_and(|(t, _)| now.duration_since(*t) >= RATE_WINDOW) {
                usage.pop_front();
            }
            let used: u64 = usage.iter().map(|(_, n)| n).sum();
            if used >= limit {
                // When enough of the window's oldest use has aged out to go under the limit.
                let mut left = used;
                let free_at = usage.iter().find_map(|(t, n)| {
                    left -= n;
                    (left < limit).then_some(*t + RATE_WINDOW)
                });
                let wait = free_at.map_or(RATE_WINDOW, |t| t.saturating_duration_since(now));
                return Err(OverLimit::Tokens { limit, retry_after_s: wait.as_secs() + 1 });
            }
        }
        let max = self.max_concurrent.unwrap_or(usize::MAX);
        if self.in_flight.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| (n < max).then_some(n + 1)).is_err() {
            return Err(OverLimit::Concurrency { limit: max });
        }
        Ok(InFlight(self.clone()))
    }

    /// Requests of this key running now.
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::SeqCst)
    }

    /// Counts tokens against `tokens_per_minute`.
    pub fn record(&self, tokens: u64) {
        if self.tokens_per_minute.is_some() && tokens > 0 {
            self.usage.lock().unwrap_or_else(|e| e.into_inner()).push_back((Instant::now(), tokens));
        }
    }
}

/// Every key the server accepts; empty: no key needed.
#[derive(Default)]
pub struct Keys(Vec<Arc<ApiKey>>);

impl Keys {
    /// The keys of `--api-key-file`'s text; `origin` names it in errors.
    pub fn parse(text: &str, origin: &str) -> anyhow::Result<Keys> {
        let mut keys = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let at = || format!("{origin}:{}", i + 1);
            let mut fields = line.split_whitespace();
            let secret = fields.next().expect("a non-empty line has a field");
            if secret.contains('=') {
                bail!("{}: a line starts with the key itself, then name=…, max_concurrent=…, tokens_per_minute=…", at());
            }
            let mut key = ApiKey::new(&format!("key-{}", keys.len() + 1), secret);
            for field in fields {
                let (name, value) = field.split_once('=').with_context(|| format!("{}: `{field}` is not NAME=VALUE", at()))?;
                let number =
                    || value.parse::<u64>().ok().filter(|&n| n > 0).with_context(|| format!("{}: {name} takes a positive whole number, not `{value}`", at()));
                match name {
                    "name" => key.name = value.to_string(),
                    "max_concurrent" => key.max_concurrent = Some(number()? as usize),
                    "tokens_per_minute" => key.tokens_per_minute = Some(number()?),
                    _ => bail!("{}: unknown setting `{name}`; a key takes name=, max_concurrent= and tokens_per_minute=", at()),
                }
            }
            if keys.iter().any(|k: &ApiKey| k.digest == key.digest) {
                bail!("{}: this key is listed twice", at());
            }
            if keys.iter().any(|k: &ApiKey| k.name == key.name) {
                bail!("{}: the name `{}` is taken by another key; names label each key's cache and figures", at(), key.name);
            }
            keys.push(key);
        }
        if keys.is_empty() {
            bail!("{origin} lists no keys: put one key per line (`KEY name=NAME`), or leave out --api-key-file to serve without keys");
        }
        Ok(Keys(keys.into_iter().map(Arc::new).collect()))
    }

    pub fn load(path: &std::path::Path) -> anyhow::Result<Keys> {
        let text = std::fs::read_to_string(path).with_context(|| format!("cannot read the API key file {}", path.display()))?;
        Keys::parse(&text, &path.display().to_string())
    }

    /// Adds `--api-key`'s key, named `default`, without limits.
    pub fn add_plain(&mut self, key: &str) -> anyhow::Result<()> {
        let key = ApiKey::new("default", key.trim());
        if self.0.iter().any(|k| k.digest == key.digest || k.name == key.name) {
            bail!("--api-key repeats a key (or the name `default`) of --api-key-file; give it once");
        }
        self.0.push(Arc::new(key));
        Ok(())
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn all(&self) -> &[Arc<ApiKey>] {
        &self.0
    }

    /// The key `presented` is, comparing with every key in constant time.
    pub fn find(&self, presented: &str) -> Option<Arc<ApiKey>> {
        let digest: [u8; 32] = Sha256::digest(presented.trim().as_bytes()).into();
        let mut found = None;
        for key in &self.0 {
            if constant_time_eq(&digest, &key.digest) {
                found = Some(key.clone());
            }
        }
        found
    }
}

fn constant_time_eq(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constant_time_eq_compares_all_bytes() {
        let a = [7u8; 32];
        let mut b = a;
        assert!(constant_time_eq(&a, &b));
        b[31] ^= 1;
        assert!(!constant_time_eq(&a, &b));
    }

    #[test]
    fn a_key_file_gives_names_and_limits_and_bad_lines_say_where() {
        let keys = Keys::parse("# team keys\nsk-a name=a max_concurrent=2 tokens_per_minute=100\n\nsk-b\n", "keys.txt").unwrap();
        let a = keys.find("sk-a").unwrap();
        assert_eq!((a.name.as_str(), a.max_concurrent, a.tokens_per_minute), ("a", Some(2), Some(100)));
        assert_eq!(keys.find(" sk-b ").unwrap().name, "key-2");
        assert!(keys.find("sk-c").is_none());
        for (text, needle) in [
            ("sk-a max_concurrent=0", "keys.txt:1: max_concurrent takes a positive whole number"),
            ("sk-a\nsk-b colour=red", "keys.txt:2: unknown setting `colour`"),
            ("sk-a\nsk-a", "listed twice"),
            ("name=x", "starts with the key itself"),
            ("# nothing\n", "lists no keys"),
            ("sk-a name=x\nsk-b name=x", "the name `x` is taken"),
        ] {
            let e = Keys::parse(text, "keys.txt").err().unwrap().to_string();
            assert!(e.contains(needle), "{text:?}: {e}");
        }
    }

    #[test]
    fn limits_refuse_what_is_over_and_free_what_is_done() {
        let keys = Keys::parse("sk name=n max_concurrent=2 tokens_per_minute=100", "k").unwrap();
        let key = keys.find("sk").unwrap();
        let (one, _two) = (key.begin().unwrap(), key.begin().unwrap());
        assert!(matches!(key.begin(), Err(OverLimit::Concurrency { limit: 2 })));
        drop(one);
        let three = key.begin().unwrap();
        drop(three);
        key.record(60);
        key.record(50);
        match key.begin() {
            Err(OverLimit::Tokens { limit: 100, retry_after_s }) => assert!((1..=61).contains(&retry_after_s)),
            other => panic!("{:?}", other.err()),
        }
    }
}
