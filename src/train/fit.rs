//! `hybrid reward train`: fits the reward head on collected shards with candle-nn, holding
//! out whole prompts for validation, and reports how well the head flags the positions where
//! the cloud disagrees, next to the max-prob and entropy gates on the same positions.
use super::collect::{shard_paths, Shard};
use super::metrics::{cutoff_for_rate, GateReport};
use crate::reward::{LogitFeatures, RewardHead};
use crate::{Error, Result};
use candle_core::{DType, Device, Tensor};
use candle_nn::{AdamW, Optimizer, ParamsAdamW, VarBuilder, VarMap};
use rand::{seq::SliceRandom, SeedableRng};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, clap::Args)]
pub struct TrainArgs {
    /// A directory written by `hybrid reward collect`.
    #[arg(long)]
    pub data: PathBuf,
    /// Where to write the head (safetensors); a report goes next to it as .json.
    #[arg(long)]
    pub out: PathBuf,
    #[arg(long, default_value_t = 8)]
    pub epochs: usize,
    #[arg(long, default_value_t = 1e-3)]
    pub lr: f64,
    #[arg(long, default_value_t = 32)]
    pub batch: usize,
    /// Weight of the soft target (the cloud's probability of the token) against the hard
    /// one (the cloud's greedy token equals it).
    #[arg(long, default_value_t = 0.0)]
    pub soft_weight: f64,
    /// Dropout in the wide branch while training (heavy: a few thousand disagreements
    /// cannot fit its weights otherwise).
    #[arg(long, default_value_t = 0.9)]
    pub dropout: f32,
    #[arg(long, default_value_t = 0.05)]
    pub weight_decay: f64,
    /// Share of prompts held out (whole prompts, never split): half to choose the epoch,
    /// half to report on.
    #[arg(long, default_value_t = 0.2)]
    pub val_fraction: f64,
    #[arg(long, default_value_t = 17)]
    pub seed: u64,
    /// Print the report as one JSON object.
    #[arg(long)]
    pub json: bool,
}

/// All positions of a collection, as model inputs and labels.
struct Dataset {
    width: usize,
    hidden_size: usize,
    rows: Vec<f32>,
    agree: Vec<f32>,
    cloud_prob: Vec<f32>,
    features: Vec<[f32; LogitFeatures::COUNT]>,
    prompt: Vec<u32>,
}

impl Dataset {
    fn load(dir: &Path) -> Result<Self> {
        let paths = shard_paths(dir)?;
        if paths.is_empty() {
            return Err(Error::InvalidInput(format!("{} has no shards; run `hybrid reward collect --out {}` first", dir.display(), dir.display())));
        }
        let mut data: Option<Dataset> = None;
        for path in paths {
            let shard = Shard::load(&path)?;
            let n = shard.len();
            if n == 0 {
                continue;
            }
            let d = shard.hidden.len() / n;
            let set = data.get_or_insert_with(|| Dataset {
                width: RewardHead::input_width(d),
                hidden_size: d,
                rows: Vec::new(),
                agree: Vec::new(),
                cloud_prob: Vec::new(),
                features: Vec::new(),
                prompt: Vec::new(),
            });
            if d != set.hidden_size {
                return Err(Error::File { path, message: format!("hidden size {d} differs from the other shards' {}", set.hidden_size) });
            }
            for i in 0..n {
                let f: [f32; 4] = shard.features[i * 4..i * 4 + 4].try_into().expect("four features");
                set.rows.extend(RewardHead::input_row(
                    &shard.hidden[i * d..(i + 1) * d],
                    &shard.embedding[i * d..(i + 1) * d],
                    &LogitFeatures::from_array(f),
                ));
                set.features.push(f);
            }
            set.agree.extend(shard.agree.iter().map(|&a| a as f32));
            set.cloud_prob.extend_from_slice(&shard.cloud_prob);
            set.prompt.extend_from_slice(&shard.prompt);
        }
        data.ok_or_else(|| Error::InvalidInput(format!("the shards in {} hold no positions", dir.display())))
    }

    fn len(&self) -> usize {
        self.agree.len()
    }

    fn row(&self, i: usize) -> &[f32] {
        &self.rows[i * self.width..(i + 1) * self.width]
    }

    fn tensor(&self, idx: &[usize], device: &Device) -> Result<Tensor> {
        let mut flat = Vec::with_capacity(idx.len() * self.width);
        for &i in idx {
            flat.extend_from_slice(self.row(i));
        }
        Ok(Tensor::from_vec(flat, (idx.len(), self.width), device)?)
    }
}

/// Which part of the data a prompt's positions belong to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Split {
    Train,
    /// Held out to choose the epoch.
    Select,
    /// Held out to report on, never looked at while training.
    Report,
}

/// A fixed hash of the prompt's index, so the split never depends on how many shards exist yet.
fn split(prompt: u32, held_out: f64) -> Split {
    let h = (prompt as u64 ^ 0x9E37_79B9_7F4A_7C15).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    let u = ((h >> 40) % 10_000) as f64 / 10_000.0;
    match u {
        u if u < held_out / 2.0 => Split::Select,
        u if u < held_out => Split::Report,
        _ => Split::Train,
    }
}

/// What `hybrid reward train` prints and writes next to the head.
#[derive(Debug, Clone, serde::Serialize)]
pub struct TrainReport {
    pub train_positions: usize,
    /// Positions that chose the epoch.
    pub select_positions: usize,
    pub best_epoch: usize,
    /// Measured on prompts never used in training or selection.
    pub held_out: GateComparison,
}

/// The head and the simple gates on the same positions.
#[derive(Debug, Clone, serde::Serialize)]
pub struct GateComparison {
    pub positions: usize,
    pub prompts: usize,
    /// Share of the positions where the cloud's greedy token differs.
    pub disagreement: f64,
    pub gates: Vec<GateReport>,
    /// Policy thresholds that consult on a given share of these positions, per gate: the
    /// settings that compare the gates at matched cloud shares.
    pub thresholds_at_rate: Vec<ThresholdsAtRate>,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct ThresholdsAtRate {
    pub rate: f64,
    /// `--policy reward --threshold T`: consult when the reward < T.
    pub reward: Option<f32>,
    /// `--policy maxprob`: consult when top-1 probability < T.
    pub maxprob: Option<f32>,
    /// `--policy entropy`: consult when entropy > T nats.
    pub entropy: Option<f32>,
}

pub fn train(args: &TrainArgs) -> Result<TrainReport> {
    if super::collect::read_manifest(&args.data)?.prompts_sha256 == super::collect::HUMANEVAL {
        return Err(Error::InvalidInput(format!(
            "{} was collected on HumanEval, an evaluation set: never train on it; score a head on it with `hybrid reward report`",
            args.data.display()
        )));
    }
    let data = Dataset::load(&args.data)?;
    let device = Device::Cpu;
    let part = |which: Split| -> Vec<usize> { (0..data.len()).filter(|&i| split(data.prompt[i], args.val_fraction) == which).collect() };
    let (train_idx, select_idx, val_idx) = (part(Split::Train), part(Split::Select), part(Split::Report));
    if train_idx.is_empty() || select_idx.is_empty() || val_idx.is_empty() {
        return Err(Error::InvalidInput(format!(
            "{} positions give {} for training, {} to choose the epoch and {} to report on; collect more prompts or raise --val-fraction",
            data.len(),
            train_idx.len(),
            select_idx.len(),
            val_idx.len()
        )));
    }

    // Standardise each input column with training statistics (kept in the head).
    let mut mean = vec![0f64; data.width];
    let mut sq = vec![0f64; data.width];
    for &i in &train_idx {
        for (j, &v) in data.row(i).iter().enumerate() {
            mean[j] += v as f64;
            sq[j] += (v as f64) * (v as f64);
        }
    }
    let n = train_idx.len() as f64;
    let std: Vec<f32> = mean.iter().zip(&sq).map(|(m, s)| ((s / n - (m / n).powi(2)).max(0.0).sqrt() as f32).max(1e-4)).collect();
    let mean: Vec<f32> = mean.iter().map(|m| (m / n) as f32).collect();
    let mean_t = Tensor::from_vec(mean, data.width, &device)?;
    let std_t = Tensor::from_vec(std, data.width, &device)?;

    let varmap = VarMap::new();
    let head = RewardHead::build(VarBuilder::from_varmap(&varmap, DType::F32, &device), data.hidden_size, mean_t, std_t)?;
    let mut opt = AdamW::new(varmap.all_vars(), ParamsAdamW { lr: args.lr, weight_decay: args.weight_decay, ..Default::default() })?;
    let select_x = data.tensor(&select_idx, &device)?;
    let select_disagree: Vec<bool> = select_idx.iter().map(|&i| data.agree[i] < 0.5).collect();
    let select_maxprob: Vec<f32> = select_idx.iter().map(|&i| -data.features[i][1]).collect();
    let maxprob_auc = GateReport::new("max-prob", &select_maxprob, &select_disagree).roc_auc.unwrap_or(0.5);
    let mut rng = rand::rngs::StdRng::seed_from_u64(args.seed);
    let mut order = train_idx.clone();
    let mut best: Option<(f64, usize, HashMap<String, Tensor>)> = None;
    for epoch in 1..=args.epochs {
        order.shuffle(&mut rng);
        let mut loss_sum = 0f64;
        for batch in order.chunks(args.batch) {
            let x = data.tensor(batch, &device)?;
            let hard = Tensor::from_vec(batch.iter().map(|&i| data.agree[i]).collect::<Vec<f32>>(), batch.len(), &device)?;
            let soft = Tensor::from_vec(batch.iter().map(|&i| data.cloud_prob[i]).collect::<Vec<f32>>(), batch.len(), &device)?;
            // The hard label says whether the cloud agrees; the cloud's probability of the
            // token adds how close the call was.
            let target = ((hard * (1.0 - args.soft_weight))? + (soft * args.soft_weight)?)?;
            let loss = bce_with_logits(&head.logits_with_dropout(&x, args.dropout)?, &target)?;
            opt.backward_step(&loss)?;
            loss_sum += loss.to_scalar::<f32>()? as f64 * batch.len() as f64;
        }
        let select_scores = suspicion(&head.logits(&select_x)?)?;
        let auc = GateReport::new("reward", &select_scores, &select_disagree).roc_auc.unwrap_or(0.5);
        eprintln!(
            "epoch {epoch}: train loss {:.4}, ROC-AUC on the selection split {auc:.4} (max-prob {maxprob_auc:.4})",
            loss_sum / train_idx.len() as f64
        );
        if best.as_ref().is_none_or(|(b, _, _)| auc > *b) {
            let vars = varmap.data().lock().expect("varmap lock");
            let snapshot = vars.iter().map(|(k, v)| Ok((k.clone(), v.as_tensor().copy()?))).collect::<Result<HashMap<_, _>>>()?;
            best = Some((auc, epoch, snapshot));
        }
    }
    let (_, best_epoch, mut tensors) = best.ok_or_else(|| Error::InvalidInput("--epochs must be at least 1".into()))?;
    let (mean_t, std_t) = head.normalisation();
    tensors.insert("norm.mean".into(), mean_t.clone());
    tensors.insert("norm.std".into(), std_t.clone());
    if let Some(parent) = args.out.parent() {
        std::fs::create_dir_all(parent)?;
    }
    // Half precision halves the file the browser downloads; the report below scores the
    // saved head, so it measures what ships.
    let tensors = tensors.into_iter().map(|(k, v)| Ok((k, v.to_dtype(DType::F16)?))).collect::<Result<HashMap<_, _>>>()?;
    candle_core::safetensors::save(&tensors, &args.out)?;

    // Report the saved head, reloaded the way users load it.
    let saved = RewardHead::from_safetensors(&std::fs::read(&args.out)?)?;
    let report = TrainReport {
        train_positions: train_idx.len(),
        select_positions: select_idx.len(),
        best_epoch,
        held_out: compare_gates(&saved, &data, &val_idx)?,
    };
    std::fs::write(args.out.with_extension("json"), serde_json::to_string_pretty(&report).expect("report serialises"))?;
    Ok(report)
}

/// The head next to the max-prob and entropy gates on some positions of `data`.
fn compare_gates(head: &RewardHead, data: &Dataset, idx: &[usize]) -> Result<GateComparison> {
    let x = data.tensor(idx, &Device::Cpu)?;
    let disagree: Vec<bool> = idx.iter().map(|&i| data.agree[i] < 0.5).collect();
    let head_scores = suspicion(&head.logits(&x)?)?;
    let feats = |f: fn(&[f32; 4]) -> f32| -> Vec<f32> { idx.iter().map(|&i| f(&data.features[i])).collect() };
    let (maxprob_scores, entropy_scores) = (feats(|f| -f[1]), feats(|f| f[3]));
    let thresholds_at_rate = [0.02, 0.05, 0.10, 0.20]
        .into_iter()
        .map(|rate| ThresholdsAtRate {
            rate,
            // Cut just past the k-th score so that it is consulted too (strict comparisons).
            reward: cutoff_for_rate(&head_scores, rate).map(|s| crate::reward::sigmoid(-s).next_up()),
            maxprob: cutoff_for_rate(&maxprob_scores, rate).map(|s| (-s).next_up()),
            entropy: cutoff_for_rate(&entropy_scores, rate).map(|s| s.next_down()),
        })
        .collect();
    Ok(GateComparison {
        positions: idx.len(),
        prompts: idx.iter().map(|&i| data.prompt[i]).collect::<std::collections::BTreeSet<_>>().len(),
        disagreement: disagree.iter().filter(|&&d| d).count() as f64 / disagree.len().max(1) as f64,
        gates: vec![
            GateReport::new("reward head", &head_scores, &disagree),
            GateReport::new("max-prob", &maxprob_scores, &disagree),
            GateReport::new("entropy", &entropy_scores, &disagree),
        ],
        thresholds_at_rate,
    })
}

#[derive(Debug, Clone, clap::Args)]
pub struct ReportArgs {
    /// A directory written by `hybrid reward collect` (e.g. over an evaluation set).
    #[arg(long)]
    pub data: PathBuf,
    /// The head to score with.
    #[arg(long)]
    pub head: PathBuf,
    #[arg(long)]
    pub json: bool,
}

/// `hybrid reward report`: a trained head next to the simple gates on every position of a
/// collection it never saw (the same figures training reports on its held-out split).
pub fn report(args: &ReportArgs) -> Result<GateComparison> {
    let data = Dataset::load(&args.data)?;
    let bytes = std::fs::read(&args.head).map_err(|e| Error::File { path: args.head.clone(), message: format!("cannot read the reward head: {e}") })?;
    let head = RewardHead::from_safetensors(&bytes)?;
    if head.hidden_size() != data.hidden_size {
        return Err(Error::InvalidInput(format!(
            "the head is for hidden size {} but {} holds {}; collect with the head's small model",
            head.hidden_size(),
            args.data.display(),
            data.hidden_size
        )));
    }
    let all: Vec<usize> = (0..data.len()).collect();
    compare_gates(&head, &data, &all)
}

/// Binary cross-entropy on logits, in the stable form max(x,0) − x·t + ln(1 + e^−|x|).
/// (candle-nn's takes the log of a sigmoid, which saturates to log 0 = −inf and NaN.)
fn bce_with_logits(logits: &Tensor, target: &Tensor) -> Result<Tensor> {
    let softplus = (logits.relu()? + logits.abs()?.neg()?.exp()?.affine(1.0, 1.0)?.log()?)?;
    Ok((softplus - (logits * target)?)?.mean_all()?)
}

/// Scores oriented for the metrics: higher = more likely a disagreement (the reward's complement).
fn suspicion(logits: &Tensor) -> Result<Vec<f32>> {
    Ok(logits.neg()?.to_vec1::<f32>()?)
}

#[cfg(test)]
mod tests {
    use super::{bce_with_logits, split, Split};
    use candle_core::{Device, Tensor};

    #[test]
    fn cross_entropy_is_finite_and_right_at_saturated_logits() {
        let x = Tensor::new(&[0.0f32, 2.0, -3.0, 200.0, -200.0], &Device::Cpu).unwrap();
        let t = Tensor::new(&[1.0f32, 0.25, 0.0, 0.0, 1.0], &Device::Cpu).unwrap();
        let got = bce_with_logits(&x, &t).unwrap().to_scalar::<f32>().unwrap() as f64;
        let direct = |x: f64, t: f64| -(t * (1.0 / (1.0 + (-x).exp())).ln() + (1.0 - t) * (1.0 / (1.0 + x.exp())).ln());
        let expected = (direct(0.0, 1.0) + direct(2.0, 0.25) + direct(-3.0, 0.0) + 200.0 + 200.0) / 5.0;
        assert!((got - expected).abs() < 1e-3, "{got} vs {expected}");
    }

    #[test]
    fn the_split_holds_out_about_the_asked_share_of_prompts_in_two_halves() {
        let count = |which| (0..10_000).filter(|&p| split(p, 0.2) == which).count();
        assert!((800..1200).contains(&count(Split::Select)), "{}", count(Split::Select));
        assert!((800..1200).contains(&count(Split::Report)), "{}", count(Split::Report));
        assert_eq!((0..100).filter(|&p| split(p, 0.0) != Split::Train).count(), 0);
    }
}
