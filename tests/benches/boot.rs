//! Boot benchmark: time from `start` to each guest's first console line, the VMM's
//! resident memory, and host memory per guest — beside a bare-KVM floor measured in
//! the same run (create a VM with the same RAM, one vCPU, run to its first port
//! write: what any VMM pays before its guest can say anything).
//!
//! `cargo bench -p compart-tests --bench boot` (set COMPART_BENCH_RUNS to change the
//! number of boots; default 10).

use std::time::{Duration, Instant};

use compart_tests::{idle_topology, require_kvm, topology, Capture};
use kvm_bindings::kvm_userspace_memory_region;
use kvm_ioctls::{Kvm, VcpuExit};

fn percentile(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let i = ((v.len() as f64 - 1.0) * p).round() as usize;
    v[i]
}

fn status_kib(field: &str) -> u64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap();
    s.lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap()
}

fn mem_available_kib() -> u64 {
    let s = std::fs::read_to_string("/proc/meminfo").unwrap();
    s.lines()
        .find_map(|l| l.strip_prefix("MemAvailable:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap()
}

/// Bare KVM: VM, 4 MiB slot, irqchip, one vCPU in real mode running `out 0x10, al`.
fn bare_kvm_first_output(kvm: &Kvm) -> Duration {
    let start = Instant::now();
    let vm = kvm.create_vm().unwrap();
    let size = 4 << 20;
    // SAFETY: an anonymous private mapping of `size` bytes, unmapped below.
    let mem = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            size,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
            -1,
            0,
        )
    };
    assert_ne!(mem, libc::MAP_FAILED);
    let code = [0xb0u8, b'x', 0xe6, 0x10, 0xf4]; // mov al,'x'; out 0x10,al; hlt
                                                 // SAFETY: the mapping is `size` bytes long and the code is 5 bytes at 0x1000.
    unsafe {
        std::ptr::copy_nonoverlapping(code.as_ptr(), (mem as *mut u8).add(0x1000), code.len())
    };
    let region = kvm_userspace_memory_region {
        slot: 0,
        guest_phys_addr: 0,
        memory_size: size as u64,
        userspace_addr: mem as u64,
        flags: 0,
    };
    // SAFETY: the region maps memory we own for the lifetime of the VM.
    unsafe { vm.set_user_memory_region(region).unwrap() };
    vm.create_irq_chip().unwrap();
    let mut vcpu = vm.create_vcpu(0).unwrap();
    let mut sregs = vcpu.get_sregs().unwrap();
    sregs.cs.base = 0;
    sregs.cs.selector = 0;
    vcpu.set_sregs(&sregs).unwrap();
    let mut regs = vcpu.get_regs().unwrap();
    regs.rip = 0x1000;
    regs.rflags = 2;
    vcpu.set_regs(&regs).unwrap();
    loop {
        if let VcpuExit::IoOut(0x10, _) = vcpu.run().unwrap() {
            break;
        }
    }
    let t = start.elapsed();
    drop(vcpu);
    drop(vm);
    // SAFETY: unmapping the mapping made above, no longer used by any VM.
    unsafe { libc::munmap(mem, size) };
    t
}

fn idle_guests(n: usize) -> String {
    (0..n)
        .map(|i| {
            format!(
                "[[guest]]\nname = \"g{i}\"\nrole = \"app\"\nimage = \"idle\"\nmemory_mib = 4\n"
            )
        })
        .collect()
}

fn main() {
    if !require_kvm() {
        return;
    }
    let runs = compart_tests::bench_runs(10);

    // Bare-KVM floor.
    let kvm = Kvm::new().unwrap();
    let mut floor: Vec<f64> = (0..runs)
        .map(|_| bare_kvm_first_output(&kvm).as_secs_f64() * 1e3)
        .collect();

    // compart: default topology, time to every guest's first line.
    let t = idle_topology();
    let mut per_guest: Vec<f64> = Vec::new();
    let mut all_up: Vec<f64> = Vec::new();
    let mut single: Vec<f64> = Vec::new();
    let rss_before = status_kib("VmRSS:");
    let mut rss_booted = 0;
    for run in 0..runs {
        let capture = Capture::default();
        let start = Instant::now();
        let vmm = compart_vmm::start(&t, capture.sink()).unwrap();
        capture.wait_until(Duration::from_secs(20), "five first lines", |ls| {
            t.guests
                .iter()
                .all(|g| ls.iter().any(|l| l.guest == g.name))
        });
        if run == 0 {
            rss_booted = status_kib("VmRSS:");
        }
        let lines = capture.lines();
        let firsts: Vec<f64> = t
            .guests
            .iter()
            .map(|g| {
                let l = lines.iter().find(|l| l.guest == g.name).unwrap();
                l.at.duration_since(start).as_secs_f64() * 1e3
            })
            .collect();
        all_up.push(firsts.iter().cloned().fold(0.0, f64::max));
        per_guest.extend(firsts);
        vmm.handle().stop();
        vmm.wait();
    }
    let one = topology(&idle_guests(1));
    for _ in 0..runs {
        let capture = Capture::default();
        let start = Instant::now();
        let vmm = compart_vmm::start(&one, capture.sink()).unwrap();
        capture.wait_until(Duration::from_secs(20), "first line", |ls| !ls.is_empty());
        single.push(capture.lines()[0].at.duration_since(start).as_secs_f64() * 1e3);
        vmm.handle().stop();
        vmm.wait();
    }

    // Host memory per guest: slope between 1 and N running idle guests.
    let mut mem_points = Vec::new();
    for n in [1usize, 16, 64] {
        let topo = topology(&idle_guests(n));
        let capture = Capture::default();
        let avail0 = mem_available_kib();
        let rss0 = status_kib("VmRSS:");
        let vmm = compart_vmm::start(&topo, capture.sink()).unwrap();
        capture.wait_until(Duration::from_secs(60), "every first line", |ls| {
            ls.len() >= n
        });
        std::thread::sleep(Duration::from_millis(200));
        let rss = status_kib("VmRSS:").saturating_sub(rss0);
        let avail = avail0.saturating_sub(mem_available_kib());
        vmm.handle().stop();
        vmm.wait();
        mem_points.push((n, rss, avail));
    }
    let (n0, r0, a0) = mem_points[0];
    let (n1, r1, a1) = *mem_points.last().unwrap();
    let rss_slope = (r1 as f64 - r0 as f64) / (n1 - n0) as f64;
    let avail_slope = (a1 as f64 - a0 as f64) / (n1 - n0) as f64;

    println!("boot benchmark ({runs} runs each, ms)");
    println!(
        "  bare KVM floor: VM + 4 MiB + vCPU to first port write   p50 {:7.3}  p90 {:7.3}",
        percentile(&mut floor, 0.5),
        percentile(&mut floor, 0.9)
    );
    println!(
        "  compart, 1 idle guest: start to first console line     p50 {:7.3}  p90 {:7.3}",
        percentile(&mut single, 0.5),
        percentile(&mut single, 0.9)
    );
    println!(
        "  compart, default topology: each guest's first line     p50 {:7.3}  p90 {:7.3}",
        percentile(&mut per_guest, 0.5),
        percentile(&mut per_guest, 0.9)
    );
    println!(
        "  compart, default topology: all five guests up          p50 {:7.3}  p90 {:7.3}",
        percentile(&mut all_up, 0.5),
        percentile(&mut all_up, 0.9)
    );
    println!("memory");
    println!(
        "  VMM resident: {rss_before} KiB before start, {rss_booted} KiB with the default topology running"
    );
    for (n, rss, avail) in &mem_points {
        println!("  {n:3} idle guests (4 MiB each): +{rss} KiB resident, +{avail} KiB host memory in use");
    }
    println!(
        "  per guest: {rss_slope:.0} KiB resident, {avail_slope:.0} KiB host memory (slope {n0}→{n1} guests)"
    );
}
