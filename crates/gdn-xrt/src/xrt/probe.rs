//! Whether the `xrt` backend can do real work on this machine, decided without calling XRT.
//!
//! The registry lists `xrt` as available only when it is: a card bound to XRT's user-function
//! driver (`xocl`), or an XRT emulation mode that computes (`sw_emu`, `hw_emu`, which need an
//! xclbin built for them). The `noop` emulation mode computes nothing, and with no card
//! `xrtDeviceOpen` has nothing to open; in both cases `xrt` stays unavailable with a reason, so
//! that everything iterating "every available backend" keeps meaning "every backend that
//! computes". The host path itself is exercised against `noop` by the crate's XRT test.

use std::path::Path;

/// Where Linux lists the PCI functions bound to the XRT user driver.
const XOCL_DRIVER_DIR: &str = "/sys/bus/pci/drivers/xocl";

/// `Ok` with a description of what was found, or `Err` with why `xrt` cannot compute here.
pub fn usable_target() -> Result<String, String> {
    match std::env::var("XCL_EMULATION_MODE").ok().as_deref() {
        Some(mode @ ("sw_emu" | "hw_emu")) => {
            return Ok(format!("XRT emulation (XCL_EMULATION_MODE={mode})"))
        }
        Some(other) if !other.is_empty() => {
            return Err(format!(
                "the cargo feature `xrt` is compiled in, but XCL_EMULATION_MODE={other} selects an \
                 XRT driver that computes nothing; unset it to use a card, or use `xrt-sim` for \
                 the kernel's C-simulation"
            ))
        }
        _ => {}
    }
    let cards = bound_pci_functions(Path::new(XOCL_DRIVER_DIR));
    if cards.is_empty() {
        Err(format!(
            "the cargo feature `xrt` is compiled in, but no Alveo card is visible (no PCI function \
             bound to the xocl driver under {XOCL_DRIVER_DIR}); use `xrt-sim` for the kernel's \
             C-simulation"
        ))
    } else {
        Ok(format!("Alveo card(s) at {}", cards.join(", ")))
    }
}

/// PCI addresses (`dddd:bb:dd.f`) linked in a driver's sysfs directory.
fn bound_pci_functions(dir: &Path) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut found: Vec<String> = entries
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|name| name.len() == 12 && name.matches(':').count() == 2 && name.contains('.'))
        .collect();
    found.sort();
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pci_functions_are_recognised_and_other_entries_ignored() {
        let dir = tempfile::tempdir().expect("tempdir");
        for name in [
            "0000:3b:00.1",
            "0000:d8:00.1",
            "bind",
            "unbind",
            "module",
            "new_id",
        ] {
            std::fs::write(dir.path().join(name), b"").expect("write");
        }
        assert_eq!(
            bound_pci_functions(dir.path()),
            vec!["0000:3b:00.1".to_string(), "0000:d8:00.1".to_string()]
        );
        assert!(bound_pci_functions(&dir.path().join("missing")).is_empty());
    }
}
