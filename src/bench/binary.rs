//! `posgate bench --only binary`: the shipped binary's size, stripped (what a package carries).
use std::path::Path;
use std::process::Command;

use super::BenchError;

/// The target for the shipped build, stripped (decimal megabytes).
const TARGET_BYTES: u64 = 8_000_000;

/// Where `cargo build --profile dist` leaves the shipped binary, relative to the checkout.
const DIST_BINARY: &str = if cfg!(windows) { "target/dist/posgate.exe" } else { "target/dist/posgate" };

/// Print the size of `binary` as it is and stripped. Without `--binary`: the shipped build
/// ([`DIST_BINARY`], when run from a checkout that has one), else this executable. A copy is stripped
/// with the system's `strip` (a no-op on a binary built stripped); without `strip` only the size as is.
pub(super) fn size(binary: Option<&Path>) -> Result<(), BenchError> {
    let exe = match binary {
        Some(p) => p.to_path_buf(),
        None if Path::new(DIST_BINARY).is_file() => Path::new(DIST_BINARY).to_path_buf(),
        None => std::env::current_exe().map_err(|e| BenchError::Setup(format!("current exe: {e}")))?,
    };
    let as_is = std::fs::metadata(&exe).map_err(|e| BenchError::Setup(format!("{}: {e}", exe.display())))?.len();
    let copy = std::env::temp_dir().join(format!("posgate-bench-strip-{}", std::process::id()));
    std::fs::copy(&exe, &copy).map_err(|e| BenchError::Setup(format!("copying {}: {e}", exe.display())))?;
    let stripped = match Command::new("strip").arg(&copy).status() {
        Ok(s) if s.success() => std::fs::metadata(&copy).map(|m| m.len()).ok(),
        _ => None,
    };
    let _ = std::fs::remove_file(&copy);
    let mb = |b: u64| b as f64 / 1e6;
    match stripped {
        Some(s) => println!(
            "binary {}: {:.2} MB as built, {:.2} MB stripped ({s} bytes; target <= {:.0} MB stripped{})",
            exe.display(),
            mb(as_is),
            mb(s),
            mb(TARGET_BYTES),
            if s <= TARGET_BYTES { ", met" } else { ", NOT met" }
        ),
        None => println!(
            "binary {}: {:.2} MB as built (no `strip` to measure it stripped; target <= {:.0} MB stripped)",
            exe.display(),
            mb(as_is),
            mb(TARGET_BYTES)
        ),
    }
    Ok(())
}
