//! `hybrid reward collect`: the reward head's training data. For each prompt the small model
//! answers greedily (through its chat template); at every position it records what the head
//! will see (final hidden state, the proposed token's embedding, logit features). Then the
//! cloud model runs teacher-forced over the same tokens and labels each position: does its
//! greedy token equal the proposal, and what probability does it give the proposal.
//!
//! Output: `manifest.json` and `shard-NNNNN.safetensors`, each shard covering `shard_size`
//! consecutive prompts, written atomically. A rerun skips finished shards, so an interrupted
//! collection resumes where it stopped.
use super::{read_prompts, PromptEntry};
use crate::model::attention::KvDtype;
use crate::model::decoder::LoadOptions;
use crate::model::Model;
use crate::reward::LogitFeatures;
use crate::sampler::{argmax, log_prob, TopLogits};
use crate::{Error, Result};
use candle_core::{DType, Device, Tensor};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, clap::Args)]
pub struct CollectArgs {
    /// The small model (name or .gguf path).
    #[arg(long, default_value = "qwen2.5-coder-0.5b")]
    pub slm: String,
    /// The cloud model that labels the positions (name or .gguf path); same tokenizer.
    #[arg(long, default_value = "qwen2.5-coder-1.5b")]
    pub cloud_model: String,
    /// A prompt set (JSON lines with "id" and "prompt"), or `humaneval` for HumanEval's
    /// instructions: an evaluation collection that `hybrid reward report` reads and
    /// `hybrid reward train` refuses.
    #[arg(long, default_value = "assets/prompts/train.jsonl")]
    pub prompts: PathBuf,
    #[arg(long)]
    pub out: PathBuf,
    /// Tokens the small model answers each prompt with, at most.
    #[arg(long, default_value_t = 256)]
    pub max_tokens: usize,
    /// Prompts per shard (the unit of resumption).
    #[arg(long, default_value_t = 8)]
    pub shard_size: usize,
    /// Only the first N prompts (a quick run; a later run without it continues).
    #[arg(long)]
    pub limit: Option<usize>,
}

/// What a collection directory was made with; a resumed run must match it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub slm: String,
    pub slm_sha256: String,
    pub cloud_model: String,
    pub cloud_sha256: String,
    /// sha256 of the prompt file, or `humaneval` for HumanEval's instructions.
    pub prompts_sha256: String,
    pub max_tokens: usize,
    pub shard_size: usize,
    pub hidden_size: usize,
}

/// The positions of one shard, column by column (row i of each belongs together).
#[derive(Debug, Default)]
pub struct Shard {
    pub hidden: Vec<f32>,
    pub embedding: Vec<f32>,
    pub features: Vec<f32>,
    pub token: Vec<u32>,
    /// 1 when the cloud's greedy token equals the proposal.
    pub agree: Vec<u8>,
    pub cloud_prob: Vec<f32>,
    pub prompt: Vec<u32>,
    pub position: Vec<u32>,
}

impl Shard {
    pub fn len(&self) -> usize {
        self.token.len()
    }

    pub fn is_empty(&self) -> bool {
        self.token.is_empty()
    }

    fn save(&self, path: &Path, hidden_size: usize) -> Result<()> {
        let (n, d, dev) = (self.len(), hidden_size, &Device::Cpu);
        let f16 = |v: &[f32], shape: (usize, usize)| -> Result<Tensor> {
            Ok(Tensor::from_slice(v, shape, dev)?.to_dtype(DType::F16)?)
        };
        let tensors: HashMap<String, Tensor> = [
            ("hidden", f16(&self.hidden, (n, d))?),
            ("embedding", f16(&self.embedding, (n, d))?),
            ("features", Tensor::from_slice(&self.features, (n, LogitFeatures::COUNT), dev)?),
            ("token", Tensor::from_slice(&self.token, n, dev)?),
            ("agree", Tensor::from_slice(&self.agree, n, dev)?),
            ("cloud_prob", Tensor::from_slice(&self.cloud_prob, n, dev)?),
            ("prompt", Tensor::from_slice(&self.prompt, n, dev)?),
            ("position", Tensor::from_slice(&self.position, n, dev)?),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        let partial = path.with_extension("partial");
        candle_core::safetensors::save(&tensors, &partial)?;
        std::fs::rename(&partial, path)?;
        Ok(())
    }

    /// Reads a shard written by [`collect`].
    pub fn load(path: &Path) -> Result<Self> {
        let bad = |m: String| Error::File { path: path.to_path_buf(), message: format!("not a reward-data shard: {m}; delete it and rerun `hybrid reward collect` to redo it") };
        let t = candle_core::safetensors::load(path, &Device::Cpu).map_err(|e| bad(crate::error::first_line(&e)))?;
        let get = |name: &str| t.get(name).ok_or_else(|| bad(format!("no tensor `{name}`")));
        let flat_f32 = |name: &str| -> Result<Vec<f32>> { Ok(get(name)?.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?) };
        Ok(Self {
            hidden: flat_f32("hidden")?,
            embedding: flat_f32("embedding")?,
            features: flat_f32("features")?,
            token: get("token")?.to_vec1()?,
            agree: get("agree")?.to_vec1()?,
            cloud_prob: flat_f32("cloud_prob")?,
            prompt: get("prompt")?.to_vec1()?,
            position: get("position")?.to_vec1()?,
        })
    }
}

/// `--prompts` value naming HumanEval's instructions (an evaluation set).
pub const HUMANEVAL: &str = "humaneval";

/// The manifest of a collection directory.
pub fn read_manifest(dir: &Path) -> Result<Manifest> {
    let path = dir.join("manifest.json");
    let text = std::fs::read_to_string(&path)
        .map_err(|e| Error::File { path: path.clone(), message: format!("cannot read ({e}); is this a `hybrid reward collect --out` directory?") })?;
    serde_json::from_str(&text).map_err(|e| Error::File { path, message: format!("unreadable manifest: {e}") })
}

/// The shard files of a collection directory, in order.
pub fn shard_paths(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| Error::File { path: dir.to_path_buf(), message: format!("cannot read the data directory: {e}; run `hybrid reward collect --out {}` first", dir.display()) })?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with("shard-") && n.ends_with(".safetensors")))
        .collect();
    paths.sort();
    Ok(paths)
}

fn shard_path(dir: &Path, index: usize) -> PathBuf {
    dir.join(format!("shard-{index:05}.safetensors"))
}

pub fn collect(args: &CollectArgs) -> Result<()> {
    let evaluation_set = args.prompts.as_os_str() == HUMANEVAL;
    let prompts = match evaluation_set {
        true => crate::eval::humaneval::load_problems()?
            .iter()
            .map(|p| PromptEntry { id: p.task_id.clone(), prompt: crate::eval::humaneval::instruction(p) })
            .collect(),
        false => read_prompts(&args.prompts)?,
    };
    if args.shard_size == 0 {
        return Err(Error::InvalidInput("--shard-size must be at least 1".into()));
    }
    let slm_path = crate::eval::resolve_model(&args.slm)?;
    let cloud_path = crate::eval::resolve_model(&args.cloud_model)?;
    // The cloud's arithmetic is the server's (row-invariant, its KV cache type), and so is the
    // small model's on single decode steps (with the browser's f32 cache): labels then say
    // what a consult at run time would answer.
    let mut slm = Model::load_with(&slm_path, LoadOptions { kv_dtype: KvDtype::F32, ..LoadOptions::cloud() })?;
    let mut cloud = Model::load_with(&cloud_path, LoadOptions::cloud())?;
    if slm.decoder.vocab_size() != cloud.decoder.vocab_size() {
        return Err(Error::InvalidInput(format!(
            "{} has {} token ids and {} has {}: teacher forcing needs one shared tokenizer",
            args.slm,
            slm.decoder.vocab_size(),
            args.cloud_model,
            cloud.decoder.vocab_size()
        )));
    }
    let manifest = Manifest {
        slm: args.slm.clone(),
        slm_sha256: crate::fetch::sha256_file(&slm_path)?,
        cloud_model: args.cloud_model.clone(),
        cloud_sha256: crate::fetch::sha256_file(&cloud_path)?,
        prompts_sha256: match evaluation_set {
            true => HUMANEVAL.to_string(),
            false => crate::fetch::sha256_file(&args.prompts)?,
        },
        max_tokens: args.max_tokens,
        shard_size: args.shard_size,
        hidden_size: slm.decoder.config().n_embd,
    };
    check_or_write_manifest(&args.out, &manifest)?;

    let count = args.limit.unwrap_or(prompts.len()).min(prompts.len());
    let shards = count.div_ceil(args.shard_size);
    let started = std::time::Instant::now();
    let (mut done_positions, mut done_prompts) = (0usize, 0usize);
    for index in 0..shards {
        let path = shard_path(&args.out, index);
        let range = index * args.shard_size..((index + 1) * args.shard_size).min(prompts.len());
        if path.exists() {
            continue;
        }
        if range.end > count && args.limit.is_some() {
            // A partial last shard would be skipped by a later full run: leave it for then.
            break;
        }
        let mut shard = Shard::default();
        for i in range.clone() {
            label_prompt(&mut slm, &mut cloud, &prompts[i], i as u32, args.max_tokens, &mut shard)?;
            done_prompts += 1;
        }
        shard.save(&path, manifest.hidden_size)?;
        done_positions += shard.len();
        let secs = started.elapsed().as_secs_f64();
        eprintln!(
            "shard {}/{shards}: prompts {}..{}, {} positions, {:.0}% disagree; {:.1} prompts/min",
            index + 1,
            range.start,
            range.end,
            shard.len(),
            100.0 * shard.agree.iter().filter(|&&a| a == 0).count() as f64 / shard.len().max(1) as f64,
            done_prompts as f64 / secs * 60.0,
        );
    }
    eprintln!("collected {done_positions} new positions into {}", args.out.display());
    Ok(())
}

fn check_or_write_manifest(dir: &Path, manifest: &Manifest) -> Result<()> {
    std::fs::create_dir_all(dir)?;
    let path = dir.join("manifest.json");
    if let Ok(text) = std::fs::read_to_string(&path) {
        let existing: Manifest = serde_json::from_str(&text)
            .map_err(|e| Error::File { path: path.clone(), message: format!("unreadable manifest ({e}); use another --out") })?;
        if &existing != manifest {
            return Err(Error::InvalidInput(format!(
                "{} was collected with other settings ({}); use another --out, or delete it to start over",
                dir.display(),
                serde_json::to_string(&existing).unwrap_or_default()
            )));
        }
        return Ok(());
    }
    std::fs::write(&path, serde_json::to_string_pretty(manifest).expect("manifest serialises"))?;
    Ok(())
}

/// Answers one prompt with the small model and labels every proposal with the cloud model.
fn label_prompt(slm: &mut Model, cloud: &mut Model, entry: &PromptEntry, index: u32, max_tokens: usize, shard: &mut Shard) -> Result<()> {
    let prompt = slm.tokenizer.encode(&slm.chat_prompt(&entry.prompt)?)?;
    slm.decoder.cache_mut().clear();
    let mut step = slm.decoder.forward(&prompt)?;
    let mut proposals = Vec::new();
    for position in 0..max_tokens {
        let x = argmax(&step.logits);
        shard.hidden.extend_from_slice(&step.hidden);
        shard.embedding.extend(slm.decoder.token_embedding(x)?);
        shard.features.extend(TopLogits::from_logits(&step.logits).features(x).to_array());
        shard.token.push(x);
        shard.prompt.push(index);
        shard.position.push(position as u32);
        proposals.push(x);
        if slm.tokenizer.is_eog(x) || position + 1 == max_tokens {
            break;
        }
        step = slm.decoder.forward(&[x])?;
    }

    // Teacher forcing: the cloud's logits after prompt[..n-1] + prompt[n-1] predict proposal 0,
    // and after each proposal the next one.
    cloud.decoder.cache_mut().clear();
    if prompt.len() > 1 {
        cloud.decoder.forward(&prompt[..prompt.len() - 1])?;
    }
    let mut inputs = vec![prompt[prompt.len() - 1]];
    inputs.extend_from_slice(&proposals[..proposals.len() - 1]);
    let mut k = 0;
    for chunk in inputs.chunks(64) {
        for step in cloud.decoder.forward_all(chunk)? {
            let x = proposals[k];
            shard.agree.push((argmax(&step.logits) == x) as u8);
            shard.cloud_prob.push(log_prob(&step.logits, x).exp());
            k += 1;
        }
    }
    Ok(())
}
