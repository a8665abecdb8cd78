//! Runs the engine: a producer cuts the input into blocks, worker threads parse them into
//! their own tables (spilling sorted runs to disk when the tables together outgrow the
//! memory budget), and the tables and runs are merged into the sorted CSV output.

pub(crate) mod shared;
pub(crate) mod worker;

use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::aggregate::shards::ShardedTable;
use crate::error::InvalidRow;
use crate::input::Source;
use crate::input::blocks::{Block, produce_mapped, produce_pieces, produce_stream};
use crate::merge::{fan_in, merge_in_memory, merge_with_spills};
use crate::output::csv::write_header;
use crate::output::writer::with_writer_thread;
use crate::pipeline::shared::{LocatedInvalid, Shared};
use crate::pipeline::worker::worker;
use crate::spill::budget::{Plan, TableBudget};
use crate::spill::rounds::Rounds;
use crate::{Config, Control, Error, Phase, Summary};

/// Runs the whole pipeline, writing the CSV to `out`.
pub(crate) fn run(
    source: Source<'_>,
    out: &mut (dyn Write + Send),
    config: &Config,
    control: &Control,
) -> Result<Summary, Error> {
    let threads = config.effective_threads().max(1);
    let plan = Plan::new(config.memory_limit, threads, config.block_bytes);
    let (in_flight, block_bytes) = (plan.in_flight, plan.block_bytes);
    let temp_dir = config.effective_temp_dir();
    // A temporary directory that cannot take a spilled run fails now, not when the first run
    // spills, which may be minutes into a large input.
    tempfile::tempfile_in(&temp_dir).map_err(|source| Error::Temp {
        path: temp_dir.clone(),
        source,
    })?;
    let shared = Shared::new(
        config,
        control,
        TableBudget::new(plan.table_bytes, threads),
        Rounds::new(threads),
        temp_dir,
    );
    let input_bytes = AtomicU64::new(0);
    let rows = AtomicU64::new(0);
    let started = std::time::Instant::now();

    let (block_tx, block_rx) = crossbeam_channel::bounded::<Block>(threads);
    let (pool_tx, pool_rx) = crossbeam_channel::bounded::<Vec<u8>>(in_flight);
    let (map, growth, mut unmapped) = match source {
        Source::Mapped(map) => (Some(map), None, None),
        Source::Growing(map, growth) => (Some(map), Some(growth), None),
        unmapped => (None, None, Some(unmapped)),
    };
    let map = map.as_ref();

    let (header, tables) = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..threads)
            .map(|me| {
                let (rx, pool_tx) = (block_rx.clone(), pool_tx.clone());
                let (shared, input_bytes, rows) = (&shared, &input_bytes, &rows);
                scope.spawn(move || worker(me, rx, pool_tx, map, shared, input_bytes, rows))
            })
            .collect();
        drop(block_rx);
        // Only the workers give buffers back: should they all be gone, `take` gets none.
        drop(pool_tx);
        let send = |block: Block| !shared.stopped() && block_tx.send(block).is_ok();
        let mut created = 0;
        let take = || {
            if created < in_flight {
                if let Ok(buf) = pool_rx.try_recv() {
                    return buf;
                }
                created += 1;
                return Vec::with_capacity(plan.buffer_capacity());
            }
            pool_rx.recv().unwrap_or_default()
        };
        let header = match (map, unmapped.take()) {
            (Some(map), _) => produce_mapped(map, growth, block_bytes, control, send),
            (None, Some(Source::Stream(reader))) => {
                produce_stream(reader, block_bytes, control, take, send)
            }
            (None, Some(Source::Pieces(pieces))) => {
                produce_pieces(pieces, block_bytes, control, take, send)
            }
            (None, _) => Err(Error::EmptyInput),
        };
        drop(block_tx);
        let tables: Vec<ShardedTable> = workers
            .into_iter()
            .filter_map(|handle| handle.join().ok())
            .collect();
        (header, tables)
    });
    // The pooled stream buffers are not needed for the merge.
    drop(pool_rx);

    if control.is_cancelled() {
        return Err(Error::Cancelled);
    }
    if let Some(error) = shared.take_fatal() {
        return Err(error);
    }
    let header = header?;
    if tables.len() != threads {
        return Err(Error::Threads("a worker thread panicked".into()));
    }
    let block_lines = shared.block_lines();
    let locate = |invalid: &LocatedInvalid| InvalidRow {
        line: 1
            + header.newlines
            + block_lines.iter().take(invalid.block as usize).sum::<u64>()
            + invalid.line,
        field: invalid.field,
        reason: invalid.reason.clone(),
    };
    if let Some(first) = shared.take_first_invalid() {
        return Err(Error::Invalid(locate(&first)));
    }
    let mut samples = shared.take_samples();
    samples.sort_by_key(LocatedInvalid::key);
    samples.truncate(config.max_reported_invalid);

    control.progress().set_phase(Phase::Merge);
    let scanned = started.elapsed();
    let spills = std::mem::take(&mut *shared.spills.lock());
    let spilled_runs = shared.spilled_runs.load(Ordering::Relaxed);
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .map_err(|e| Error::Threads(e.to_string()))?;
    let (groups, output_bytes) = with_writer_thread(out, control, |write| {
        let mut head = Vec::new();
        write_header(&mut head).map_err(|source| Error::Write {
            path: PathBuf::from("<output>"),
            source,
        })?;
        write(&mut head)?;
        if spills.is_empty() {
            merge_in_memory(&pool, &tables, write)
        } else {
            let fan_in = fan_in(config.memory_limit);
            // The merge's buffers get what the input blocks held.
            let merge_bytes = plan.in_flight * plan.block_bytes;
            let dir = &shared.temp_dir;
            merge_with_spills(&pool, &tables, spills, fan_in, merge_bytes, dir, write)
        }
    })?;
    tracing::debug!(
        scan_seconds = scanned.as_secs_f64(),
        merge_seconds = (started.elapsed() - scanned).as_secs_f64(),
        spilled_runs,
        "engine phases"
    );
    drop_in_background(tables);
    Ok(Summary {
        rows_read: rows.load(Ordering::Relaxed),
        input_bytes: header.bytes as u64 + input_bytes.load(Ordering::Relaxed),
        rows_skipped: shared.skipped(),
        groups_written: groups,
        output_bytes,
        spilled_runs,
        spilled_bytes: shared.spilled_bytes.load(Ordering::Relaxed),
        elapsed_seconds: 0.0,
        invalid_samples: samples.iter().map(|s| locate(s).to_string()).collect(),
    })
}

/// Frees the tables on a thread of their own: hundreds of thousands of allocations, whose
/// freeing the caller (syncing and renaming the output) need not wait for. The freed memory
/// then goes back to the system, for long-lived callers (a service's next task). Should no
/// thread start, the tables are freed here (with the failed thread's closure).
fn drop_in_background(tables: Vec<ShardedTable>) {
    let spawned = std::thread::Builder::new()
        .name("free-tables".into())
        .spawn(move || {
            drop(tables);
            return_free_memory();
        });
    if let Err(error) = spawned {
        tracing::debug!(%error, "freed the tables in the calling thread");
    }
}

/// Gives freed heap pages back to the system (after a run in long-lived processes), so that
/// resident memory tracks the work in progress rather than the allocator's high-water mark.
pub fn return_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only releases free memory held by glibc's allocator.
    unsafe {
        libc::malloc_trim(0);
    }
}
