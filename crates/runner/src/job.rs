//! What the engine does for one task: read a [`Source`], write the result file, with the
//! task's engine configuration. The engine blocks, so a job runs on a blocking thread of the
//! async runtime, and gives its memory back to the system when it ends: the process lives on.

use std::fs::File;
use std::path::PathBuf;

use engine::{Config, Control, Growth, Input, Pieces, Summary};
use tokio::task::JoinHandle;

/// An engine at work on a blocking thread; its result once it ends.
pub type Engine = JoinHandle<Result<Summary, engine::Error>>;

/// What the engine reads for a task.
pub enum Source {
    /// A complete file.
    File(PathBuf),
    /// An upload's pieces as they arrive, with the upload's length when it is known.
    Pieces(Box<dyn Pieces>, Option<u64>),
    /// A file still being written, with the most bytes it can reach when that is known
    /// (without it, the engine waits for the whole file).
    Growing(Box<dyn GrowingFile>, Option<u64>),
}

/// A file still being written, and how far it has reached.
pub trait GrowingFile: Growth {
    /// The file, open for reading.
    fn file(&self) -> &File;
}

/// One run of the engine.
pub struct Job {
    pub source: Source,
    /// The result file; its folder is made when it is missing.
    pub output: PathBuf,
    pub config: Config,
}

impl Job {
    /// Starts the engine on a blocking thread.
    pub fn spawn(self, control: Control) -> Engine {
        self.spawn_holding(control, ())
    }

    /// [`Job::spawn`], holding `guard` (a runner's permit, say) until the engine ends.
    pub fn spawn_holding(self, control: Control, guard: impl Send + 'static) -> Engine {
        tokio::task::spawn_blocking(move || {
            let result = self.run(&control);
            drop(guard);
            engine::return_free_memory();
            result
        })
    }

    fn run(self, control: &Control) -> Result<Summary, engine::Error> {
        // Only a missing folder is made: anything else in its place is the engine's to report
        // ("Not a directory"), as for any unusable output path.
        if let Some(dir) = self.output.parent()
            && matches!(dir.try_exists(), Ok(false))
            && let Err(source) = std::fs::create_dir_all(dir)
        {
            let path = dir.to_path_buf();
            return Err(engine::Error::Write { path, source });
        }
        let (output, config) = (&self.output, &self.config);
        match self.source {
            Source::File(path) => engine::aggregate(Input::File(&path), output, config, control),
            Source::Pieces(pieces, len) => {
                engine::aggregate(Input::Pieces { pieces, len }, output, config, control)
            }
            Source::Growing(growing, capacity) => {
                let input = Input::Growing {
                    file: growing.file(),
                    capacity,
                    growth: &*growing,
                };
                engine::aggregate(input, output, config, control)
            }
        }
    }
}
