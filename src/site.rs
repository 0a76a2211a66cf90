//! The web app's `config.json`: which small model and reward head the page loads (URLs and
//! sha256, checked in the browser before use) and which cloud it asks. `hybrid serve`
//! answers it at `/config.json` for its own origin; `hybrid site` writes it, with the app,
//! into a directory any static host can serve, or (`--extension`) into the browser
//! extension's load-unpacked folder and its zip.
use crate::registry::{ModelSpec, Registry};
use crate::reward::shipped_head;
use anyhow::Context;
use serde::Serialize;
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AppConfig {
    pub model: FileRef,
    /// Absent for a small model without a shipped head (the page then offers maxprob and the rest).
    pub reward_head: Option<FileRef>,
    pub cloud: CloudRef,
}

/// A file the browser downloads and verifies. `url` may be relative to the page.
#[derive(Debug, Clone, Serialize)]
pub struct FileRef {
    pub name: String,
    pub url: String,
    pub sha256: String,
    pub bytes: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct CloudRef {
    /// Base URL of an OpenAI-compatible server; empty means the page's own origin.
    pub url: String,
    /// The model name sent in completions requests.
    pub model: String,
}

/// The shipped reward head of a small model, read from assets/reward/ (None if there is none).
pub struct HeadFile {
    pub file_name: String,
    pub path: PathBuf,
    pub sha256: String,
    pub bytes: u64,
}

impl HeadFile {
    pub fn shipped(browser_model: &str) -> anyhow::Result<Option<HeadFile>> {
        let Some(path) = shipped_head(browser_model) else { return Ok(None) };
        let data = std::fs::read(&path).with_context(|| format!("reading the reward head {}", path.display()))?;
        let file_name = path.file_name().expect("shipped_head names a file").to_string_lossy().into_owned();
        Ok(Some(HeadFile { file_name, sha256: hex::encode(Sha256::digest(&data)), bytes: data.len() as u64, path }))
    }
}

/// The small model the browser runs must be a registry model: the page checks its sha256.
pub fn browser_model(name: &str) -> anyhow::Result<ModelSpec> {
    Registry::builtin()
        .get(name)
        .cloned()
        .with_context(|| format!("--browser-model must be a registry model (the page verifies its sha256), not `{name}`"))
}

/// `files_base` is where `models/` and `reward/` live, relative to the page or absolute.
pub fn app_config(model: &ModelSpec, head: Option<&HeadFile>, files_base: &str, cloud_url: &str, cloud_model: &str) -> AppConfig {
    let base = match files_base.is_empty() || files_base.ends_with('/') {
        true => files_base.to_string(),
        false => format!("{files_base}/"),
    };
    AppConfig {
        model: FileRef {
            name: model.name.clone(),
            url: format!("{base}models/{}.gguf", model.name),
            sha256: model.sha256.clone(),
            bytes: model.bytes,
        },
        reward_head: head.map(|h| FileRef {
            name: h.file_name.clone(),
            url: format!("{base}reward/{}", h.file_name),
            sha256: h.sha256.clone(),
            bytes: h.bytes,
        }),
        cloud: CloudRef { url: cloud_url.to_string(), model: cloud_model.to_string() },
    }
}

/// `hybrid site`: the app for a static host.
#[derive(Debug, clap::Args)]
pub struct SiteArgs {
    /// Directory to write (created; files in it are replaced).
    #[arg(long, default_value = "dist")]
    pub out: PathBuf,
    /// The cloud the page asks: base URL of `hybrid serve` or any OpenAI-compatible server.
    /// It must allow the site's origin (`hybrid serve --allow-origin https://your.site`).
    #[arg(long)]
    pub cloud_url: String,
    /// The model name the cloud serves.
    #[arg(long, default_value = "qwen2.5-coder-1.5b")]
    pub cloud_model: String,
    /// The small model the page runs (a registry name).
    #[arg(long, default_value = "qwen2.5-coder-0.5b")]
    pub browser_model: String,
    /// Where the page downloads models/NAME.gguf and reward/FILE from (e.g. the cloud server,
    /// which serves them with Range and ETag). Without it they are copied into the site.
    #[arg(long)]
    pub files_url: Option<String>,
    /// The directory holding www/ and pkg/ (pkg/ is built by `make pkg`).
    #[arg(long, default_value = env!("CARGO_MANIFEST_DIR"))]
    pub web_root: PathBuf,
    /// Write the Manifest V3 extension (www/extension/) instead, and OUT.zip next to it; the
    /// model files are then downloaded from --files-url (default: the cloud URL).
    #[arg(long)]
    pub extension: bool,
}

pub fn write_site(args: &SiteArgs) -> anyhow::Result<()> {
    let pkg = args.web_root.join("pkg");
    anyhow::ensure!(
        pkg.join("hybrid_assistant_bg.wasm").is_file(),
        "{} has no wasm build; build it first with `make pkg`",
        pkg.display()
    );
    let model = browser_model(&args.browser_model)?;
    let head = HeadFile::shipped(&args.browser_model)?;
    let files_url = match (&args.files_url, args.extension) {
        (Some(url), _) => Some(url.clone()),
        (None, true) => Some(args.cloud_url.clone()),
        (None, false) => None,
    };
    if args.extension {
        anyhow::ensure!(
            args.cloud_url.starts_with("http://") || args.cloud_url.starts_with("https://"),
            "--cloud-url must be an absolute http(s) URL for the extension, e.g. http://127.0.0.1:8080"
        );
    }
    std::fs::create_dir_all(&args.out).with_context(|| format!("creating {}", args.out.display()))?;
    copy_dir(&args.web_root.join("www"), &args.out, args.extension)?;
    copy_dir(&pkg, &args.out.join("pkg"), false)?;
    if args.extension {
        copy_file(&args.web_root.join("www/extension/manifest.json"), &args.out.join("manifest.json"))?;
    }
    if files_url.is_none() {
        let path = crate::eval::resolve_model(&model.name)?;
        copy_file(&path, &args.out.join("models").join(format!("{}.gguf", model.name)))?;
        if let Some(h) = &head {
            copy_file(&h.path, &args.out.join("reward").join(&h.file_name))?;
        }
    }
    let config = app_config(&model, head.as_ref(), files_url.as_deref().unwrap_or(""), &args.cloud_url, &args.cloud_model);
    std::fs::write(args.out.join("config.json"), serde_json::to_string_pretty(&config)? + "\n")?;
    println!("wrote {} (config.json: model {}, cloud {} at {})", args.out.display(), model.name, args.cloud_model, args.cloud_url);
    if args.extension {
        let zip = args.out.with_extension("zip");
        zip_dir(&args.out, &zip)?;
        println!("wrote {} (load {} unpacked in chrome://extensions, or publish the zip)", zip.display(), args.out.display());
    }
    Ok(())
}

/// Copies `from` into `to`; the extension's own folder only when writing the extension.
fn copy_dir(from: &Path, to: &Path, with_extension: bool) -> anyhow::Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from).with_context(|| format!("reading {}", from.display()))? {
        let entry = entry?;
        let target = to.join(entry.file_name());
        match entry.file_type()?.is_dir() {
            true if entry.file_name() == "extension" && !with_extension => {}
            true => copy_dir(&entry.path(), &target, with_extension)?,
            // wasm-pack's .gitignore and package.json are not part of the site.
            false if entry.file_name() == ".gitignore" => {}
            false => copy_file(&entry.path(), &target)?,
        }
    }
    Ok(())
}

fn zip_dir(dir: &Path, zip_path: &Path) -> anyhow::Result<()> {
    fn add(zip: &mut zip::ZipWriter<std::fs::File>, root: &Path, dir: &Path) -> anyhow::Result<()> {
        let mut entries: Vec<_> = std::fs::read_dir(dir)?.collect::<Result<_, _>>()?;
        entries.sort_by_key(|e| e.file_name());
        for entry in entries {
            let path = entry.path();
            let name = path.strip_prefix(root)?.to_string_lossy().replace('\\', "/");
            if entry.file_type()?.is_dir() {
                add(zip, root, &path)?;
            } else {
                zip.start_file(name, zip::write::SimpleFileOptions::default())?;
                std::io::copy(&mut std::fs::File::open(&path)?, zip)?;
            }
        }
        Ok(())
    }
    let mut zip = zip::ZipWriter::new(std::fs::File::create(zip_path).with_context(|| format!("creating {}", zip_path.display()))?);
    add(&mut zip, dir, dir)?;
    zip.finish()?;
    Ok(())
}

fn copy_file(from: &Path, to: &Path) -> anyhow::Result<()> {
    if let Some(dir) = to.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::copy(from, to).with_context(|| format!("copying {} to {}", from.display(), to.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_points_at_models_and_heads_under_the_base() {
        let model = browser_model("smollm2-135m").unwrap();
        let head = HeadFile { file_name: "h.safetensors".into(), path: "x".into(), sha256: "ab".into(), bytes: 3 };
        let c = serde_json::to_value(app_config(&model, Some(&head), "https://files.example/app", "", "m")).unwrap();
        assert_eq!(c["model"]["url"], "https://files.example/app/models/smollm2-135m.gguf");
        assert_eq!(c["model"]["sha256"], model.sha256.as_str());
        assert_eq!(c["rewardHead"]["url"], "https://files.example/app/reward/h.safetensors");
        assert_eq!(c["cloud"], serde_json::json!({"url": "", "model": "m"}));
        let relative = serde_json::to_value(app_config(&model, None, "", "https://c", "m")).unwrap();
        assert_eq!(relative["model"]["url"], "models/smollm2-135m.gguf");
        assert!(relative["rewardHead"].is_null());
        assert!(browser_model("./x.gguf").unwrap_err().to_string().contains("registry model"));
    }
}
