//! `brankas synth`: writes a deterministic synthetic Indonesian population (see the
//! `brankas-synth` crate) as NDJSON transaction Bundles, streamed with constant memory.

use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use brankas_synth::{Mix, Population};

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// One JSON document per line: the directory Bundle, then one Bundle per patient.
    Ndjson,
    /// One pretty-printed JSON file per Bundle (needs --out).
    Bundles,
}

#[derive(clap::Args)]
pub struct SynthArgs {
    /// Number of patients.
    #[arg(long)]
    patients: u64,
    /// Seed: the same seed gives byte-identical output.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Records per patient: minimal (Patient, Encounter, antigen test) or full.
    #[arg(long, default_value = "full")]
    mix: Mix,
    #[arg(long, value_enum, default_value = "ndjson")]
    format: Format,
    /// Output directory (ndjson: DIR/population.ndjson; bundles: one file per Bundle).
    /// Without it, NDJSON goes to standard output.
    #[arg(long)]
    out: Option<PathBuf>,
}

pub fn run(a: SynthArgs) -> Result<()> {
    let pop = Population::new(a.seed, a.mix);
    let r = match (&a.out, a.format) {
        (None, Format::Ndjson) => ndjson(&pop, a.patients, io::stdout().lock()),
        (None, Format::Bundles) => bail!("--format bundles needs --out DIR"),
        (Some(dir), Format::Ndjson) => {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
            let path = dir.join("population.ndjson");
            let f = File::create(&path).with_context(|| format!("creating {}", path.display()))?;
            ndjson(&pop, a.patients, f)
        }
        (Some(dir), Format::Bundles) => bundles(&pop, a.patients, dir),
    };
    match r {
        // A closed pipe (`brankas synth ... | head`) is a normal way to stop.
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => Ok(()),
        r => Ok(r?),
    }
}

fn ndjson(pop: &Population, n: u64, out: impl Write) -> io::Result<()> {
    let mut w = BufWriter::with_capacity(1 << 20, out);
    serde_json::to_writer(&mut w, &pop.directory_bundle())?;
    w.write_all(b"\n")?;
    for i in 0..n {
        serde_json::to_writer(&mut w, &pop.patient_bundle(i))?;
        w.write_all(b"\n")?;
    }
    w.flush()
}

fn bundles(pop: &Population, n: u64, dir: &std::path::Path) -> io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let write = |name: String, v: &serde_json::Value| -> io::Result<()> {
        let mut w = BufWriter::new(File::create(dir.join(name))?);
        serde_json::to_writer_pretty(&mut w, v)?;
        w.write_all(b"\n")?;
        w.flush()
    };
    write("000000-directory.json".into(), &pop.directory_bundle())?;
    for i in 0..n {
        write(format!("patient-{:09}.json", i + 1), &pop.patient_bundle(i))?;
    }
    Ok(())
}
