//! Spill + merge: the engine's own sorted runs and k-way merge against the `extsort` crate, on
//! the same generated "wide" data (nearly every row its own group) under a memory budget small
//! enough to force several spills. A measurement for issue #2, not a feature: the extsort
//! variant lives here, outside the engine.
//!
//! `spill_merge compare` generates the data once, then runs each variant `--runs` times, rounds
//! interleaved, each run in a child process of its own (so that peak RSS is the run's own), and
//! prints medians and ratios, with each run split into phases: read (parse and sum), spill (sort
//! and write runs) and merge (merge the runs and write the result).
//! `spill_merge run VARIANT MODE FILE` is one run; it prints one tab-separated result line.

use std::cmp::Ordering as CmpOrdering;
use std::collections::HashMap;
use std::fs::File;
use std::io::{self, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use clap::{Parser, Subcommand, ValueEnum};
use engine::{Config, Control, Input, Phase};
use extsort::{ExternalSorter, Sortable};
use fixtures::{Length, Skew, Spec};

#[derive(Parser)]
#[command(about = "Spill + merge: the engine's sorted runs against the extsort crate")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Generates the data (kept while its size matches), runs both variants and prints medians.
    Compare {
        /// Size of the generated CSV.
        #[arg(long, default_value = "256M", value_parser = engine::parse_size)]
        size: u64,
        /// Memory budget of the `spill` runs.
        #[arg(long, default_value = "96M", value_parser = engine::parse_size)]
        limit: u64,
        /// Runs of each variant and mode.
        #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u16).range(1..))]
        runs: u16,
        /// Worker threads of the engine (the extsort variant parses on one thread).
        #[arg(long, default_value_t = 1)]
        threads: usize,
        /// Where the data and the temporary files go.
        #[arg(long, default_value = "bench/data")]
        dir: PathBuf,
    },
    /// One run in this process; prints one result line.
    Run {
        variant: Variant,
        file: PathBuf,
        #[arg(long, value_parser = engine::parse_size)]
        limit: u64,
        #[arg(long, default_value_t = 1)]
        threads: usize,
        #[arg(long)]
        temp_dir: PathBuf,
        /// Write the result here instead of discarding it (to compare the variants' outputs).
        #[arg(long)]
        out: Option<PathBuf>,
    },
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Variant {
    Engine,
    Extsort,
}

impl Variant {
    fn name(self) -> &'static str {
        match self {
            Variant::Engine => "engine",
            Variant::Extsort => "extsort",
        }
    }
}

/// Seconds spent in each phase of a run.
#[derive(Default)]
struct Phases {
    read: f64,
    spill: f64,
    merge: f64,
}

/// What one variant returns: phases, spills, groups and output bytes.
struct Outcome {
    phases: Phases,
    spills: u64,
    groups: u64,
    output_bytes: u64,
}

/// What one run measured.
struct Measured {
    seconds: f64,
    /// Seconds reading, parsing and summing; sorting and writing runs; merging and writing the
    /// result. The engine's are sampled from its progress phase every millisecond.
    phases: Phases,
    spills: u64,
    groups: u64,
    output_bytes: u64,
    /// Peak resident set (VmHWM), bytes.
    peak_rss: u64,
    /// Bytes written through `write` calls (`wchar`): the spilled runs, as the result is
    /// discarded in memory.
    temp_written: u64,
}

impl Measured {
    fn line(&self) -> String {
        format!(
            "{:.3}\t{:.3}\t{:.3}\t{:.3}\t{}\t{}\t{}\t{}\t{}",
            self.seconds,
            self.phases.read,
            self.phases.spill,
            self.phases.merge,
            self.spills,
            self.groups,
            self.output_bytes,
            self.peak_rss,
            self.temp_written
        )
    }

    fn parse(line: &str) -> Result<Measured> {
        let fields: Vec<&str> = line.trim().split('\t').collect();
        ensure!(fields.len() == 9, "unexpected result line {line:?}");
        let int = |i: usize| -> Result<u64> {
            fields[i]
                .parse()
                .with_context(|| format!("field {i} of {line:?}"))
        };
        let float = |i: usize| -> Result<f64> {
            fields[i]
                .parse()
                .with_context(|| format!("field {i} of {line:?}"))
        };
        Ok(Measured {
            seconds: float(0)?,
            phases: Phases {
                read: float(1)?,
                spill: float(2)?,
                merge: float(3)?,
            },
            spills: int(4)?,
            groups: int(5)?,
            output_bytes: int(6)?,
            peak_rss: int(7)?,
            temp_written: int(8)?,
        })
    }
}

fn main() -> Result<()> {
    match Cli::parse().command {
        Cmd::Compare {
            size,
            limit,
            runs,
            threads,
            dir,
        } => compare(size, limit, runs, threads, &dir),
        Cmd::Run {
            variant,
            file,
            limit,
            threads,
            temp_dir,
            out,
        } => {
            let mut sink: Box<dyn Write + Send> = match &out {
                Some(path) => Box::new(BufWriter::new(
                    File::create(path).with_context(|| format!("create {}", path.display()))?,
                )),
                None => Box::new(io::sink()),
            };
            let written_before = proc_field("/proc/self/io", "wchar:")?;
            let started = Instant::now();
            let outcome = match variant {
                Variant::Engine => run_engine(&file, limit, threads, &temp_dir, &mut sink)?,
                Variant::Extsort => run_extsort(&file, limit, &temp_dir, &mut sink)?,
            };
            sink.flush()?;
            let measured = Measured {
                seconds: started.elapsed().as_secs_f64(),
                phases: outcome.phases,
                spills: outcome.spills,
                groups: outcome.groups,
                output_bytes: outcome.output_bytes,
                peak_rss: proc_field("/proc/self/status", "VmHWM:")? << 10,
                temp_written: proc_field("/proc/self/io", "wchar:")? - written_before,
            };
            println!("{}", measured.line());
            Ok(())
        }
    }
}

/// A numeric field of a `/proc` file, e.g. `VmHWM:` (in KiB) of `/proc/self/status`.
fn proc_field(path: &str, name: &str) -> Result<u64> {
    let text = std::fs::read_to_string(path).with_context(|| format!("read {path}"))?;
    let line = text
        .lines()
        .find_map(|line| line.strip_prefix(name))
        .with_context(|| format!("{name} not in {path}"))?;
    let number = line.split_whitespace().next().unwrap_or_default();
    number
        .parse()
        .with_context(|| format!("{name} {number:?} in {path}"))
}

/// The engine as it is, memory-mapping the file, its phases sampled from its progress.
fn run_engine(
    file: &Path,
    limit: u64,
    threads: usize,
    temp_dir: &Path,
    out: &mut (dyn Write + Send),
) -> Result<Outcome> {
    let config = Config {
        memory_limit: limit,
        threads,
        temp_dir: Some(temp_dir.to_path_buf()),
        ..Config::default()
    };
    let control = Control::new();
    let finished = AtomicBool::new(false);
    let (summary, phases) = std::thread::scope(|scope| {
        let sampler = scope.spawn(|| {
            let mut phases = Phases::default();
            let mut last = Instant::now();
            while !finished.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(1));
                let now = Instant::now();
                let elapsed = (now - last).as_secs_f64();
                last = now;
                match control.progress().snapshot().phase {
                    Phase::Read => phases.read += elapsed,
                    Phase::Spill => phases.spill += elapsed,
                    Phase::Merge | Phase::Done => phases.merge += elapsed,
                }
            }
            phases
        });
        let summary = engine::aggregate_to_writer(Input::File(file), out, &config, &control);
        finished.store(true, Ordering::Relaxed);
        (summary, sampler.join())
    });
    let summary = summary?;
    Ok(Outcome {
        phases: phases.map_err(|_| anyhow::anyhow!("the phase sampler panicked"))?,
        spills: summary.spilled_runs,
        groups: summary.groups_written,
        output_bytes: summary.output_bytes,
    })
}

/// One (song, date, sum) record as the extsort variant sorts and spills it.
#[derive(PartialEq, Eq)]
struct Record {
    song: Box<[u8]>,
    /// `year << 9 | month << 5 | day`: ordered like the dates.
    date: u32,
    sum: u64,
}

impl Record {
    fn cmp_key(&self, other: &Record) -> CmpOrdering {
        (&self.song, self.date).cmp(&(&other.song, other.date))
    }
}

impl Sortable for Record {
    fn encode<W: Write>(&self, writer: &mut W) -> io::Result<()> {
        writer.write_all(&(self.song.len() as u32).to_le_bytes())?;
        writer.write_all(&self.song)?;
        writer.write_all(&self.date.to_le_bytes())?;
        writer.write_all(&self.sum.to_le_bytes())
    }

    fn decode<R: Read>(reader: &mut R) -> io::Result<Record> {
        let mut word = [0u8; 4];
        reader.read_exact(&mut word)?;
        let mut song = vec![0u8; u32::from_le_bytes(word) as usize].into_boxed_slice();
        reader.read_exact(&mut song)?;
        reader.read_exact(&mut word)?;
        let mut sum = [0u8; 8];
        reader.read_exact(&mut sum)?;
        Ok(Record {
            song,
            date: u32::from_le_bytes(word),
            sum: u64::from_le_bytes(sum),
        })
    }
}

/// Estimated heap bytes of one map entry: the key and value (32 bytes) over hashbrown's 7/8
/// load with its control byte, plus the name's allocation and the allocator's overhead.
fn entry_cost(name_len: usize) -> u64 {
    32 * 8 / 7 + 1 + name_len as u64 + 16
}

/// The alternative: rows parsed with the `csv` crate and summed in a `HashMap` until the
/// estimated size reaches `limit / 2`; then the map's records go to extsort, whose segment (in
/// records) is the map's size at that point, so each fill becomes one sorted segment on disk,
/// like one engine spill. The other half of the budget is extsort's buffer. At the end extsort
/// merges the segments; equal adjacent keys are summed while writing the CSV.
fn run_extsort(
    file: &Path,
    limit: u64,
    temp_dir: &Path,
    out: &mut (dyn Write + Send),
) -> Result<Outcome> {
    let started = Instant::now();
    let mut in_sorter = Duration::ZERO;
    let map_budget = limit / 2;
    // Records per segment: the map's entries when it is full, for names of ~16 bytes.
    let segment = (map_budget / entry_cost(16)).max(1) as usize;
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(true)
        .from_path(file)
        .with_context(|| format!("open {}", file.display()))?;
    let sorter = ExternalSorter::new()
        .with_segment_size(segment)
        .with_sort_dir(temp_dir.to_path_buf());
    let mut sorter = sorter.pushed_by(Record::cmp_key);
    let mut map: HashMap<(Box<[u8]>, u32), u64> = HashMap::new();
    let mut map_bytes = 0u64;
    let mut row = csv::ByteRecord::new();
    while reader.read_byte_record(&mut row)? {
        let line = row.position().map_or(0, |p| p.line());
        ensure!(row.len() == 3, "line {line}: expected 3 fields");
        let date = parse_date(&row[1]).with_context(|| format!("line {line}, field \"Date\""))?;
        let plays: u64 = std::str::from_utf8(&row[2])
            .ok()
            .and_then(|text| text.parse().ok())
            .with_context(|| format!("line {line}, field \"Number of Plays\""))?;
        // Looked up by a borrowed key would need raw_entry; the copy is cheap next to parsing.
        let key = (Box::<[u8]>::from(&row[0]), date);
        let name_len = key.0.len();
        match map.entry(key) {
            std::collections::hash_map::Entry::Occupied(mut entry) => {
                *entry.get_mut() = entry
                    .get()
                    .checked_add(plays)
                    .with_context(|| format!("line {line}: sum overflows"))?
            }
            std::collections::hash_map::Entry::Vacant(entry) => {
                entry.insert(plays);
                map_bytes += entry_cost(name_len);
            }
        }
        if map_bytes >= map_budget {
            let pushing = Instant::now();
            sorter.push_iter(
                map.drain()
                    .map(|((song, date), sum)| Record { song, date, sum }),
            )?;
            in_sorter += pushing.elapsed();
            map_bytes = 0;
        }
    }
    let pushing = Instant::now();
    sorter.push_iter(
        map.drain()
            .map(|((song, date), sum)| Record { song, date, sum }),
    )?;
    drop(map);
    let sorted = sorter.done()?;
    in_sorter += pushing.elapsed();
    let merging = Instant::now();
    let spills = sorted.disk_segment_count() as u64;
    let mut out = CountingWriter::new(out);
    writeln!(out, "{}", engine::HEADER)?;
    let mut groups = 0u64;
    let mut current: Option<Record> = None;
    for record in sorted {
        let record = record?;
        match &mut current {
            Some(held) if held.cmp_key(&record) == CmpOrdering::Equal => {
                held.sum = held.sum.checked_add(record.sum).context("sum overflows")?;
            }
            _ => {
                if let Some(held) = current.replace(record) {
                    write_row(&mut out, &held)?;
                    groups += 1;
                }
            }
        }
    }
    if let Some(held) = current {
        write_row(&mut out, &held)?;
        groups += 1;
    }
    out.flush()?;
    let merge = merging.elapsed().as_secs_f64();
    let spill = in_sorter.as_secs_f64();
    Ok(Outcome {
        phases: Phases {
            read: started.elapsed().as_secs_f64() - merge - spill,
            spill,
            merge,
        },
        spills,
        groups,
        output_bytes: out.bytes,
    })
}

/// `YYYY-MM-DD` as `year << 9 | month << 5 | day` (checked only as far as the format).
fn parse_date(text: &[u8]) -> Result<u32> {
    let digits = |range: std::ops::Range<usize>| -> Option<u32> {
        text.get(range)?.iter().try_fold(0u32, |n, &b| {
            b.is_ascii_digit().then(|| n * 10 + u32::from(b - b'0'))
        })
    };
    match (text.len(), digits(0..4), digits(5..7), digits(8..10)) {
        (10, Some(y), Some(m), Some(d)) if text[4] == b'-' && text[7] == b'-' => {
            Ok(y << 9 | m << 5 | d)
        }
        _ => bail!("invalid date {:?}", String::from_utf8_lossy(text)),
    }
}

fn write_row(out: &mut impl Write, record: &Record) -> io::Result<()> {
    let song = &record.song;
    if song
        .iter()
        .any(|b| matches!(b, b',' | b'"' | b'\n' | b'\r'))
    {
        out.write_all(b"\"")?;
        for part in song.split(|&b| b == b'"').enumerate() {
            if part.0 > 0 {
                out.write_all(b"\"\"")?;
            }
            out.write_all(part.1)?;
        }
        out.write_all(b"\"")?;
    } else {
        out.write_all(song)?;
    }
    let (y, m, d) = (record.date >> 9, (record.date >> 5) & 15, record.date & 31);
    let digit = |n: u32| b'0' + (n % 10) as u8;
    let date = [
        b',',
        digit(y / 1000),
        digit(y / 100),
        digit(y / 10),
        digit(y),
        b'-',
        digit(m / 10),
        digit(m),
        b'-',
        digit(d / 10),
        digit(d),
        b',',
    ];
    out.write_all(&date)?;
    out.write_all(itoa::Buffer::new().format(record.sum).as_bytes())?;
    out.write_all(b"\n")
}

/// A buffered writer that counts the bytes written.
struct CountingWriter<W: Write> {
    inner: BufWriter<W>,
    bytes: u64,
}

impl<W: Write> CountingWriter<W> {
    fn new(inner: W) -> Self {
        CountingWriter {
            inner: BufWriter::with_capacity(1 << 20, inner),
            bytes: 0,
        }
    }
}

impl<W: Write> Write for CountingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.bytes += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// The "wide" data set of `benches/engine.rs` at `size` bytes, written to `dir` unless a file
/// of that spec is already there.
fn data_file(size: u64, dir: &Path) -> Result<PathBuf> {
    let path = dir.join(format!("spill_merge-wide-{size}.csv"));
    if path.exists() {
        return Ok(path);
    }
    std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    let spec = Spec {
        length: Length::Bytes(size),
        songs: 2_000_000,
        days: 365,
        skew: Skew::Uniform,
        ..Spec::default()
    };
    let partial = dir.join(format!("spill_merge-wide-{size}.csv.partial"));
    let generator = fixtures::Generator::new(spec)?;
    let file = File::create(&partial).with_context(|| format!("create {}", partial.display()))?;
    generator.write_to(BufWriter::new(file))?;
    std::fs::rename(&partial, &path)?;
    Ok(path)
}

fn compare(size: u64, limit: u64, runs: u16, threads: usize, dir: &Path) -> Result<()> {
    let data = data_file(size, dir)?;
    let temp_dir = dir.join("spill_merge-tmp");
    std::fs::create_dir_all(&temp_dir)?;
    let exe = std::env::current_exe()?;
    let child = |variant: Variant, limit: u64, out: Option<&Path>| -> Result<Measured> {
        let mut command = Command::new(&exe);
        command
            .arg("run")
            .arg(variant.name())
            .arg(&data)
            .arg(format!("--limit={limit}"))
            .arg(format!("--threads={threads}"))
            .arg("--temp-dir")
            .arg(&temp_dir);
        if let Some(out) = out {
            command.arg("--out").arg(out);
        }
        let output = command.output()?;
        ensure!(
            output.status.success(),
            "{} run failed: {}",
            variant.name(),
            String::from_utf8_lossy(&output.stderr)
        );
        Measured::parse(&String::from_utf8_lossy(&output.stdout))
    };
    // Both variants must give the same bytes.
    let outputs = [Variant::Engine, Variant::Extsort]
        .map(|variant| temp_dir.join(format!("{}.out.csv", variant.name())));
    for (variant, out) in [Variant::Engine, Variant::Extsort].iter().zip(&outputs) {
        child(*variant, limit, Some(out))?;
    }
    let same = std::fs::read(&outputs[0])? == std::fs::read(&outputs[1])?;
    for out in &outputs {
        std::fs::remove_file(out)?;
    }
    ensure!(
        same,
        "the engine's and the extsort variant's outputs differ"
    );
    eprintln!("outputs identical; {runs} rounds");

    let variants = [Variant::Engine, Variant::Extsort];
    let mut results: Vec<Vec<Measured>> = variants.iter().map(|_| Vec::new()).collect();
    for round in 0..runs {
        for (variant, measured) in variants.iter().zip(&mut results) {
            let m = child(*variant, limit, None)?;
            eprintln!("round {round} {}: {}", variant.name(), m.line());
            measured.push(m);
        }
    }
    println!(
        "data: {} MB wide ({}), budget {} MB, engine threads {threads}, medians of {runs} runs",
        size >> 20,
        data.display(),
        limit >> 20
    );
    println!("variant\tseconds\tread\tspill\tmerge\tpeak_rss_MB\ttemp_MB\truns\tgroups");
    let medians: Vec<[f64; 6]> = results
        .iter()
        .map(|measured| {
            let median = |field: fn(&Measured) -> f64| {
                let mut values: Vec<f64> = measured.iter().map(field).collect();
                values.sort_by(f64::total_cmp);
                values[values.len() / 2]
            };
            [
                median(|m| m.seconds),
                median(|m| m.phases.read),
                median(|m| m.phases.spill),
                median(|m| m.phases.merge),
                median(|m| m.peak_rss as f64 / 1048576.0),
                median(|m| m.temp_written as f64 / 1048576.0),
            ]
        })
        .collect();
    for ((variant, measured), m) in variants.iter().zip(&results).zip(&medians) {
        println!(
            "{}\t{:.2}\t{:.2}\t{:.2}\t{:.2}\t{:.0}\t{:.0}\t{}\t{}",
            variant.name(),
            m[0],
            m[1],
            m[2],
            m[3],
            m[4],
            m[5],
            measured[0].spills,
            measured[0].groups
        );
    }
    let (engine, extsort) = (&medians[0], &medians[1]);
    println!(
        "extsort/engine: whole run {:.2}x, spill + merge {:.2}x, peak RSS {:.2}x, temp bytes {:.2}x",
        extsort[0] / engine[0],
        (extsort[2] + extsort[3]) / (engine[2] + engine[3]),
        extsort[4] / engine[4],
        extsort[5] / engine[5]
    );
    Ok(())
}
