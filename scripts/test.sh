#!/usr/bin/env bash
# The project's test command: installs the Debian packages the tests need, then runs
# every check CI runs. Needs /dev/kvm (run as root, or as a user in the kvm group);
# without it the KVM tests fail with a message saying so, unless
# COMPART_SKIP_KVM_TESTS=1, which reports them as ignored.
set -euo pipefail
cd "$(dirname "$0")/.."

# Debian packages: acpica-tools (iasl, acpiexec) checks the ACPI tables independently;
# iproute2 (ip: network namespaces, TAP, veth, macvtap), iputils-ping, arping and
# tcpdump for the network tests, which stay inside namespaces they create; procps
# (sysctl) to quiet IPv6 in those namespaces; iperf3, curl and netcat-openbsd (nc; also
# the listener the stack connects out to) are the stock peers the stack is proven against.
need=()
command -v iasl >/dev/null 2>&1 && command -v acpiexec >/dev/null 2>&1 || need+=(acpica-tools)
command -v ip >/dev/null 2>&1 || need+=(iproute2)
command -v ping >/dev/null 2>&1 || need+=(iputils-ping)
command -v arping >/dev/null 2>&1 || need+=(arping)
command -v tcpdump >/dev/null 2>&1 || need+=(tcpdump)
command -v sysctl >/dev/null 2>&1 || need+=(procps)
command -v iperf3 >/dev/null 2>&1 || need+=(iperf3)
command -v curl >/dev/null 2>&1 || need+=(curl)
{ nc -h 2>&1 | grep -q OpenBSD; } || need+=(netcat-openbsd)
if [ ${#need[@]} -gt 0 ]; then
    if [ "$(id -u)" -eq 0 ]; then
        echo "==> apt-get install ${need[*]}"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
    else
        echo "missing Debian packages: ${need[*]} (run as root, or: sudo apt-get install ${need[*]})" >&2
        exit 1
    fi
fi

echo "==> cargo fmt --check (host workspace, with firmware/)"
cargo fmt --all -- --check
echo "==> cargo clippy (host workspace, with firmware/)"
cargo clippy --workspace --all-targets -- -D warnings
cargo clippy -p compart-sockets --all-targets --features std -- -D warnings
echo "==> guest images (guest-servers/): cargo fmt --check, cargo clippy"
(cd guest-servers && cargo fmt --all -- --check &&
    cargo clippy --release --workspace --target x86_64-unknown-linux-gnu -- -D warnings)
echo "==> cargo test"
cargo test --workspace
cargo test -p compart-sockets --features std
echo "==> server logic of the guest images, on the host (guest-servers/*/src/lib.rs)"
for lib in guest-servers/*/src/lib.rs; do
    cargo test --manifest-path "${lib%/src/lib.rs}/Cargo.toml" --lib \
        --target x86_64-unknown-linux-gnu --target-dir target/guest-libs
done
echo "==> loom models: the channel's sleep/kick protocol, the placement page's sequence lock"
RUSTFLAGS="--cfg loom" CARGO_TARGET_DIR=target/loom \
    cargo test -p compart-channel -p compart-abi --release --test loom
