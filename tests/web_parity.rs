//! The native half of the browser parity check: what `tests/web.rs` computes in headless
//! Chrome must equal what this computes natively, and both must equal the committed vectors.
//! After an intended change: `UPDATE_WEB_PARITY=1 cargo test --test web_parity`, then review
//! the diff of tests/data/web_parity.json.
#![cfg(not(target_arch = "wasm32"))]
mod common;
mod parity;

#[test]
fn native_results_match_the_committed_vectors() {
    let bytes = std::fs::read(common::model_path("smollm2-135m")).unwrap();
    if std::env::var_os("UPDATE_WEB_PARITY").is_some() {
        let actual = parity::compute(&bytes, None);
        let path = common::data_path("web_parity.json");
        std::fs::write(&path, serde_json::to_string(&actual).unwrap() + "\n").unwrap();
        eprintln!("wrote {}", path.display());
        return;
    }
    // Teacher-forced with the committed greedy ids, as in the browser: each position's choice
    // is compared on its own, so a flip at a near-tie does not change the rest.
    let expected: serde_json::Value = serde_json::from_str(parity::VECTORS).unwrap();
    let forced: Vec<u32> = serde_json::from_value(expected["greedy_ids"].clone()).unwrap();
    let actual = parity::compute(&bytes, Some(&forced));
    parity::assert_matches_vectors(&expected, &actual);
}
