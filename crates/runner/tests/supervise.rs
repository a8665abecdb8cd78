//! A job on the real engine, supervised: how each way of ending is told apart, and what the
//! report sees meanwhile.

use std::ops::ControlFlow;
use std::time::Duration;

use engine::{Config, Control, Pieces};
use runner::{End, Job, Report, Source, supervise};
use task_protocol::WorkerEvent;
use tokio_util::sync::CancellationToken;

const EVERY: Duration = Duration::from_millis(20);

/// An endless upload: the header, then the same valid rows, a piece every millisecond.
struct Endless {
    header_sent: bool,
}

impl Pieces for Endless {
    fn next_piece(&mut self) -> std::io::Result<Option<bytes::Bytes>> {
        if !std::mem::replace(&mut self.header_sent, true) {
            return Ok(Some(bytes::Bytes::from_static(
                b"Song,Date,Number of Plays\n",
            )));
        }
        std::thread::sleep(Duration::from_millis(1));
        Ok(Some(bytes::Bytes::from("A,2020-01-01,1\n".repeat(1000))))
    }
}

/// Counts its ticks and the rows it saw; stops the engine at tick `stop_at`, if any.
#[derive(Default)]
struct Counting {
    ticks: u32,
    rows: u64,
    stop_at: Option<u32>,
}

impl Report for Counting {
    type Stop = &'static str;

    async fn tick(&mut self, control: &Control) -> ControlFlow<&'static str> {
        self.ticks += 1;
        self.rows = control.progress().snapshot().rows;
        match self.stop_at {
            Some(at) if self.ticks >= at => ControlFlow::Break("cancelled by the report"),
            _ => ControlFlow::Continue(()),
        }
    }
}

fn job(dir: &tempfile::TempDir, source: Source) -> Job {
    Job {
        source,
        // A folder that does not exist yet: the job makes it.
        output: dir.path().join("processed").join("out.csv"),
        config: Config {
            threads: 2,
            // Small blocks: the engine counts rows block by block, and the endless upload's
            // rows are soon seen.
            block_bytes: 16 << 10,
            temp_dir: Some(dir.path().to_path_buf()),
            ..Config::default()
        },
    }
}

fn endless() -> Source {
    Source::Pieces(Box::new(Endless { header_sent: false }), None)
}

/// Runs `job` under `control`, supervised with `report` until it ends.
async fn run(
    job: Job,
    control: &Control,
    report: &mut Counting,
    abort: &CancellationToken,
) -> End<&'static str> {
    let engine = job.spawn(control.clone());
    supervise(engine, control, EVERY, report, abort).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_finished_run_gives_its_summary_and_the_done_event() {
    let dir = tempfile::tempdir().unwrap();
    let seed = fixtures::golden::seed();
    let fixtures::golden::Expected::Output(expected) = &seed.expected else {
        panic!("the seed case has an output");
    };
    let job = job(&dir, Source::File(seed.input.clone()));
    let output = job.output.clone();
    let (control, mut report) = (Control::new(), Counting::default());
    let end = run(job, &control, &mut report, &CancellationToken::new()).await;
    let End::Finished(summary) = &end else {
        panic!("not finished: {end:?}");
    };
    assert_eq!((summary.rows_read, summary.groups_written), (7, 4));
    assert_eq!(
        end.final_event(),
        Some(WorkerEvent::Done {
            rows: 7,
            groups: 4,
            output_bytes: summary.output_bytes
        })
    );
    assert_eq!(&std::fs::read(&output).unwrap(), expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_fails_with_the_engines_message() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.csv");
    std::fs::write(&input, "Song,Date,Number of Plays\nA,2020-13-01,5\n").unwrap();
    let (control, mut report) = (Control::new(), Counting::default());
    let end = run(
        job(&dir, Source::File(input)),
        &control,
        &mut report,
        &CancellationToken::new(),
    )
    .await;
    let Some(WorkerEvent::Failed { error }) = end.final_event() else {
        panic!("not failed: {end:?}");
    };
    assert!(
        error.contains("line 2") && error.contains("Date"),
        "{error}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_where_the_output_folder_should_be_fails_the_run() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.csv");
    std::fs::write(&input, "Song,Date,Number of Plays\nA,2020-01-01,5\n").unwrap();
    let job = job(&dir, Source::File(input));
    let folder = job.output.parent().unwrap().to_path_buf();
    std::fs::write(&folder, "a file where a directory should be").unwrap();
    let (control, mut report) = (Control::new(), Counting::default());
    let end = run(job, &control, &mut report, &CancellationToken::new()).await;
    let Some(WorkerEvent::Failed { error }) = end.final_event() else {
        panic!("not failed: {end:?}");
    };
    let folder = folder.display().to_string();
    assert!(
        error.contains(&folder) && error.contains("Not a directory"),
        "{error}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_report_sees_progress_and_can_stop_the_engine() {
    let dir = tempfile::tempdir().unwrap();
    let control = Control::new();
    let mut report = Counting {
        stop_at: Some(10),
        ..Counting::default()
    };
    let end = run(
        job(&dir, endless()),
        &control,
        &mut report,
        &CancellationToken::new(),
    )
    .await;
    assert!(
        matches!(end, End::Stopped("cancelled by the report")),
        "{end:?}"
    );
    assert_eq!(report.ticks, 10);
    assert!(report.rows > 0, "the report saw no rows");
    assert!(control.is_cancelled());
    assert!(end.final_event().is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_abort_interrupts_and_another_cancel_is_told_apart() {
    let dir = tempfile::tempdir().unwrap();
    let abort = CancellationToken::new();
    let control = Control::new();
    tokio::spawn(later(abort.clone(), CancellationToken::cancel));
    let end = run(
        job(&dir, endless()),
        &control,
        &mut Counting::default(),
        &abort,
    )
    .await;
    assert!(matches!(end, End::Interrupted), "{end:?}");

    let control = Control::new();
    tokio::spawn(later(control.clone(), |control| control.cancel()));
    let never = CancellationToken::new();
    let end = run(
        job(&dir, endless()),
        &control,
        &mut Counting::default(),
        &never,
    )
    .await;
    assert!(matches!(end, End::Cancelled), "{end:?}");
}

/// Does `what` to `target` a little later, while the engine runs.
async fn later<T>(target: T, what: impl FnOnce(&T)) {
    tokio::time::sleep(Duration::from_millis(100)).await;
    what(&target);
}
