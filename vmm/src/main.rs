//! The `compart` command.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use compart_vmm::host::{core_list, parse_core_list};
use compart_vmm::{console, host_facts, logger, ControlRequest, ControlResponse, Topology};

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
    /// Run the experiment behind a figure of the thesis (4.1 … 4.8, or `all`) on this
    /// host: writes FIGURE.csv, FIGURE.svg and summary.txt.
    Eval {
        /// 4.1 … 4.8, or all.
        figure: String,
        /// Directory for the CSV and SVG files (created if missing).
        #[arg(long, default_value = "eval-out")]
        out: PathBuf,
        /// Two points a figure, 2-second runs, one repetition (for CI).
        #[arg(long)]
        quick: bool,
        /// A base topology instead of the built-in stacks (needs an iperf3 server app
        /// and a NIC in a netns).
        #[arg(long)]
        topology: Option<PathBuf>,
        /// Repetitions of each point (default 3, --quick 1).
        #[arg(long)]
        reps: Option<u32>,
        /// Seconds of each iperf3 run (default 3, --quick 2).
        #[arg(long)]
        secs: Option<u32>,
        /// P-states in the ladder, fmax down to 0.42·fmax (default 5; --quick 2).
        #[arg(long, default_value_t = 5)]
        steps: u32,
    },
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
    /// Lower or raise a guest's performance limit `_PPC` (the fastest P-state it may
    /// request) and notify it; its firmware's P-state driver requests a state within
    /// the limit through PERF_CTL. Prints the state each vCPU then runs at; fails if
    /// the guest does not follow within 2 s.
    Pstate {
        /// The guest.
        guest: String,
        /// The new limit: a P-state index (0 = P0, no limit).
        #[arg(long)]
        ppc: usize,
        /// Print the answer as JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Per guest and vCPU: thread, cores, placement, P-state, exits, channel queues
    /// (depth now and totals), events the guest caused.
    Status {
        /// Print the report as JSON instead of text.
        #[arg(long)]
        json: bool,
    },
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
    match try_main(Cli::parse()) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("compart: {}", chain(e.as_ref()));
            ExitCode::FAILURE
        }
    }
}

/// An error and every cause behind it: `what failed: because: because`.
fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// A message of the command itself (not a library error).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct Message(String);

type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

fn try_main(cli: Cli) -> Result<ExitCode> {
    match cli.command {
        Command::Validate { topology } => {
            let t = Topology::load(&topology, &host_facts())?;
            println!("{}: valid", topology.display());
            println!("host cores: {}", core_list(&t.host_cores));
            for g in &t.guests {
                let cores: Vec<String> = g.vcpu_cores.iter().map(|c| core_list(c)).collect();
                println!(
                    "guest {:<12} role {:<6} image {:<20} {:>4} MiB  vCPUs {} on cores [{}]  on failure: {}",
                    g.name,
                    g.role.as_str(),
                    g.image.to_string(),
                    g.memory_mib,
                    g.vcpus(),
                    cores.join("; "),
                    g.on_failure
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Images => {
            for name in compart_vmm::images::builtin_names() {
                println!("{name}");
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Run { topology, control } => run(topology, control),
        Command::Eval {
            figure,
            out,
            quick,
            topology,
            reps,
            secs,
            steps,
        } => eval(&figure, out, quick, topology, reps, secs, steps),
        Command::Ctl { socket, command } => {
            let (request, json) = match command {
                CtlCommand::Move { guest, cores } => {
                    let cores = parse_core_list(&cores)
                        .filter(|c| !c.is_empty())
                        .ok_or_else(|| {
                            Message(format!("`{cores}` is not a core list (like 0,1 or 0-1)"))
                        })?;
                    (ControlRequest::Move { guest, cores }, false)
                }
                CtlCommand::Pstate { guest, ppc, json } => {
                    (ControlRequest::SetPpc { guest, ppc }, json)
                }
                CtlCommand::Status { json } => (ControlRequest::Status, json),
                CtlCommand::Stop => (ControlRequest::Stop, false),
            };
            let response = compart_vmm::control::send(&socket, &request)?;
            match (&response, json) {
                (ControlResponse::Status(report), true) => {
                    println!("{}", serde_json::to_string_pretty(report)?)
                }
                (ControlResponse::PState(report), true) => {
                    println!("{}", serde_json::to_string_pretty(report)?)
                }
                _ => println!("{response}"),
            }
            Ok(ExitCode::SUCCESS)
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

fn eval(
    figure: &str,
    out: PathBuf,
    quick: bool,
    topology: Option<PathBuf>,
    reps: Option<u32>,
    secs: Option<u32>,
    steps: u32,
) -> Result<ExitCode> {
    use compart_vmm::eval;
    if std::env::var_os("COMPART_LOG").is_none() {
        // Each point starts and stops a stack; its info lines would bury the progress.
        log::set_max_level(log::LevelFilter::Warn);
    }
    let figures = eval::Plan::figures_of(figure).ok_or_else(|| {
        let ids: Vec<&str> = eval::FIGURES.iter().map(|f| f.0).collect();
        Message(format!(
            "no figure `{figure}` (figures: {}, or all)",
            ids.join(", ")
        ))
    })?;
    if !(2..=16).contains(&steps) {
        return Err(Message(format!("--steps {steps}: a ladder has 2 to 16 P-states")).into());
    }
    let base_topology = match &topology {
        Some(p) => Some(
            std::fs::read_to_string(p)
                .map_err(|e| Message(format!("reading {}: {e}", p.display())))?,
        ),
        None => None,
    };
    let plan = eval::Plan {
        figures,
        quick,
        base_topology,
        steps,
    };
    let opts = eval::Options {
        secs: secs.unwrap_or(if quick { 2 } else { 3 }).max(1),
        omit: 1,
        reps: reps.unwrap_or(if quick { 1 } else { 3 }).max(1),
        out,
    };
    let stop = eval::stop_flag()?;
    match eval::run(&plan, opts, stop) {
        Ok(summary) => {
            print!("{summary}");
            Ok(ExitCode::SUCCESS)
        }
        Err(eval::EvalError::Interrupted) => {
            eprintln!("compart eval: interrupted; the CSVs hold the points measured so far");
            Ok(ExitCode::from(130))
        }
        Err(e) => Err(e.into()),
    }
}

fn acpi_dump(path: &std::path::Path, guest: &str, out: &std::path::Path) -> Result<ExitCode> {
    let topology = Topology::load(path, &host_facts())?;
    let Some(g) = topology.guests.iter().find(|g| g.name == guest) else {
        let names: Vec<&str> = topology.guests.iter().map(|g| g.name.as_str()).collect();
        return Err(Message(format!(
            "{}: no guest `{guest}` (guests: {})",
            path.display(),
            names.join(", ")
        ))
        .into());
    };
    let tables = compart_vmm::acpi::guest_tables(&topology, g)?;
    let files = std::fs::create_dir_all(out)
        .and_then(|()| compart_acpi::write_dump(&tables, out))
        .map_err(|e| Message(format!("writing tables to {}: {e}", out.display())))?;
    for f in files {
        println!("{}", f.display());
    }
    Ok(ExitCode::SUCCESS)
}

fn run(path: PathBuf, control: Option<PathBuf>) -> Result<ExitCode> {
    let topology = Topology::load(&path, &host_facts())?;
    let vmm = compart_vmm::start(&topology, console::stdout_sink())?;
    log::info!(
        "{} guest(s) started from {}; Ctrl-C stops them",
        topology.guests.len(),
        path.display()
    );
    for hint in compart_vmm::host_net::reach_hints(&topology) {
        eprintln!("compart: {hint}");
    }
    let _control = match control {
        Some(p) => match compart_vmm::control::ControlServer::start(&p, vmm.handle()) {
            Ok(s) => {
                log::info!("control socket at {}", p.display());
                Some(s)
            }
            Err(e) => {
                vmm.handle().stop();
                vmm.wait();
                return Err(Message(format!(
                    "cannot serve the control socket {}: {e}",
                    p.display()
                ))
                .into());
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
        log::info!("guest {name}: {state}");
    }
    Ok(ExitCode::from(outcome.exit_code() as u8))
}
