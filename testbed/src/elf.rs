//! Checks that an ELF executable is statically linked, so it runs in an image
//! `FROM scratch` (no loader, no libc).
//!
//! A static executable has no `PT_INTERP` program header (no dynamic loader) and
//! needs no shared library: either no `PT_DYNAMIC` segment at all, or — for a
//! static-pie executable, which is what `+crt-static` gives on
//! `x86_64-unknown-linux-gnu` — a dynamic segment without any `DT_NEEDED` entry.

use anyhow::{bail, ensure, Context, Result};

const PT_DYNAMIC: u32 = 2;
const PT_INTERP: u32 = 3;
const DT_NULL: u64 = 0;
const DT_NEEDED: u64 = 1;

/// How an ELF executable is linked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Linkage {
    /// Fully static, no dynamic segment.
    Static,
    /// Static position-independent: a dynamic segment for self-relocation only.
    StaticPie,
    /// Needs a loader or shared libraries.
    Dynamic,
}

/// Reads `path` and tells how it is linked (64-bit little-endian ELF only).
pub fn linkage_of_file(path: &std::path::Path) -> Result<Linkage> {
    let data = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    linkage(&data).with_context(|| format!("{}: not a usable ELF file", path.display()))
}

/// Tells how the ELF image in `data` is linked (64-bit little-endian ELF only).
pub fn linkage(data: &[u8]) -> Result<Linkage> {
    ensure!(
        data.len() >= 64 && data[..4] == *b"\x7fELF",
        "no ELF header"
    );
    ensure!(data[4] == 2, "not a 64-bit ELF file");
    ensure!(data[5] == 1, "not a little-endian ELF file");
    let phoff = usize::try_from(u64_at(data, 0x20)?)?;
    let phentsize = usize::from(u16_at(data, 0x36)?);
    let phnum = usize::from(u16_at(data, 0x38)?);
    ensure!(phentsize >= 56, "program header entries too small");
    let mut dynamic = None;
    for i in 0..phnum {
        let ph = phoff
            .checked_add(i * phentsize)
            .context("program header offset overflows")?;
        match u32_at(data, ph)? {
            PT_INTERP => return Ok(Linkage::Dynamic),
            PT_DYNAMIC => {
                let offset = usize::try_from(u64_at(data, ph + 0x08)?)?;
                let size = usize::try_from(u64_at(data, ph + 0x20)?)?;
                dynamic = Some((offset, size));
            }
            _ => {}
        }
    }
    let Some((offset, size)) = dynamic else {
        return Ok(Linkage::Static);
    };
    let end = offset
        .checked_add(size)
        .context("dynamic segment overflows")?;
    ensure!(
        end <= data.len(),
        "dynamic segment past the end of the file"
    );
    for entry in data[offset..end].chunks_exact(16) {
        match u64_at(entry, 0)? {
            DT_NULL => break,
            DT_NEEDED => return Ok(Linkage::Dynamic),
            _ => {}
        }
    }
    Ok(Linkage::StaticPie)
}

/// Fails unless the file at `path` is a static (or static-pie) executable.
pub fn ensure_static(path: &std::path::Path) -> Result<Linkage> {
    match linkage_of_file(path)? {
        Linkage::Dynamic => bail!(
            "{} is dynamically linked (it has a loader or needs shared libraries); \
             it would not run in an image FROM scratch",
            path.display()
        ),
        static_kind => Ok(static_kind),
    }
}

fn bytes<const N: usize>(data: &[u8], at: usize) -> Result<[u8; N]> {
    data.get(at..at + N)
        .and_then(|s| s.try_into().ok())
        .with_context(|| format!("truncated ELF data at offset {at}"))
}

fn u16_at(data: &[u8], at: usize) -> Result<u16> {
    Ok(u16::from_le_bytes(bytes(data, at)?))
}

fn u32_at(data: &[u8], at: usize) -> Result<u32> {
    Ok(u32::from_le_bytes(bytes(data, at)?))
}

fn u64_at(data: &[u8], at: usize) -> Result<u64> {
    Ok(u64::from_le_bytes(bytes(data, at)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_test_process_itself_is_dynamic() {
        // Test binaries are linked against glibc dynamically.
        let me = std::env::current_exe().unwrap();
        assert_eq!(linkage_of_file(&me).unwrap(), Linkage::Dynamic);
        assert!(ensure_static(&me).is_err());
    }

    #[test]
    fn rejects_garbage() {
        assert!(linkage(b"").is_err());
        assert!(linkage(&[0u8; 128]).is_err());
        let mut header = vec![0u8; 64];
        header[..6].copy_from_slice(b"\x7fELF\x02\x01");
        header[0x20] = 0xff; // program headers past the end
        header[0x36] = 56;
        header[0x38] = 1;
        assert!(linkage(&header).is_err());
    }
}
