//! Finding the `garage` server binary: `GARAGE_BIN`, else `PATH` (version
//! checked), else `cargo install garage --version 2.5.0 --locked`.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use super::HarnessError;

/// The Garage release the dev cluster and the tests run.
pub const GARAGE_VERSION: &str = "2.5.0";
/// Any 2.5.x server speaks our wire format (`docs/DESIGN.md`).
const GARAGE_SERIES: &str = "2.5.";

/// The version a `garage` binary reports, e.g. `2.5.0`.
pub fn binary_version(bin: &Path) -> Result<String, String> {
    let out = Command::new(bin)
        .arg("--version")
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run {}: {e}", bin.display()))?;
    let text = String::from_utf8_lossy(&out.stdout);
    // "garage cargo:2.5.0 [features: …]" from `cargo install`,
    // "garage v2.5.0 [features: …]" from release builds.
    text.split_whitespace()
        .nth(1)
        .map(|v| {
            v.trim_start_matches("cargo:")
                .trim_start_matches('v')
                .to_string()
        })
        .filter(|v| v.chars().next().is_some_and(|c| c.is_ascii_digit()))
        .ok_or_else(|| format!("{} --version printed {:?}", bin.display(), text.trim()))
}

fn is_supported(version: &str) -> bool {
    version.starts_with(GARAGE_SERIES)
}

fn find_in_path(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|p| p.join(name))
            .find(|p| p.is_file())
    })
}

fn cargo_bin_dir() -> PathBuf {
    std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))
        .unwrap_or_else(|| PathBuf::from(".cargo"))
        .join("bin")
}

/// Finds a `garage` 2.5.x binary, installing one if there is none.
pub fn garage_binary() -> Result<PathBuf, HarnessError> {
    if let Some(bin) = std::env::var_os("GARAGE_BIN").map(PathBuf::from) {
        let v = binary_version(&bin).map_err(HarnessError::Garage)?;
        if !is_supported(&v) {
            return Err(HarnessError::Garage(format!(
                "GARAGE_BIN={} is garage {v}; garage-ipfs needs {GARAGE_SERIES}x",
                bin.display()
            )));
        }
        return Ok(bin);
    }
    for candidate in [find_in_path("garage"), Some(cargo_bin_dir().join("garage"))]
        .into_iter()
        .flatten()
    {
        match binary_version(&candidate) {
            Ok(v) if is_supported(&v) => return Ok(candidate),
            Ok(v) => eprintln!(
                "garage-ipfs: ignoring {} (garage {v}; need {GARAGE_SERIES}x)",
                candidate.display()
            ),
            Err(_) => (),
        }
    }
    install()
}

fn install() -> Result<PathBuf, HarnessError> {
    eprintln!(
        "garage-ipfs: no garage {GARAGE_SERIES}x found (GARAGE_BIN unset, none on PATH).\n\
         garage-ipfs: installing it now with `cargo install garage --version {GARAGE_VERSION} --locked`;\n\
         garage-ipfs: this compiles Garage from crates.io and takes about 8 minutes on 2 cores."
    );
    let status = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
        .args(["install", "garage", "--version", GARAGE_VERSION, "--locked"])
        .stdin(Stdio::null())
        .stdout(Stdio::inherit())
        .stderr(Stdio::inherit())
        .status()
        .map_err(|e| HarnessError::Garage(format!("cannot run cargo to install garage: {e}")))?;
    if !status.success() {
        return Err(HarnessError::Garage(format!(
            "`cargo install garage --version {GARAGE_VERSION} --locked` failed ({status}); \
             install garage {GARAGE_SERIES}x yourself and set GARAGE_BIN"
        )));
    }
    let bin = cargo_bin_dir().join("garage");
    match binary_version(&bin) {
        Ok(v) if is_supported(&v) => Ok(bin),
        other => Err(HarnessError::Garage(format!(
            "installed garage at {} but it reports {other:?}",
            bin.display()
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn series_check() {
        assert!(is_supported("2.5.0"));
        assert!(is_supported("2.5.3"));
        assert!(!is_supported("2.4.0"));
        assert!(!is_supported("1.0.1"));
    }
}
