//! `compart eval all --quick`, end to end: every figure's CSV has its header and two
//! rows, each with a measured throughput above zero and no failure; every SVG is
//! well-formed XML with the figure's title, axes and legend; the summary checks the
//! thesis's findings.

use std::path::Path;
use std::process::Command;

use compart_vmm::eval::{CSV_HEADER, FIGURES};

/// A CSV line's fields (quoted fields may hold commas and doubled quotes).
fn fields(line: &str) -> Vec<String> {
    let mut out = vec![String::new()];
    let mut quoted = false;
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        match (c, quoted) {
            ('"', true) if chars.peek() == Some(&'"') => {
                chars.next();
                out.last_mut().unwrap().push('"');
            }
            ('"', _) => quoted = !quoted,
            (',', false) => out.push(String::new()),
            (c, _) => out.last_mut().unwrap().push(c),
        }
    }
    out
}

fn check_csv(path: &Path, fig: &str) {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut lines = text.lines();
    assert_eq!(lines.next(), Some(CSV_HEADER), "{}", path.display());
    let header: Vec<&str> = CSV_HEADER.split(',').collect();
    let col = |name: &str| header.iter().position(|h| *h == name).unwrap();
    let rows: Vec<Vec<String>> = lines.map(fields).collect();
    assert_eq!(rows.len(), 2, "{fig}: two points with --quick: {text}");
    for r in &rows {
        assert_eq!(
            r.len(),
            header.len(),
            "{fig}: a row of {} fields: {r:?}",
            r.len()
        );
        assert_eq!(r[col("figure")], fig);
        assert!(r[col("failure")].is_empty(), "{fig}: a point failed: {r:?}");
        let gbps: f64 = r[col("gbps_mean")].parse().unwrap();
        assert!(gbps > 0.0, "{fig}: no throughput measured: {r:?}");
        assert_eq!(r[col("reps")], "1");
        let runs: Vec<f64> = r[col("gbps_runs")]
            .split_whitespace()
            .map(|x| x.parse().unwrap())
            .collect();
        assert!(runs.len() == 1 && runs[0] > 0.0, "{fig}: {r:?}");
        assert!(r[col("tuple_mhz")].ends_with(" MHz"), "{fig}: {r:?}");
        assert!(
            r[col("busy")].contains("tcp="),
            "{fig}: per-server busy time: {r:?}"
        );
    }
}

fn check_svg(path: &Path, fig: &str) {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let doc = roxmltree::Document::parse(&text)
        .unwrap_or_else(|e| panic!("{}: not well-formed XML: {e}", path.display()));
    let root = doc.root_element();
    assert_eq!(root.tag_name().name(), "svg");
    let texts: Vec<String> = root
        .descendants()
        .filter(|n| n.has_tag_name("text"))
        .filter_map(|n| n.text().map(str::to_string))
        .collect();
    assert!(
        texts
            .iter()
            .any(|t| t.starts_with(&format!("Figure {fig}"))),
        "{fig}: a title: {texts:?}"
    );
    assert!(
        texts
            .iter()
            .any(|t| t.contains("Gbit/s") || t.contains('%')),
        "{fig}: an axis with its unit: {texts:?}"
    );
    assert!(
        texts.iter().any(|t| t.contains("±1 sd")),
        "{fig}: the legend: {texts:?}"
    );
    let marks = root
        .descendants()
        .filter(|n| n.has_tag_name("rect") || n.has_tag_name("circle"))
        .count();
    assert!(marks > 2, "{fig}: bars or points drawn");
}

compart_tests::kvm_test! {
    fn eval_all_quick_measures_every_figure_and_writes_csv_and_svg() {
        if !compart_tests::netns::require_netns() {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let out = Command::new(env!("CARGO_BIN_EXE_compart"))
            .args(["eval", "all", "--quick", "--out"])
            .arg(dir.path())
            .output()
            .expect("compart runs");
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "compart eval all --quick: {stdout}\n{stderr}");
        for (fig, _) in FIGURES {
            check_csv(&dir.path().join(format!("{fig}.csv")), fig);
            check_svg(&dir.path().join(format!("{fig}.svg")), fig);
        }
        let summary = std::fs::read_to_string(dir.path().join("summary.txt")).unwrap();
        assert_eq!(stdout, summary);
        for finding in [
            "[4.1] bounding server: ",
            "[4.1] a server below fmax raises throughput: ",
            "[4.3] lowest tuple keeping the base: ",
            "[4.4] posix sharing a core with the application: ",
            "[4.6] bounding server: ",
            "[4.8] ",
        ] {
            assert!(summary.contains(finding), "the summary checks `{finding}`: {summary}");
        }
        // The namespace is gone with the last stack.
        assert!(!Path::new("/run/netns/cpt-eval").exists());
    }
}
