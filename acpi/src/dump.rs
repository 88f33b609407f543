//! Writing a guest's tables as files ACPICA reads (`iasl -d`, `acpiexec`).

use std::io;
use std::path::{Path, PathBuf};

use crate::tables::AcpiTables;

/// Writes every table of `tables` to `dir` (created if missing) as `<signature>.dat` in
/// lower case (`rsdp.dat`, `xsdt.dat`, `facp.dat`, `apic.dat`, `dsdt.dat`) and returns the
/// paths, RSDP first.
pub fn write_dump(tables: &AcpiTables, dir: &Path) -> io::Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir)?;
    tables
        .tables()
        .map(|table| {
            let path = dir.join(format!("{}.dat", table.name().to_ascii_lowercase()));
            std::fs::write(&path, table.bytes)?;
            Ok(path)
        })
        .collect()
}
