//! Declares the `loom` cfg (set through RUSTFLAGS for the model-checking run), since the
//! crate inherits the workspace's lints and cannot add `[lints.rust]` of its own.
fn main() {
    println!("cargo::rustc-check-cfg=cfg(loom)");
}
