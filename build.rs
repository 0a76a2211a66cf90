//! Marks builds with the dev profile (`cargo build`, `cargo test`), so test-only hooks such as
//! `hybrid serve`'s injected faults exist there and a release build refuses them.
fn main() {
    println!("cargo::rustc-check-cfg=cfg(dev_build)");
    if std::env::var("PROFILE").as_deref() == Ok("debug") {
        println!("cargo::rustc-cfg=dev_build");
    }
    println!("cargo::rerun-if-changed=build.rs");
}
