//! The figures: which points each measures, its plot, and the thesis's findings it
//! checks.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Instant;

use super::measure::mean_sd;
use super::runner::{EvalError, Measured, Options, Runner};
use super::stack::{default_ladder, Config, Stack, BASE_NO_PF, BASE_PF};
use super::svg::{bar_plot, line_plot, Category, Frame, Line};
use super::{CsvFile, TOLERANCE};

/// The figures, with what each shows.
pub const FIGURES: [(&str, &str); 8] = [
    ("4.1", "throughput vs the frequency of one server at a time"),
    (
        "4.2",
        "vCPU busy time of each server vs the ip server's frequency",
    ),
    (
        "4.3",
        "throughput of frequency tuples: base, lowest keeping the base, all at fmin",
    ),
    ("4.4", "consolidation: servers sharing cores"),
    ("4.5", "consolidation with frequency scaling"),
    (
        "4.6",
        "throughput vs the frequency of one server at a time, pf in the path",
    ),
    ("4.7", "throughput of frequency tuples, pf in the path"),
    (
        "4.8",
        "two servers sharing one core (hardware threads where the host has them)",
    ),
];

/// What to run.
#[derive(Debug, Clone)]
pub struct Plan {
    /// Figure ids, in order.
    pub figures: Vec<&'static str>,
    /// Two points a figure, no search.
    pub quick: bool,
    /// A base topology's text instead of the built-in ones.
    pub base_topology: Option<String>,
    /// P-states of the ladder eval writes (when the base has none).
    pub steps: u32,
}

impl Plan {
    /// The figures `name` selects: one id, or `all`.
    pub fn figures_of(name: &str) -> Option<Vec<&'static str>> {
        if name == "all" {
            return Some(FIGURES.iter().map(|f| f.0).collect());
        }
        let name = name.trim_start_matches("fig").trim_start_matches("ure");
        FIGURES.iter().find(|f| f.0 == name).map(|f| vec![f.0])
    }
}

/// Host cores the placements use.
#[derive(Debug, Clone, Copy)]
struct Cores {
    a: u32,
    b: u32,
    /// Two hardware threads of one core, and a core apart from them.
    smt: Option<(u32, u32, u32)>,
}

fn host_cores() -> Cores {
    let online: Vec<u32> = crate::host::online_host_cores()
        .iter()
        .map(|c| c.0)
        .collect();
    let a = online.first().copied().unwrap_or(0);
    let b = online.get(1).copied().unwrap_or(a);
    let mut smt = None;
    for &c in &online {
        let path = format!("/sys/devices/system/cpu/cpu{c}/topology/thread_siblings_list");
        let sib = std::fs::read_to_string(path)
            .ok()
            .and_then(|s| crate::host::parse_core_list(s.trim()))
            .unwrap_or_default();
        let sib: Vec<u32> = sib
            .iter()
            .map(|h| h.0)
            .filter(|s| online.contains(s))
            .collect();
        if sib.len() >= 2 {
            let other = online
                .iter()
                .copied()
                .find(|o| !sib.contains(o))
                .unwrap_or(sib[0]);
            smt = Some((sib[0], sib[1], other));
            break;
        }
    }
    Cores { a, b, smt }
}

/// One measured point of a figure.
#[derive(Debug, Clone)]
struct Row {
    series: String,
    x: f64,
    label: String,
    cfg: Config,
    m: Measured,
}

impl Row {
    fn mean(&self) -> f64 {
        mean_sd(&self.m.gbps).0
    }
    fn sd(&self) -> f64 {
        mean_sd(&self.m.gbps).1
    }
}

struct Ctx {
    runner: Runner,
    nopf: Stack,
    pf: Stack,
    cores: Cores,
    quick: bool,
    out: PathBuf,
    findings: Vec<String>,
    lowest: BTreeMap<bool, Config>,
    csv: Option<CsvFile>,
    fig: &'static str,
    rows: Vec<Row>,
}

/// Whether `m` keeps `base`'s throughput (within [`TOLERANCE`]).
fn keeps(m: f64, base: f64) -> bool {
    m >= base * (1.0 - TOLERANCE)
}

impl Ctx {
    fn stack(&self, pf: bool) -> &Stack {
        if pf {
            &self.pf
        } else {
            &self.nopf
        }
    }

    /// Measures (or recalls) a point and writes its CSV row.
    fn point(
        &mut self,
        pf: bool,
        series: &str,
        x: f64,
        label: &str,
        cfg: Config,
    ) -> Result<Row, EvalError> {
        self.point_with(pf, series, x, label, cfg, false)
    }

    /// The base measured again and pooled with its earlier runs (a CSV row of its
    /// own); the figure's rows of the base take the pooled figures.
    fn pool_base(&mut self, pf: bool, x: f64) -> Result<Row, EvalError> {
        if self.quick {
            return self
                .rows
                .iter()
                .find(|r| r.cfg == Config::base())
                .cloned()
                .ok_or_else(|| EvalError::Failed("no base point to pool".into()));
        }
        let label = "all at fmax, again: pooled with the earlier runs";
        let row = self.point_with(pf, "base (pooled)", x, label, Config::base(), true)?;
        self.rows.pop();
        for r in &mut self.rows {
            if r.cfg == Config::base() {
                r.m = row.m.clone();
            }
        }
        Ok(row)
    }

    fn point_with(
        &mut self,
        pf: bool,
        series: &str,
        x: f64,
        label: &str,
        cfg: Config,
        more: bool,
    ) -> Result<Row, EvalError> {
        let stack = self.stack(pf).clone();
        let text = stack.topology(&cfg).map_err(EvalError::Failed)?;
        let what = format!("fig {} {series}: {label}", self.fig);
        let (ns, addr, port) = (&stack.netns, &stack.addr, stack.port);
        let m = if more {
            self.runner.measure_more(&text, ns, addr, port, &what)?
        } else {
            self.runner.measure(&text, ns, addr, port, &what)?
        };
        let row = Row {
            series: series.to_string(),
            x,
            label: label.to_string(),
            cfg,
            m,
        };
        let (mean, sd) = mean_sd(&row.m.gbps);
        let min = row.m.gbps.iter().copied().fold(f64::INFINITY, f64::min);
        let max = row.m.gbps.iter().copied().fold(0.0, f64::max);
        let runs: Vec<String> = row.m.gbps.iter().map(|g| format!("{g:.4}")).collect();
        let busy: Vec<String> = row
            .m
            .busy
            .iter()
            .map(|(g, v)| {
                let (m, s) = mean_sd(v);
                format!("{g}={m:.3}±{s:.3}")
            })
            .collect();
        let scaled: Vec<String> = row
            .m
            .busy
            .iter()
            .map(|(g, v)| {
                let role = stack
                    .guests
                    .iter()
                    .find(|x| &x.0 == g)
                    .map_or("", |x| x.1.as_str());
                let share = f64::from(stack.mhz(row.cfg.pstate(role))) / f64::from(stack.mhz(0));
                format!("{g}={:.3}", mean_sd(v).0 / share)
            })
            .collect();
        let fields = vec![
            self.fig.to_string(),
            self.rows.len().to_string(),
            row.series.clone(),
            format!("{}", row.x),
            row.label.clone(),
            stack.placement_label(&row.cfg),
            stack.tuple_order(),
            stack.tuple(&row.cfg),
            row.m.gbps.len().to_string(),
            format!("{mean:.4}"),
            format!("{sd:.4}"),
            format!("{}", if min.is_finite() { min } else { 0.0 }),
            format!("{max}"),
            runs.join(" "),
            row.m.retransmits.to_string(),
            busy.join(" "),
            scaled.join(" "),
            format!("{:.2}", row.m.others_load),
            row.m.failure.clone().unwrap_or_default(),
            format!("{:.1}", row.m.wall_s),
        ];
        if let Some(csv) = &mut self.csv {
            csv.row(&fields)
                .map_err(|e| EvalError::Failed(format!("writing the CSV: {e}")))?;
        }
        self.rows.push(row.clone());
        Ok(row)
    }

    fn finding(&mut self, text: String) {
        self.findings.push(format!("[{}] {text}", self.fig));
    }

    fn subtitle(&self, extra: &str) -> String {
        let o = self.runner.options();
        format!(
            "{extra}; iperf3 -R -t {} (-O {}), {} rep(s) a point; soft-scaled cores{}",
            o.secs,
            o.omit,
            o.reps,
            if self.quick { "; --quick" } else { "" }
        )
    }

    fn write_svg(&self, svg: &str) -> Result<(), EvalError> {
        let p = self.out.join(format!("{}.svg", self.fig));
        std::fs::write(&p, svg)
            .map_err(|e| EvalError::Failed(format!("writing {}: {e}", p.display())))
    }
}

/// Runs the figures of `plan`; returns the summary of findings (also written to
/// `OUT/summary.txt`).
pub fn run(plan: &Plan, opts: Options, stop: Arc<AtomicBool>) -> Result<String, EvalError> {
    std::fs::create_dir_all(&opts.out)
        .map_err(|e| EvalError::Failed(format!("creating {}: {e}", opts.out.display())))?;
    let ok = std::process::Command::new("iperf3")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        return Err(EvalError::Failed(
            "stock iperf3 is not installed (apt-get install iperf3)".into(),
        ));
    }
    let fmax = crate::host_facts().host_ladder.p0().frequency.0;
    let ladder = default_ladder(fmax, if plan.quick { 2 } else { plan.steps });
    let (nopf, pf) = match &plan.base_topology {
        Some(t) => {
            let s = Stack::new(t, &ladder).map_err(EvalError::Failed)?;
            (s.clone(), s)
        }
        None => (
            Stack::new(BASE_NO_PF, &ladder).map_err(EvalError::Failed)?,
            Stack::new(BASE_PF, &ladder).map_err(EvalError::Failed)?,
        ),
    };
    let planned: usize = plan
        .figures
        .iter()
        .map(|f| {
            planned_points(
                f,
                plan.quick,
                nopf.servers().len(),
                pf.servers().len(),
                nopf.ladder.len(),
            )
        })
        .sum();
    let out = opts.out.clone();
    let mut ctx = Ctx {
        runner: Runner::new(opts, stop, planned),
        nopf,
        pf,
        cores: host_cores(),
        quick: plan.quick,
        out: out.clone(),
        findings: Vec::new(),
        lowest: BTreeMap::new(),
        csv: None,
        fig: "",
        rows: Vec::new(),
    };
    let mut walls = Vec::new();
    let mut result = Ok(());
    for &fig in &plan.figures {
        ctx.fig = fig;
        ctx.rows.clear();
        let path = out.join(format!("{fig}.csv"));
        ctx.csv = Some(
            CsvFile::create(&path)
                .map_err(|e| EvalError::Failed(format!("creating {}: {e}", path.display())))?,
        );
        let t0 = Instant::now();
        let r = match fig {
            "4.1" => sweep(&mut ctx, false),
            "4.6" => sweep(&mut ctx, true),
            "4.2" => cpu(&mut ctx),
            "4.3" => tuples(&mut ctx, false),
            "4.7" => tuples(&mut ctx, true),
            "4.4" => consolidation(&mut ctx),
            "4.5" => consolidation_scaled(&mut ctx),
            "4.8" => threads(&mut ctx),
            _ => Err(EvalError::Failed(format!("no figure {fig}"))),
        };
        walls.push((fig, t0.elapsed().as_secs_f64(), ctx.rows.len()));
        ctx.csv = None;
        if let Err(e) = r {
            result = Err(e);
            break;
        }
    }
    ctx.runner.progress.clear();
    let mut s = String::new();
    let _ = writeln!(
        s,
        "compart eval: summary of findings{}",
        if plan.quick { " (--quick)" } else { "" }
    );
    let _ = writeln!(
        s,
        "ladder: {} MHz (soft scaling); tolerance for \"keeps the base\": {:.0} %",
        ctx.nopf
            .ladder
            .iter()
            .map(|m| m.to_string())
            .collect::<Vec<_>>()
            .join(", "),
        TOLERANCE * 100.0
    );
    for f in &ctx.findings {
        let _ = writeln!(s, "{f}");
    }
    for (fig, secs, n) in &walls {
        let _ = writeln!(s, "figure {fig}: {n} point(s), wall time {secs:.0} s");
    }
    if let Err(e) = std::fs::write(out.join("summary.txt"), &s) {
        log::warn!("writing {}: {e}", out.join("summary.txt").display());
    }
    result.map(|()| s)
}

fn planned_points(
    fig: &str,
    quick: bool,
    servers: usize,
    pf_servers: usize,
    steps: usize,
) -> usize {
    if quick {
        return 2;
    }
    match fig {
        "4.1" => 1 + servers * (steps - 1),
        "4.6" => 1 + pf_servers * (steps - 1),
        "4.2" => steps,
        "4.3" => 5,
        "4.7" => 7,
        "4.4" => 6,
        "4.5" => 5,
        _ => 2,
    }
}

fn mhz_series(stack: &Stack, rows: &[Row]) -> Vec<Line> {
    let base = rows.iter().rev().find(|r| r.series == "base");
    stack
        .servers()
        .iter()
        .filter_map(|s| {
            let mut points: Vec<(f64, f64, f64)> =
                base.iter().map(|b| (b.x, b.mean(), b.sd())).collect();
            points.extend(
                rows.iter()
                    .filter(|r| r.series == *s)
                    .map(|r| (r.x, r.mean(), r.sd())),
            );
            (points.len() > 1).then(|| Line {
                name: format!("{s} scaled"),
                points,
            })
        })
        .collect()
}

/// 4.1 / 4.6: each server in turn at each P-state, the others at fmax.
fn sweep(ctx: &mut Ctx, pf: bool) -> Result<(), EvalError> {
    let stack = ctx.stack(pf).clone();
    let fmax = stack.mhz(0);
    ctx.point(pf, "base", f64::from(fmax), "all at fmax", Config::base())?;
    let mut points = Vec::new();
    for s in stack.servers() {
        for p in 1..=stack.pmin() {
            points.push((s, p));
        }
    }
    if ctx.quick {
        let first = if pf { "ip" } else { "tcp" };
        points = vec![(first, stack.pmin())];
    }
    for (s, p) in points {
        let mhz = stack.mhz(p);
        ctx.point(
            pf,
            s,
            f64::from(mhz),
            &format!("{s} at {mhz} MHz"),
            Config::base().at(s, p),
        )?;
    }
    let base = ctx.pool_base(pf, f64::from(fmax))?;
    let frame = Frame {
        title: format!(
            "Figure {}: throughput vs frequency of one server{}",
            ctx.fig,
            if pf { " (pf in the path)" } else { "" }
        ),
        subtitle: ctx.subtitle(&format!(
            "others at {fmax} MHz; placement {}",
            stack.placement_label(&Config::base())
        )),
        x_label: "frequency of the scaled server (MHz)".into(),
        y_label: "throughput (Gbit/s)".into(),
    };
    let svg = line_plot(&frame, &mhz_series(&stack, &ctx.rows));
    ctx.write_svg(&svg)?;
    // Findings: which server bounds throughput; does one below fmax raise it.
    let b = base.mean();
    let pmin_mhz = f64::from(stack.mhz(stack.pmin()));
    let mut at_min: Vec<(String, f64)> = ctx
        .rows
        .iter()
        .filter(|r| r.series != "base" && r.x == pmin_mhz)
        .map(|r| (r.series.clone(), r.mean()))
        .collect();
    at_min.sort_by(|x, y| x.1.total_cmp(&y.1));
    if let Some((s, t)) = at_min.first() {
        let list: Vec<String> = at_min
            .iter()
            .map(|(s, t)| format!("{s} {:.0} %", t / b.max(1e-9) * 100.0))
            .collect();
        ctx.finding(format!(
            "bounding server: {s} (at fmin {pmin_mhz} MHz it leaves {t:.2} of the base's {b:.2} Gbit/s; each server at fmin: {})",
            list.join(", ")
        ));
    }
    let busiest = base
        .m
        .busy
        .iter()
        .filter(|(g, _)| stack.servers().contains(&g.as_str()))
        .map(|(g, v)| (g.clone(), mean_sd(v).0))
        .max_by(|x, y| x.1.total_cmp(&y.1));
    if let Some((g, u)) = busiest {
        ctx.finding(format!(
            "busiest server vCPU at the base: {g} ({:.0} % of a core)",
            u * 100.0
        ));
    }
    let best = ctx
        .rows
        .iter()
        .filter(|r| r.series != "base" && r.m.failure.is_none())
        .max_by(|x, y| x.mean().total_cmp(&y.mean()));
    if let Some(r) = best {
        let raises = r.mean() > b * (1.0 + TOLERANCE) && r.mean() - r.sd() > b + base.sd();
        ctx.finding(format!(
            "a server below fmax raises throughput: {} (best: {} with {:.2} ± {:.2} Gbit/s vs base {:.2} ± {:.2})",
            if raises { "yes" } else { "no" },
            r.label,
            r.mean(),
            r.sd(),
            b,
            base.sd()
        ));
    }
    Ok(())
}

/// 4.2: every guest's vCPU busy time with ip at each P-state.
fn cpu(ctx: &mut Ctx) -> Result<(), EvalError> {
    let stack = ctx.nopf.clone();
    let ps: Vec<u32> = if ctx.quick {
        vec![0, stack.pmin()]
    } else {
        (0..=stack.pmin()).collect()
    };
    for p in ps {
        let mhz = stack.mhz(p);
        let series = if p == 0 { "base" } else { "ip" };
        ctx.point(
            false,
            series,
            f64::from(mhz),
            &format!("ip at {mhz} MHz"),
            Config::base().at("ip", p),
        )?;
    }
    // A soft-scaled core at f offers f/fmax of a core: busy time over that share is
    // the CPU use a core at that frequency would show.
    let share =
        |r: &Row, role: &str| f64::from(stack.mhz(r.cfg.pstate(role))) / f64::from(stack.mhz(0));
    let busy = |r: &Row, g: &str| {
        r.m.busy
            .iter()
            .find(|b| b.0 == g)
            .map(|b| mean_sd(&b.1))
            .unwrap_or((0.0, 0.0))
    };
    let names: Vec<String> = stack.guests.iter().map(|g| g.0.clone()).collect();
    let cats: Vec<Category> = ctx
        .rows
        .iter()
        .map(|r| Category {
            label: format!("{} ({:.2} Gbit/s)", r.label, r.mean()),
            bars: stack
                .guests
                .iter()
                .map(|(g, role)| {
                    let (m, s) = busy(r, g);
                    let f = share(r, role);
                    (m / f * 100.0, s / f * 100.0)
                })
                .collect(),
        })
        .collect();
    let frame = Frame {
        title: "Figure 4.2: CPU use of each server vs the ip server's frequency".into(),
        subtitle: ctx.subtitle(&format!(
            "vCPU thread CPU time over what its soft-scaled core offers; placement {}",
            stack.placement_label(&Config::base())
        )),
        x_label: "vCPU busy (% of its core at its frequency)".into(),
        y_label: String::new(),
    };
    ctx.write_svg(&bar_plot(&frame, &names, &cats, None))?;
    for r in ctx.rows.clone() {
        let ip = busy(&r, "ip").0;
        ctx.finding(format!(
            "{}: ip busy {:.0} % of its core ({:.0} % of a full-speed one), tcp {:.0} %, {:.2} Gbit/s",
            r.label,
            ip / share(&r, "ip") * 100.0,
            ip * 100.0,
            busy(&r, "tcp").0 * 100.0,
            r.mean()
        ));
    }
    Ok(())
}

/// The lowest tuple that keeps `base`: each server's own floor (lowest P-state that
/// keeps the base with the others at fmax), together; while that tuple loses the
/// base, the slowest server of it goes one P-state up.
fn search(ctx: &mut Ctx, pf: bool, base: f64) -> Result<Config, EvalError> {
    let stack = ctx.stack(pf).clone();
    let mut floors: Vec<(&str, u32)> = Vec::new();
    for s in stack.servers() {
        let mut floor = 0;
        for p in 1..=stack.pmin() {
            let mhz = stack.mhz(p);
            let r = ctx.point(
                pf,
                "search",
                f64::from(mhz),
                &format!("{s} at {mhz} MHz"),
                Config::base().at(s, p),
            )?;
            if r.m.failure.is_some() || !keeps(r.mean(), base) {
                break;
            }
            floor = p;
        }
        floors.push((s, floor));
    }
    for _ in 0..(stack.servers().len() as u32 * stack.pmin() + 1) {
        let cfg = floors.iter().fold(Config::base(), |c, (s, p)| c.at(s, *p));
        let r = ctx.point(
            pf,
            "search",
            0.0,
            &format!("candidate {}", stack.tuple(&cfg)),
            cfg.clone(),
        )?;
        if r.m.failure.is_none() && keeps(r.mean(), base) {
            return Ok(cfg);
        }
        // Raise the slowest server (the one furthest down; ties: the later in tuple
        // order, the lower half of the stack first).
        match floors.iter_mut().filter(|f| f.1 > 0).max_by_key(|f| f.1) {
            Some(f) => f.1 -= 1,
            None => return Ok(Config::base()),
        }
    }
    Ok(Config::base())
}

/// 4.3 / 4.7: chosen tuples, including the searched lowest one.
fn tuples(ctx: &mut Ctx, pf: bool) -> Result<(), EvalError> {
    let stack = ctx.stack(pf).clone();
    let pmin = stack.pmin();
    let all_min = stack
        .servers()
        .iter()
        .fold(Config::base(), |c, s| c.at(s, pmin));
    let base = ctx.point(pf, "tuple", 0.0, "base: all at fmax", Config::base())?;
    let mut chosen: Vec<(String, Config)> = Vec::new();
    if !ctx.quick {
        if pf {
            let but_ip = all_min.clone().at("ip", 0);
            chosen.push(("all but ip at fmin".into(), but_ip.clone()));
            chosen.push((
                "all but ip and tcp at fmin".into(),
                but_ip.clone().at("tcp", 0),
            ));
            chosen.push(("all but ip and pf at fmin".into(), but_ip.at("pf", 0)));
        } else {
            chosen.push((
                "driver and posix at fmin".into(),
                Config::base().at("driver", pmin).at("posix", pmin),
            ));
        }
        let lowest = search(ctx, pf, base.mean())?;
        ctx.lowest.insert(pf, lowest.clone());
        chosen.push(("lowest keeping the base (searched)".into(), lowest));
    }
    chosen.push(("all at fmin".into(), all_min));
    for (what, cfg) in chosen {
        ctx.point(
            pf,
            "tuple",
            0.0,
            &format!("{} ({what})", stack.tuple(&cfg)),
            cfg,
        )?;
    }
    let base = ctx.pool_base(pf, 0.0)?;
    let cats: Vec<Category> = ctx
        .rows
        .iter()
        .filter(|r| r.series == "tuple")
        .map(|r| Category {
            label: if r.label.starts_with("base") {
                format!("{} (base)", stack.tuple(&r.cfg))
            } else {
                r.label.clone()
            },
            bars: vec![(r.mean(), r.sd())],
        })
        .collect();
    let frame = Frame {
        title: format!(
            "Figure {}: frequency tuples {}{}",
            ctx.fig,
            stack.tuple_order(),
            if pf { " (pf in the path)" } else { "" }
        ),
        subtitle: ctx.subtitle(&format!(
            "placement {}",
            stack.placement_label(&Config::base())
        )),
        x_label: "throughput (Gbit/s)".into(),
        y_label: String::new(),
    };
    let svg = bar_plot(
        &frame,
        &["throughput".into()],
        &cats,
        Some((base.mean(), "base (all at fmax)".into())),
    );
    ctx.write_svg(&svg)?;
    match ctx.lowest.get(&pf).cloned() {
        Some(l) => {
            let r = ctx
                .rows
                .iter()
                .find(|r| r.label.contains("searched"))
                .cloned();
            ctx.finding(format!(
                "lowest tuple keeping the base ({}): {}{}",
                stack.tuple_order(),
                stack.tuple(&l),
                r.map(|r| format!(" with {:.2} Gbit/s vs base {:.2}", r.mean(), base.mean()))
                    .unwrap_or_default()
            ))
        }
        None => ctx.finding("lowest tuple keeping the base: not searched (--quick)".into()),
    }
    if let Some(r) = ctx
        .rows
        .iter()
        .find(|r| r.label.contains("all at fmin"))
        .cloned()
    {
        ctx.finding(format!(
            "all at fmin: {:.2} Gbit/s, {:.0} % of the base",
            r.mean(),
            r.mean() / base.mean().max(1e-9) * 100.0
        ));
    }
    Ok(())
}

fn placement_plot(ctx: &mut Ctx, title: &str, pf: bool) -> Result<(), EvalError> {
    let stack = ctx.stack(pf).clone();
    let base = ctx.rows.first().map(|r| r.mean()).unwrap_or(0.0);
    let cats: Vec<Category> = ctx
        .rows
        .iter()
        .map(|r| Category {
            label: r.label.clone(),
            bars: vec![(r.mean(), r.sd())],
        })
        .collect();
    let frame = Frame {
        title: title.to_string(),
        subtitle: ctx.subtitle(&format!(
            "'+': on one core, '|': cores apart; tuple {}",
            stack.tuple_order()
        )),
        x_label: "throughput (Gbit/s)".into(),
        y_label: String::new(),
    };
    let svg = bar_plot(
        &frame,
        &["throughput".into()],
        &cats,
        Some((base, "first bar (reference)".into())),
    );
    ctx.write_svg(&svg)
}

/// 4.4: placements where servers share cores, all at fmax.
fn consolidation(ctx: &mut Ctx) -> Result<(), EvalError> {
    let Cores { a, b, .. } = ctx.cores;
    let stack = ctx.nopf.clone();
    let placements: Vec<(&str, Config)> = vec![
        ("base", Config::base()),
        (
            "posix shares a core with the application",
            Config::base().placed(&[(&["posix", "app"], a), (&["driver", "ip", "tcp"], b)]),
        ),
        (
            "posix has a core of its own",
            Config::base().placed(&[(&["posix"], a), (&["driver", "ip", "tcp", "app"], b)]),
        ),
        (
            "driver has a core of its own",
            Config::base().placed(&[(&["driver"], a), (&["ip", "tcp", "posix", "app"], b)]),
        ),
        (
            "driver shares its core with tcp",
            Config::base().placed(&[(&["driver", "tcp"], a), (&["ip", "posix", "app"], b)]),
        ),
        (
            "all on one core",
            Config::base().placed(&[(&["driver", "ip", "tcp", "posix", "app"], a)]),
        ),
    ];
    let n = if ctx.quick { 2 } else { placements.len() };
    for (what, cfg) in placements.into_iter().take(n) {
        let label = format!("{} ({what})", stack.placement_label(&cfg));
        ctx.point(false, what, 0.0, &label, cfg)?;
    }
    ctx.pool_base(false, 0.0)?;
    placement_plot(ctx, "Figure 4.4: consolidation, all servers at fmax", false)?;
    let get = |ctx: &Ctx, s: &str| {
        ctx.rows
            .iter()
            .find(|r| r.series == s)
            .map(|r| (r.mean(), r.m.failure.is_none()))
    };
    match (
        get(ctx, "posix shares a core with the application"),
        get(ctx, "posix has a core of its own"),
    ) {
        (Some((shared, _)), Some((own, _))) => {
            let needs = !keeps(shared, own);
            ctx.finding(format!(
                "posix needs a dedicated core: {} (sharing with the application {shared:.2} Gbit/s, on its own core {own:.2})",
                if needs { "yes" } else { "no" }
            ))
        }
        (Some((shared, _)), None) => {
            let base = ctx.rows[0].mean();
            ctx.finding(format!(
                "posix sharing a core with the application: {shared:.2} Gbit/s vs base {base:.2} (--quick: not compared with posix on its own core)"
            ))
        }
        _ => {}
    }
    if let (Some((own, _)), Some((shared, _))) = (
        get(ctx, "driver has a core of its own"),
        get(ctx, "driver shares its core with tcp"),
    ) {
        ctx.finding(format!(
            "driver sharing its core with tcp: {shared:.2} Gbit/s vs driver on its own core {own:.2} ({})",
            if keeps(shared, own) { "no drop" } else { "a drop" }
        ));
    }
    if let Some(r) = ctx
        .rows
        .iter()
        .find(|r| r.series == "all on one core")
        .cloned()
    {
        ctx.finding(match &r.m.failure {
            Some(f) => format!("all on one core: failed ({f})"),
            None => format!("all on one core: {:.2} Gbit/s", r.mean()),
        });
    }
    Ok(())
}

/// 4.5: consolidated placements with some servers at low frequencies.
fn consolidation_scaled(ctx: &mut Ctx) -> Result<(), EvalError> {
    let Cores { a, b, .. } = ctx.cores;
    let stack = ctx.nopf.clone();
    let pmin = stack.pmin();
    let shared = Config::base().placed(&[(&["posix", "app"], a), (&["driver", "ip", "tcp"], b)]);
    let low = |c: Config| c.at("driver", pmin).at("posix", pmin);
    let mut points: Vec<(&str, Config)> = vec![
        (
            "base placement, driver and posix at fmin",
            low(Config::base()),
        ),
        (
            "posix with the application, driver and posix at fmin",
            low(shared.clone()),
        ),
    ];
    if !ctx.quick {
        points.insert(0, ("base", Config::base()));
        points.insert(2, ("posix with the application", shared.clone()));
        if let Some(l) = ctx.lowest.get(&false).cloned() {
            let mut c = l;
            c.placement = shared.placement.clone();
            points.push(("posix with the application, the lowest tuple of 4.3", c));
        } else {
            points.push((
                "all on one core, driver and posix at fmin",
                low(Config::base().placed(&[(&["driver", "ip", "tcp", "posix", "app"], a)])),
            ));
        }
    }
    for (what, cfg) in points {
        let label = format!(
            "{} @ {} ({what})",
            stack.placement_label(&cfg),
            stack.tuple(&cfg)
        );
        ctx.point(false, what, 0.0, &label, cfg)?;
    }
    placement_plot(
        ctx,
        "Figure 4.5: consolidation with frequency scaling",
        false,
    )?;
    let rows = ctx.rows.clone();
    for r in rows {
        ctx.finding(format!("{}: {:.2} Gbit/s", r.series, r.mean()));
    }
    Ok(())
}

/// 4.8: two servers (ip, tcp) on hardware threads of one core where the host has
/// them; here, without them, on one core vs on two.
fn threads(ctx: &mut Ctx) -> Result<(), EvalError> {
    let Cores { a, b, smt } = ctx.cores;
    let pf = ctx.pf.has("pf");
    let stack = ctx.stack(pf).clone();
    let rest: Vec<&str> = ["driver", "pf", "posix", "app"]
        .into_iter()
        .filter(|r| *r == "app" || stack.has(r))
        .collect();
    let (title, points) = match smt {
        Some((s0, s1, other)) => (
            "Figure 4.8: ip and tcp on two hardware threads of one core vs apart".to_string(),
            vec![
                ("ip and tcp on hardware threads of one core", Config::base().placed(&[(&["ip"], s0), (&["tcp"], s1), (&rest, other)])),
                ("ip and tcp on separate cores", Config::base().placed(&[(&["ip"], s0), (&["tcp"], other), (&rest, other)])),
            ],
        ),
        None => (
            "Figure 4.8 (no hardware threads on this host): ip and tcp sharing one core vs on separate cores".to_string(),
            vec![
                ("ip and tcp share one core", Config::base().placed(&[(&["ip", "tcp"], b), (&rest, a)])),
                ("ip and tcp on separate cores, ip with the rest", Config::base().placed(&[(&["ip"], a), (&["tcp"], b), (&rest, a)])),
            ],
        ),
    };
    for (what, cfg) in points {
        let label = format!("{} ({what})", stack.placement_label(&cfg));
        ctx.point(pf, what, 0.0, &label, cfg)?;
    }
    placement_plot(ctx, &title, pf)?;
    if let [s, d] = &ctx.rows[..] {
        let text = format!(
            "{}: {:.2} Gbit/s vs {}: {:.2} ({}){}",
            s.series,
            s.mean(),
            d.series,
            d.mean(),
            if keeps(s.mean(), d.mean()) {
                "sharing keeps the throughput"
            } else {
                "sharing loses throughput"
            },
            if smt.is_none() {
                "; this host has no SMT siblings, so this is the analogue"
            } else {
                ""
            }
        );
        ctx.finding(text);
    }
    Ok(())
}

/// The CSV and SVG paths of a figure.
pub fn outputs(out: &Path, fig: &str) -> (PathBuf, PathBuf) {
    (
        out.join(format!("{fig}.csv")),
        out.join(format!("{fig}.svg")),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn figure_names_select_figures() {
        assert_eq!(Plan::figures_of("all").unwrap().len(), 8);
        assert_eq!(Plan::figures_of("4.3").unwrap(), vec!["4.3"]);
        assert_eq!(Plan::figures_of("fig4.8").unwrap(), vec!["4.8"]);
        assert!(Plan::figures_of("4.9").is_none());
    }

    #[test]
    fn keeping_the_base_allows_the_tolerance() {
        assert!(keeps(0.96, 1.0));
        assert!(!keeps(0.9, 1.0));
        assert!(keeps(1.2, 1.0));
    }
}
