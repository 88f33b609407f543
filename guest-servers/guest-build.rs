//! The build script every guest image shares: link with the firmware's linker script,
//! as a static, freestanding executable.
fn main() {
    let dir = std::path::PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap());
    let script = dir.join("../../firmware/link.ld");
    let script = script.canonicalize().expect("firmware/link.ld exists");
    println!("cargo:rerun-if-changed={}", script.display());
    for arg in ["-nostdlib", "-nostartfiles", "-static", "-no-pie"] {
        println!("cargo:rustc-link-arg-bins={arg}");
    }
    println!("cargo:rustc-link-arg-bins=-T{}", script.display());
}
