//! The `compart` command.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use compart_vmm::{console, host_facts, logger, topology::core_list, Topology};

/// Runs an operating system's network stack as isolated servers, each a tiny pinned
/// KVM guest.
#[derive(Debug, Parser)]
#[command(name = "compart", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Boot every guest of a topology and run until they end or Ctrl-C / SIGTERM.
    Run {
        /// The topology file (TOML).
        topology: PathBuf,
        /// Serve a control socket here (for `compart ctl`).
        #[arg(long)]
        control: Option<PathBuf>,
    },
    /// Ask a running `compart run --control SOCKET` to move a guest, report, or stop.
    Ctl {
        /// The control socket.
        socket: PathBuf,
        #[command(subcommand)]
        command: CtlCommand,
    },
    /// Check a topology file against this host without starting anything.
    Validate {
        /// The topology file (TOML).
        topology: PathBuf,
    },
    /// List the guest images built into this binary.
    Images,
    /// Inspect the ACPI tables the VMM gives its guests.
    Acpi {
        #[command(subcommand)]
        command: AcpiCommand,
    },
}

#[derive(Debug, Subcommand)]
enum CtlCommand {
    /// Move every vCPU of a guest onto host cores (re-pin, update its placement page,
    /// kick it, adapt halt polling).
    Move {
        /// The guest.
        guest: String,
        /// Host cores, like `0` or `0,1` or `0-1`.
        #[arg(long)]
        cores: String,
    },
    /// Per guest and vCPU: thread, cores, placement, P-state, exits, channel queues.
    Status,
    /// Stop every guest.
    Stop,
}

#[derive(Debug, Subcommand)]
enum AcpiCommand {
    /// Write one guest's tables (rsdp.dat, xsdt.dat, facp.dat, apic.dat, dsdt.dat) as
    /// files ACPICA reads (`iasl -d dsdt.dat`, `acpiexec -b … dsdt.dat`).
    Dump {
        /// The topology file (TOML).
        topology: PathBuf,
        /// The guest whose tables to write.
        #[arg(long)]
        guest: String,
        /// Directory to write them to (created if missing).
        #[arg(long)]
        out: PathBuf,
    },
}

fn main() -> ExitCode {
    logger::init();
    let cli = Cli::parse();
    match cli.command {
        Command::Validate { topology } => match Topology::load(&topology, &host_facts()) {
            Ok(t) => {
                println!("{}: valid", topology.display());
                println!("host cores: {}", core_list(&t.host_cores));
                for g in &t.guests {
                    let cores: Vec<String> = g.vcpu_cores.iter().map(|c| core_list(c)).collect();
                    println!(
                        "guest {:<12} role {:<6} image {:<20} {:>4} MiB  vCPUs {} on cores [{}]  on failure: {:?}",
                        g.name,
                        g.role.as_str(),
                        g.image.to_string(),
                        g.memory_mib,
                        g.vcpus(),
                        cores.join("; "),
                        g.on_failure
                    );
                }
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("compart: {e}");
                ExitCode::FAILURE
            }
        },
        Command::Images => {
            for name in compart_vmm::images::builtin_names() {
                println!("{name}");
            }
            ExitCode::SUCCESS
        }
        Command::Run { topology, control } => run(topology, control),
        Command::Ctl { socket, command } => {
            let request = match command {
                CtlCommand::Move { guest, cores } => format!("move {guest} {cores}"),
                CtlCommand::Status => "status".into(),
                CtlCommand::Stop => "stop".into(),
            };
            match compart_vmm::control::send(&socket, &request) {
                Ok(body) => {
                    println!("{body}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("compart: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Acpi {
            command:
                AcpiCommand::Dump {
                    topology,
                    guest,
                    out,
                },
        } => acpi_dump(&topology, &guest, &out),
    }
}

fn acpi_dump(path: &std::path::Path, guest: &str, out: &std::path::Path) -> ExitCode {
    let topology = match Topology::load(path, &host_facts()) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("compart: {e}");
            return ExitCode::FAILURE;
        }
    };
    let Some(g) = topology.guests.iter().find(|g| g.name == guest) else {
        let names: Vec<&str> = topology.guests.iter().map(|g| g.name.as_str()).collect();
        eprintln!(
            "compart: {}: no guest `{guest}` (guests: {})",
            path.display(),
            names.join(", ")
        );
        return ExitCode::FAILURE;
    };
    let tables = match compart_vmm::acpi::guest_tables(&topology, g) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("compart: {e}");
            return ExitCode::FAILURE;
        }
    };
    let written =
        std::fs::create_dir_all(out).and_then(|()| compart_acpi::write_dump(&tables, out));
    match written {
        Ok(files) => {
            for f in files {
                println!("{}", f.display());
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("compart: writing tables to {}: {e}", out.display());
            ExitCode::FAILURE
        }
    }
}

fn run(path: PathBuf, control: Option<PathBuf>) -> ExitCode {
    let topology = match Topology::load(&path, &host_facts()) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("compart: {e}");
            return ExitCode::FAILURE;
        }
    };
    let vmm = match compart_vmm::start(&topology, console::stdout_sink()) {
        Ok(v) => v,
        Err(e) => {
            eprintln!("compart: {e}");
            return ExitCode::FAILURE;
        }
    };
    log::info!(
        "{} guest(s) started from {}; Ctrl-C stops them",
        topology.guests.len(),
        path.display()
    );
    let _control = match control {
        Some(p) => match compart_vmm::control::ControlServer::start(&p, vmm.handle()) {
            Ok(s) => {
                log::info!("control socket at {}", p.display());
                Some(s)
            }
            Err(e) => {
                eprintln!(
                    "compart: cannot serve the control socket {}: {e}",
                    p.display()
                );
                vmm.handle().stop();
                vmm.wait();
                return ExitCode::FAILURE;
            }
        },
        None => None,
    };
    let stopper = vmm.handle();
    match signal_hook::iterator::Signals::new([libc::SIGINT, libc::SIGTERM]) {
        Ok(mut signals) => {
            std::thread::spawn(move || {
                let mut count = 0;
                for sig in signals.forever() {
                    count += 1;
                    if count > 1 {
                        eprintln!("compart: second signal {sig}: exiting without waiting");
                        std::process::exit(130);
                    }
                    stopper.stop();
                }
            });
        }
        Err(e) => log::warn!("cannot handle SIGINT/SIGTERM ({e}); stop compart with SIGKILL"),
    }
    let outcome = vmm.wait();
    for (name, state) in &outcome.guests {
        log::info!("guest {name}: {state:?}");
    }
    ExitCode::from(outcome.exit_code() as u8)
}
