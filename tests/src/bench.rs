//! Side-by-side benchmark (being written): see docs/BENCHMARKS.md.
use anyhow::Result;

#[derive(clap::Args, Debug, Clone)]
pub struct Options {
    /// Seconds per measurement.
    #[arg(long, default_value_t = 5.0)]
    pub seconds: f64,
    /// Repetitions; configurations are interleaved within each and their order rotated.
    #[arg(long, default_value_t = 3)]
    pub reps: usize,
}

pub struct Report {}

pub fn run(_opts: &Options) -> Result<Report> {
    anyhow::bail!("benchmark not written yet")
}
