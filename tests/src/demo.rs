//! The demo (being written).
use anyhow::Result;

pub fn run() -> Result<()> {
    anyhow::bail!("demo not written yet")
}
