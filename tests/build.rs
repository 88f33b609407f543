//! `COMPART_SKIP_KVM_TESTS=1` turns on the `compart_skip_kvm` cfg, under which the
//! tests declared with `kvm_test!` are marked ignored (so a run without KVM reports
//! them as ignored, not as passed). The cfg is declared here because the crate
//! inherits the workspace's lints and cannot add `[lints.rust]` of its own.
fn main() {
    println!("cargo::rustc-check-cfg=cfg(compart_skip_kvm)");
    println!("cargo::rerun-if-env-changed=COMPART_SKIP_KVM_TESTS");
    if std::env::var("COMPART_SKIP_KVM_TESTS").as_deref() == Ok("1") {
        println!("cargo::rustc-cfg=compart_skip_kvm");
    }
}
