//! Builds the guest images (the `guest-servers/` workspace, with the `firmware/`
//! runtime) and embeds them in the VMM, so that `cargo build`, `cargo run` and
//! `cargo test` on the host workspace need no other step.
//!
//! The guests are built by a nested cargo, in release mode, with a clean environment
//! (the host build's RUSTFLAGS, wrappers and target dir must not leak into a
//! freestanding guest build) and its own target directory beside the host's.
//!
//! The build names its target (`--target x86_64-unknown-linux-gnu`, the host's own):
//! with a target, cargo applies the guests' rustflags (`relocation-model=static`, from
//! `guest-servers/.cargo/config.toml`) to the guest code only, not to build scripts and
//! proc macros, which run on the host and would not link with them.

use std::env;
use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The target guests are built for: the only one installed (no `x86_64-unknown-none`).
const GUEST_TARGET: &str = "x86_64-unknown-linux-gnu";

fn main() {
    let manifest = PathBuf::from(env::var("CARGO_MANIFEST_DIR").unwrap());
    let root = manifest.parent().unwrap().to_path_buf();
    let guests = root.join("guest-servers");
    let out = PathBuf::from(env::var("OUT_DIR").unwrap());

    for dir in [
        "firmware",
        "guest-servers",
        "channel/src",
        "channel/Cargo.toml",
    ] {
        println!("cargo:rerun-if-changed={}", root.join(dir).display());
    }
    println!("cargo:rerun-if-env-changed=COMPART_GUEST_TARGET_DIR");

    let target_dir = guest_target_dir(&out);
    let cargo = env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(&guests)
        .env_clear()
        .args([
            "build",
            "--release",
            "--workspace",
            "--target",
            GUEST_TARGET,
        ])
        .arg("--target-dir")
        .arg(&target_dir);
    for var in [
        "PATH",
        "HOME",
        "CARGO_HOME",
        "RUSTUP_HOME",
        "RUSTUP_TOOLCHAIN",
        "RUSTC",
    ] {
        if let Some(v) = env::var_os(var) {
            cmd.env(var, v);
        }
    }
    let output = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run cargo to build the guest images: {e}"));
    if !output.status.success() {
        eprintln!(
            "building the guest images in {} failed:\n{}",
            guests.display(),
            String::from_utf8_lossy(&output.stderr)
        );
        std::process::exit(1);
    }

    // Every workspace member with a binary is an image named after its directory.
    let mut names: Vec<String> = fs::read_dir(&guests)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.path().join("Cargo.toml").is_file() && e.path().join("src/main.rs").is_file())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();

    let mut table = String::from(
        "/// The guest images built from `guest-servers/`: (name, ELF bytes).\n\
         pub static BUILTIN_IMAGES: &[(&str, &[u8])] = &[\n",
    );
    for name in &names {
        let built = target_dir.join(GUEST_TARGET).join("release").join(name);
        let copy = out.join(format!("{name}.elf"));
        fs::copy(&built, &copy)
            .unwrap_or_else(|e| panic!("guest image {} missing: {e}", built.display()));
        writeln!(
            table,
            "    ({name:?}, include_bytes!({:?})),",
            copy.display()
        )
        .unwrap();
    }
    table.push_str("];\n");
    fs::write(out.join("builtin_images.rs"), table).unwrap();
}

/// `<host target dir>/guest-servers`: the host target directory is the ancestor of
/// OUT_DIR that cargo marked with CACHEDIR.TAG. Falls back to OUT_DIR.
fn guest_target_dir(out: &Path) -> PathBuf {
    if let Ok(p) = env::var("COMPART_GUEST_TARGET_DIR") {
        return PathBuf::from(p);
    }
    out.ancestors()
        .find(|a| a.join("CACHEDIR.TAG").is_file())
        .map(|t| t.join("guest-servers"))
        .unwrap_or_else(|| out.join("guest-servers"))
}
