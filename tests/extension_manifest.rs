//! The extension's manifest asks for no more than its features use: Manifest V3, a CSP that
//! allows wasm and nothing broader, no blanket host access (the cloud's origin is requested
//! at run time from `optional_host_permissions`), and the files it names exist.
#![cfg(not(target_arch = "wasm32"))] // native only; tests/web.rs is the browser suite
use std::path::Path;

fn manifest() -> serde_json::Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("www/extension/manifest.json");
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

#[test]
fn manifest_v3_with_the_narrow_csp_and_only_the_permissions_used() {
    let m = manifest();
    assert_eq!(m["manifest_version"], 3);
    assert_eq!(
        m["content_security_policy"]["extension_pages"], "script-src 'self' 'wasm-unsafe-eval'; object-src 'self'",
        "wasm needs 'wasm-unsafe-eval'; nothing else may be loosened"
    );
    assert!(m["content_security_policy"].get("sandbox").is_none());
    // sidePanel: the panel; contextMenus: "Ask the assistant about the selection";
    // storage: settings and the API key (chrome.storage.local), the handed-over selection (session).
    let permissions: Vec<&str> = m["permissions"].as_array().unwrap().iter().map(|p| p.as_str().unwrap()).collect();
    assert_eq!(permissions, ["sidePanel", "contextMenus", "storage"]);
    assert!(m.get("host_permissions").is_none(), "no install-time host access");
    let text = m.to_string();
    assert!(!text.contains("<all_urls>") && !text.contains("*://*/*"), "no blanket host permission");
    assert!(m.get("content_scripts").is_none(), "the extension reads pages only through the selection the user sends");
    let optional: Vec<&str> = m["optional_host_permissions"].as_array().unwrap().iter().map(|p| p.as_str().unwrap()).collect();
    assert_eq!(optional, ["http://*/*", "https://*/*"], "the cloud's origin is requested at run time from these");
}

#[test]
fn every_file_the_manifest_names_exists() {
    let m = manifest();
    let www = Path::new(env!("CARGO_MANIFEST_DIR")).join("www");
    for file in [&m["side_panel"]["default_path"], &m["background"]["service_worker"], &m["options_page"]] {
        let file = file.as_str().unwrap();
        assert!(www.join(file).is_file(), "{file} is named in the manifest but www/{file} does not exist");
    }
    assert_eq!(m["background"]["type"], "module");
}
