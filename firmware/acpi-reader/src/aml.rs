//! A strict reader of the AML subset the compart VMM emits in its DSDT.
//!
//! Understood: `Scope`, `Device` (walked), `Name` with integer (`Zero`, `One`, `Ones`,
//! Byte/Word/DWord/QWord prefixes), string, `Buffer` and `Package` data; `Method`,
//! legacy `Processor`, `PowerResource` and `ThermalZone` are skipped whole by their
//! PkgLength. Anything else is an error, not a guess: there is no interpreter here, so
//! `_PSS` and friends must be `Name`s (ours are).
//!
//! Every read is bounds-checked against the enclosing PkgLength; nesting is limited to
//! [`MAX_DEPTH`]. Bad input yields [`Error`], never a panic.

use crate::error::{AmlError, Error, Sig};
use crate::{Coordination, PState, Pct, Psd, MAX_PSTATES};

/// Deepest nesting of `Scope`/`Device` followed.
pub const MAX_DEPTH: usize = 16;

const ZERO_OP: u8 = 0x00;
const ONE_OP: u8 = 0x01;
const NAME_OP: u8 = 0x08;
const BYTE_PREFIX: u8 = 0x0A;
const WORD_PREFIX: u8 = 0x0B;
const DWORD_PREFIX: u8 = 0x0C;
const STRING_PREFIX: u8 = 0x0D;
const QWORD_PREFIX: u8 = 0x0E;
const SCOPE_OP: u8 = 0x10;
const BUFFER_OP: u8 = 0x11;
const PACKAGE_OP: u8 = 0x12;
const METHOD_OP: u8 = 0x14;
const DUAL_NAME_PREFIX: u8 = 0x2E;
const MULTI_NAME_PREFIX: u8 = 0x2F;
const EXT_OP_PREFIX: u8 = 0x5B;
const DEVICE_OP: u8 = 0x82;
const PROCESSOR_OP: u8 = 0x83;
const POWER_RES_OP: u8 = 0x84;
const THERMAL_ZONE_OP: u8 = 0x85;
const ONES_OP: u8 = 0xFF;

// Generic Register descriptor (ACPI 6.5 §6.4.3.7, the contract's values) and End Tag.
use compart_abi::acpi::generic_register::{
    DESCRIPTOR as REGISTER_DESCRIPTOR, LENGTH as REGISTER_LENGTH,
};
// Functional Fixed Hardware address space.
use compart_abi::acpi::ADDRESS_SPACE_FFH;
/// End Tag of a resource template.
const END_TAG: u8 = 0x79;

/// A position in the AML of a DSDT, bounded by the enclosing package.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Cursor<'a> {
    aml: &'a [u8],
    pos: usize,
    end: usize,
    /// Offset of `aml[0]` in the DSDT, for error messages.
    base: usize,
    /// DSDT revision ≥ 2: integers are 64 bits; otherwise 32.
    wide: bool,
}

/// The last segment of a name string, and whether it was the whole name.
#[derive(Clone, Copy, Debug)]
struct NameInfo {
    last: Option<[u8; 4]>,
    simple: bool,
}

impl<'a> Cursor<'a> {
    /// A cursor over all of `aml`, which starts at `base` in its table.
    pub(crate) fn new(aml: &'a [u8], base: usize, wide: bool) -> Self {
        Self {
            aml,
            pos: 0,
            end: aml.len(),
            base,
            wide,
        }
    }

    fn err(&self, error: AmlError) -> Error {
        Error::Aml {
            offset: self.base + self.pos,
            error,
        }
    }

    fn at_end(&self) -> bool {
        self.pos >= self.end
    }

    fn peek(&self) -> Result<u8, Error> {
        if self.pos >= self.end {
            return Err(self.err(AmlError::Truncated));
        }
        self.aml
            .get(self.pos)
            .copied()
            .ok_or(self.err(AmlError::Truncated))
    }

    fn byte(&mut self) -> Result<u8, Error> {
        let b = self.peek()?;
        self.pos += 1;
        Ok(b)
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], Error> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&e| e <= self.end)
            .ok_or(self.err(AmlError::Truncated))?;
        let bytes = self
            .aml
            .get(self.pos..end)
            .ok_or(self.err(AmlError::Truncated))?;
        self.pos = end;
        Ok(bytes)
    }

    /// Reads a PkgLength and returns a cursor over the rest of the package; `self` moves
    /// past the package.
    fn package_body(&mut self) -> Result<Cursor<'a>, Error> {
        let start = self.pos;
        let lead = self.byte()?;
        let follow = usize::from(lead >> 6);
        let length = if follow == 0 {
            usize::from(lead & 0x3F)
        } else {
            if lead & 0x30 != 0 {
                return Err(self.err(AmlError::BadPkgLength));
            }
            let mut length = usize::from(lead & 0x0F);
            for i in 0..follow {
                length |= usize::from(self.byte()?) << (4 + 8 * i);
            }
            length
        };
        let end = start
            .checked_add(length)
            .filter(|&e| e >= self.pos && e <= self.end)
            .ok_or(Error::Aml {
                offset: self.base + start,
                error: AmlError::BadPkgLength,
            })?;
        let body = Cursor { end, ..*self };
        self.pos = end;
        Ok(body)
    }

    fn name_seg(&mut self) -> Result<[u8; 4], Error> {
        let at = self.pos;
        let seg: [u8; 4] = self
            .take(4)?
            .try_into()
            .map_err(|_| self.err(AmlError::Truncated))?;
        let lead_ok = seg[0].is_ascii_uppercase() || seg[0] == b'_';
        let rest_ok = seg[1..]
            .iter()
            .all(|&c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == b'_');
        if lead_ok && rest_ok {
            Ok(seg)
        } else {
            Err(Error::Aml {
                offset: self.base + at,
                error: AmlError::BadName,
            })
        }
    }

    fn name_string(&mut self) -> Result<NameInfo, Error> {
        let mut simple = true;
        match self.peek()? {
            b'\\' => {
                self.pos += 1;
                simple = false;
            }
            b'^' => {
                while self.peek()? == b'^' {
                    self.pos += 1;
                }
                simple = false;
            }
            _ => {}
        }
        let count = match self.peek()? {
            0x00 => {
                self.pos += 1;
                return Ok(NameInfo { last: None, simple });
            }
            DUAL_NAME_PREFIX => {
                self.pos += 1;
                2
            }
            MULTI_NAME_PREFIX => {
                self.pos += 1;
                let n = self.byte()?;
                if n == 0 {
                    return Err(self.err(AmlError::BadName));
                }
                usize::from(n)
            }
            _ => 1,
        };
        let mut last = [0; 4];
        for _ in 0..count {
            last = self.name_seg()?;
        }
        Ok(NameInfo {
            last: Some(last),
            simple: simple && count == 1,
        })
    }

    /// An integer constant, or `None` (nothing consumed) if the next object is not one.
    fn integer(&mut self) -> Result<Option<u64>, Error> {
        let value = match self.peek()? {
            ZERO_OP => {
                self.pos += 1;
                0
            }
            ONE_OP => {
                self.pos += 1;
                1
            }
            ONES_OP => {
                self.pos += 1;
                u64::MAX
            }
            BYTE_PREFIX => {
                self.pos += 1;
                u64::from(self.byte()?)
            }
            WORD_PREFIX => {
                self.pos += 1;
                let b = self.take(2)?;
                u64::from(u16::from_le_bytes([b[0], b[1]]))
            }
            DWORD_PREFIX => {
                self.pos += 1;
                let b = self.take(4)?;
                u64::from(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            }
            QWORD_PREFIX => {
                self.pos += 1;
                let b = self.take(8)?;
                let mut q = [0u8; 8];
                q.copy_from_slice(b);
                u64::from_le_bytes(q)
            }
            _ => return Ok(None),
        };
        // Revision 1 definition blocks have 32-bit integers (ACPI 6.5 §5.2.11.1).
        Ok(Some(if self.wide {
            value
        } else {
            value & u64::from(u32::MAX)
        }))
    }

    /// A string, or `None` (nothing consumed) if the next object is not one.
    fn string(&mut self) -> Result<Option<&'a [u8]>, Error> {
        if self.peek()? != STRING_PREFIX {
            return Ok(None);
        }
        self.pos += 1;
        let start = self.pos;
        loop {
            match self.byte()? {
                0 => break,
                c if c.is_ascii() => {}
                _ => return Err(self.err(AmlError::BadString)),
            }
        }
        Ok(self.aml.get(start..self.pos - 1))
    }

    /// A buffer's bytes, or `None` (nothing consumed) if the next object is not a buffer.
    /// Strict: its size must be a constant equal to the initializer's length.
    fn buffer(&mut self) -> Result<Option<&'a [u8]>, BadShape> {
        if self.peek()? != BUFFER_OP {
            return Ok(None);
        }
        self.pos += 1;
        let mut body = self.package_body()?;
        let size = body.integer()?.ok_or(BadShape::Shape)?;
        let bytes = body.take(body.end - body.pos)?;
        if u64::try_from(bytes.len()).ok() != Some(size) {
            return Err(BadShape::Shape);
        }
        Ok(Some(bytes))
    }

    /// A package's body and NumElements, or `None` (nothing consumed) if the next object
    /// is not a package.
    fn package(&mut self) -> Result<Option<(Cursor<'a>, u8)>, Error> {
        if self.peek()? != PACKAGE_OP {
            return Ok(None);
        }
        self.pos += 1;
        let mut body = self.package_body()?;
        let count = body.byte()?;
        Ok(Some((body, count)))
    }

    /// Skips one data object of the subset.
    fn skip_data_object(&mut self) -> Result<(), Error> {
        if self.integer()?.is_some() || self.string()?.is_some() {
            return Ok(());
        }
        match self.peek()? {
            BUFFER_OP | PACKAGE_OP => {
                self.pos += 1;
                self.package_body()?;
                Ok(())
            }
            op => Err(self.err(AmlError::UnsupportedOpcode(op))),
        }
    }
}

/// A failure while reading one object: broken AML, or AML of the wrong shape.
#[derive(Debug)]
enum BadShape {
    Aml(Error),
    Shape,
}

impl From<Error> for BadShape {
    fn from(e: Error) -> Self {
        BadShape::Aml(e)
    }
}

/// The objects of one device that matter to the reader.
#[derive(Clone, Copy, Debug)]
pub(crate) struct DeviceObjects {
    pub name: [u8; 4],
    pub is_processor: bool,
    pub uid: Option<u32>,
    pub sta: Option<u64>,
    pub pct: Option<Pct>,
    pub pss: Option<([PState; MAX_PSTATES], usize)>,
    pub ppc: Option<u32>,
    pub psd: Option<Psd>,
    seen_hid: bool,
}

impl DeviceObjects {
    fn new(name: [u8; 4]) -> Self {
        Self {
            name,
            is_processor: false,
            uid: None,
            sta: None,
            pct: None,
            pss: None,
            ppc: None,
            psd: None,
            seen_hid: false,
        }
    }

    /// Reads `Name (seg, …)`'s data at `c`.
    fn read_object(&mut self, seg: [u8; 4], c: &mut Cursor<'_>) -> Result<(), Error> {
        let invalid = Error::InvalidObject {
            device: Sig(self.name),
            object: Sig(seg),
        };
        let result = match &seg {
            b"_HID" => self.read_hid(c),
            b"_UID" => read_dword(c).map(|v| set(&mut self.uid, v)),
            b"_STA" => read_u64(c).map(|v| set(&mut self.sta, v)),
            b"_PPC" => read_dword(c).map(|v| set(&mut self.ppc, v)),
            b"_PCT" => read_pct(c).map(|v| set(&mut self.pct, v)),
            b"_PSS" => read_pss(c).map(|v| set(&mut self.pss, v)),
            b"_PSD" => read_psd(c).map(|v| set(&mut self.psd, v)),
            _ => return c.skip_data_object(),
        };
        match result {
            Ok(true) => Ok(()),
            // A second definition of one name: ACPICA refuses to load such a table.
            Ok(false) | Err(BadShape::Shape) => Err(invalid),
            Err(BadShape::Aml(e)) => Err(e),
        }
    }

    fn read_hid(&mut self, c: &mut Cursor<'_>) -> Result<bool, BadShape> {
        if core::mem::replace(&mut self.seen_hid, true) {
            return Ok(false);
        }
        if let Some(s) = c.string()? {
            self.is_processor = s == b"ACPI0007";
            return Ok(true);
        }
        // An EISA id: some other device.
        c.integer()?.ok_or(BadShape::Shape)?;
        Ok(true)
    }
}

/// Stores `value` in an empty slot; false if the slot was taken.
fn set<T>(slot: &mut Option<T>, value: T) -> bool {
    if slot.is_some() {
        return false;
    }
    *slot = Some(value);
    true
}

fn read_u64(c: &mut Cursor<'_>) -> Result<u64, BadShape> {
    c.integer()?.ok_or(BadShape::Shape)
}

fn read_dword(c: &mut Cursor<'_>) -> Result<u32, BadShape> {
    u32::try_from(read_u64(c)?).map_err(|_| BadShape::Shape)
}

/// A package of exactly `count` elements present.
fn read_package<'a>(c: &mut Cursor<'a>) -> Result<(Cursor<'a>, u8), BadShape> {
    c.package()?.ok_or(BadShape::Shape)
}

/// `N` integers filling a package exactly.
fn read_integers<const N: usize>(c: &mut Cursor<'_>) -> Result<[u64; N], BadShape> {
    let (mut body, count) = read_package(c)?;
    if usize::from(count) != N {
        return Err(BadShape::Shape);
    }
    let mut values = [0u64; N];
    for v in &mut values {
        *v = read_u64(&mut body)?;
    }
    if !body.at_end() {
        return Err(BadShape::Shape);
    }
    Ok(values)
}

fn dword(v: u64) -> Result<u32, BadShape> {
    u32::try_from(v).map_err(|_| BadShape::Shape)
}

fn read_pss(c: &mut Cursor<'_>) -> Result<([PState; MAX_PSTATES], usize), BadShape> {
    let (mut body, count) = read_package(c)?;
    let count = usize::from(count);
    if count == 0 || count > MAX_PSTATES {
        return Err(BadShape::Shape);
    }
    let mut states = [PState::ZERO; MAX_PSTATES];
    for state in states.iter_mut().take(count) {
        let [f, p, lat, bm, control, status] = read_integers::<6>(&mut body)?;
        *state = PState {
            frequency_mhz: dword(f)?,
            power_mw: dword(p)?,
            transition_latency_us: dword(lat)?,
            bus_master_latency_us: dword(bm)?,
            control,
            status,
        };
    }
    if !body.at_end() {
        return Err(BadShape::Shape);
    }
    Ok((states, count))
}

fn read_psd(c: &mut Cursor<'_>) -> Result<Psd, BadShape> {
    let (mut body, count) = read_package(c)?;
    // One dependency package per processor (ACPI allows more for future use; we emit one).
    if count != 1 {
        return Err(BadShape::Shape);
    }
    let [entries, revision, domain, coordination, processors] = read_integers::<5>(&mut body)?;
    if entries != 5 || revision != 0 || !body.at_end() {
        return Err(BadShape::Shape);
    }
    Ok(Psd {
        domain: dword(domain)?,
        coordination: Coordination::from_acpi_value(coordination).ok_or(BadShape::Shape)?,
        num_processors: dword(processors)?,
    })
}

fn read_pct(c: &mut Cursor<'_>) -> Result<Pct, BadShape> {
    let (mut body, count) = read_package(c)?;
    if count != 2 {
        return Err(BadShape::Shape);
    }
    let control = read_ffh_msr(&mut body)?;
    let status = read_ffh_msr(&mut body)?;
    if !body.at_end() {
        return Err(BadShape::Shape);
    }
    Ok(Pct {
        control_msr: control,
        status_msr: status,
    })
}

/// A ResourceTemplate holding one FFH Generic Register and an End Tag; the MSR number is
/// in the address field.
fn read_ffh_msr(c: &mut Cursor<'_>) -> Result<u32, BadShape> {
    let bytes = c.buffer()?.ok_or(BadShape::Shape)?;
    let [desc, len_lo, len_hi, space, _width, _offset, _access, a0, a1, a2, a3, a4, a5, a6, a7, end, _sum] =
        *bytes
    else {
        return Err(BadShape::Shape);
    };
    let address = u64::from_le_bytes([a0, a1, a2, a3, a4, a5, a6, a7]);
    if desc != REGISTER_DESCRIPTOR
        || u16::from_le_bytes([len_lo, len_hi]) != REGISTER_LENGTH
        || space != ADDRESS_SPACE_FFH
        || end != END_TAG
    {
        return Err(BadShape::Shape);
    }
    u32::try_from(address).map_err(|_| BadShape::Shape)
}

/// Walks a term list, calling `on_device` for every device after reading its objects.
pub(crate) fn walk(
    c: &mut Cursor<'_>,
    depth: usize,
    mut device: Option<&mut DeviceObjects>,
    on_device: &mut dyn FnMut(&DeviceObjects) -> Result<(), Error>,
) -> Result<(), Error> {
    if depth > MAX_DEPTH {
        return Err(c.err(AmlError::TooDeep));
    }
    while !c.at_end() {
        let op_at = c.pos;
        let unsupported = |c: &Cursor<'_>, op| Error::Aml {
            offset: c.base + op_at,
            error: AmlError::UnsupportedOpcode(op),
        };
        match c.byte()? {
            SCOPE_OP => {
                let mut body = c.package_body()?;
                body.name_string()?;
                walk(&mut body, depth + 1, None, on_device)?;
            }
            NAME_OP => {
                let name = c.name_string()?;
                match (&mut device, name.last) {
                    (Some(d), Some(seg)) if name.simple => d.read_object(seg, c)?,
                    _ => c.skip_data_object()?,
                }
            }
            METHOD_OP => {
                c.package_body()?;
            }
            EXT_OP_PREFIX => match c.byte()? {
                DEVICE_OP => {
                    let mut body = c.package_body()?;
                    let name = body.name_string()?;
                    let seg = name.last.ok_or(body.err(AmlError::BadName))?;
                    let mut objects = DeviceObjects::new(seg);
                    walk(&mut body, depth + 1, Some(&mut objects), on_device)?;
                    on_device(&objects)?;
                }
                PROCESSOR_OP | POWER_RES_OP | THERMAL_ZONE_OP => {
                    c.package_body()?;
                }
                op => return Err(unsupported(c, op)),
            },
            op => return Err(unsupported(c, op)),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cursor(aml: &[u8]) -> Cursor<'_> {
        Cursor::new(aml, 0, true)
    }

    #[test]
    fn integers_in_every_encoding() {
        let aml = [
            0x00, 0x01, 0xFF, 0x0A, 0x12, 0x0B, 0x34, 0x12, 0x0C, 0x78, 0x56, 0x34, 0x12, 0x0E, 1,
            2, 3, 4, 5, 6, 7, 8,
        ];
        let mut c = cursor(&aml);
        let mut got = [0u64; 7];
        for v in &mut got {
            *v = c.integer().unwrap().unwrap();
        }
        assert_eq!(
            got,
            [
                0,
                1,
                u64::MAX,
                0x12,
                0x1234,
                0x1234_5678,
                0x0807_0605_0403_0201
            ]
        );
        assert!(c.at_end());
    }

    #[test]
    fn narrow_tables_truncate_integers_to_32_bits() {
        let aml = [0xFF, 0x0E, 1, 2, 3, 4, 5, 6, 7, 8];
        let mut c = Cursor::new(&aml, 0, false);
        assert_eq!(c.integer().unwrap(), Some(0xFFFF_FFFF));
        assert_eq!(c.integer().unwrap(), Some(0x0403_0201));
    }

    #[test]
    fn pkg_lengths_of_one_to_four_bytes() {
        // One byte: 3 = itself + 2 bytes.
        let aml = [0x03, 0xAA, 0xBB];
        let body = cursor(&aml).package_body().unwrap();
        assert_eq!((body.pos, body.end), (1, 3));
        // Two bytes: lead 0x45 (one follow byte, low nibble 5), follow 0x00: length 5.
        let aml = [0x45, 0x00, 1, 2, 3];
        let body = cursor(&aml).package_body().unwrap();
        assert_eq!((body.pos, body.end), (2, 5));
    }

    #[test]
    fn pkg_length_past_the_parent_is_an_error() {
        let aml = [0x05, 0xAA];
        assert!(matches!(
            cursor(&aml).package_body(),
            Err(Error::Aml {
                error: AmlError::BadPkgLength,
                ..
            })
        ));
        // Reserved bits 4-5 set in a multi-byte lead.
        let aml = [0x75, 0x00, 0, 0, 0];
        assert!(cursor(&aml).package_body().is_err());
        // A length shorter than its own encoding.
        let aml = [0x40, 0x00];
        assert!(cursor(&aml).package_body().is_err());
    }

    #[test]
    fn names_with_prefixes() {
        let aml = *b"\\/\x03_SB_C000_PSS";
        let name = cursor(&aml).name_string().unwrap();
        assert_eq!(name.last, Some(*b"_PSS"));
        assert!(!name.simple);
        let aml = *b"_UID";
        assert!(cursor(&aml).name_string().unwrap().simple);
        let aml = *b"1ABC";
        assert!(cursor(&aml).name_string().is_err());
    }

    #[test]
    fn unknown_opcodes_are_errors() {
        let aml = [0x70, 0x00];
        let err = walk(&mut cursor(&aml), 0, None, &mut |_| Ok(())).unwrap_err();
        assert_eq!(
            err,
            Error::Aml {
                offset: 0,
                error: AmlError::UnsupportedOpcode(0x70)
            }
        );
    }

    #[test]
    fn deep_nesting_is_refused() {
        // Scope (\_SB) nested MAX_DEPTH + 2 times, built inside out.
        let mut aml = [0u8; 8 * (MAX_DEPTH + 2)];
        let n = MAX_DEPTH + 2;
        for i in 0..n {
            let at = 8 * i;
            let len = 8 * (n - i) - 1;
            aml[at] = SCOPE_OP;
            aml[at + 1] = 0x40 | (len & 0x0F) as u8;
            aml[at + 2] = (len >> 4) as u8;
            aml[at + 3] = b'\\';
            aml[at + 4..at + 8].copy_from_slice(b"_SB_");
        }
        let err = walk(&mut cursor(&aml), 0, None, &mut |_| Ok(())).unwrap_err();
        assert!(matches!(
            err,
            Error::Aml {
                error: AmlError::TooDeep,
                ..
            }
        ));
    }
}
