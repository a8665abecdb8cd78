//! The entry points: opens the input (memory-mapped when it is a regular or growing file, a
//! stream otherwise), runs the pipeline on it and times the run; [`aggregate`] also makes the
//! output file appear only when the run succeeds.

use std::fs::File;
use std::io::Write;
use std::path::Path;
use std::time::Instant;

use crate::input::blocks::growth_error;
use crate::input::{Input, Source};
use crate::output::file::OutputFile;
use crate::pipeline;
use crate::{Config, Control, Error, Phase, Summary};

/// Aggregates `input` into the CSV file `output`, which appears only when the run succeeds:
/// the result is written to a temporary file beside it and renamed (see [`OutputFile`]; a device
/// or FIFO such as `/dev/null` is written in place).
pub fn aggregate(
    input: Input<'_>,
    output: &Path,
    config: &Config,
    control: &Control,
) -> Result<Summary, Error> {
    let write_err = |source| Error::Write {
        path: output.to_path_buf(),
        source,
    };
    let out = OutputFile::create(output).map_err(write_err)?;
    // The writer knows no name (`<output>`): a failed write names the file.
    let summary =
        aggregate_to_writer(input, &mut out.file(), config, control).map_err(|e| match e {
            Error::Write { source, .. } => write_err(source),
            other => other,
        })?;
    out.commit().map_err(write_err)?;
    Ok(summary)
}

/// Aggregates `input` and writes the result CSV to `out`. On error, what was written so far
/// must be discarded by the caller ([`aggregate`] does this for files).
pub fn aggregate_to_writer(
    input: Input<'_>,
    out: &mut (dyn Write + Send),
    config: &Config,
    control: &Control,
) -> Result<Summary, Error> {
    let started = Instant::now();
    let progress = control.progress();
    progress.set_phase(Phase::Read);
    let mut summary = match input {
        Input::File(path) => {
            let read_err = |source| Error::Read {
                path: path.to_path_buf(),
                source,
            };
            let mut file = File::open(path).map_err(read_err)?;
            let meta = file.metadata().map_err(read_err)?;
            if meta.is_file() {
                progress.set_total(meta.len());
                if meta.len() == 0 {
                    return Err(Error::EmptyInput);
                }
                // SAFETY: the engine only reads the map. Another process truncating the file
                // while it runs would fault (SIGBUS), as with any memory-mapped reader; the
                // service only maps files it owns.
                let map = unsafe { memmap2::MmapOptions::new().map(&file) }.map_err(read_err)?;
                let _ = map.advise(memmap2::Advice::Sequential);
                pipeline::run(Source::Mapped(map), out, config, control)?
            } else {
                // A pipe or a device (`<(command)`, `/dev/stdin`): nothing to map, and no size
                // (0, which is no empty input): read as a stream.
                let source = Source::Stream(&mut file);
                pipeline::run(source, out, config, control).map_err(|e| match e {
                    Error::Read { source, .. } => read_err(source),
                    other => other,
                })?
            }
        }
        Input::Reader { mut reader, len } => {
            progress.set_total(len.unwrap_or(0));
            pipeline::run(Source::Stream(&mut reader), out, config, control)?
        }
        Input::Pieces { mut pieces, len } => {
            progress.set_total(len.unwrap_or(0));
            pipeline::run(Source::Pieces(&mut *pieces), out, config, control)?
        }
        Input::Growing {
            file,
            capacity,
            growth,
        } => {
            let capacity = match capacity {
                Some(capacity) => capacity,
                None => growth.wait_beyond(u64::MAX).map_err(growth_error)?,
            };
            progress.set_total(capacity);
            let len = usize::try_from(capacity)
                .map_err(|_| growth_error(std::io::Error::other("the file is too large to map")))?;
            if len == 0 {
                return Err(Error::EmptyInput);
            }
            // SAFETY: as for `Input::File`; the engine reads no byte of the map before
            // `growth` reports it written (the pages past the file's end would fault).
            let map =
                unsafe { memmap2::MmapOptions::new().len(len).map(file) }.map_err(growth_error)?;
            let _ = map.advise(memmap2::Advice::Sequential);
            pipeline::run(Source::Growing(map, growth), out, config, control)?
        }
    };
    progress.set_phase(Phase::Done);
    summary.elapsed_seconds = started.elapsed().as_secs_f64();
    Ok(summary)
}
