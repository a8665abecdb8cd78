//! Whole-run aggregation through the public API on generated data: a memory-mapped file and a
//! byte stream as input, with a budget large enough to hold everything (`unbounded`) and with
//! one an eighth of the input (`spill`), which forces sorted runs to disk and a merge.
//! Throughput is in input bytes. `BENCH_SIZE=64M cargo bench -p bench` changes the data size.

use std::hint::black_box;
use std::io::Write;
use std::path::Path;
use std::time::Duration;

use bench::{dataset_size, datasets};
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use engine::{Config, Control, Input, Summary};

/// A budget no benchmark input comes near.
const UNBOUNDED: u64 = 8 << 30;

fn run(input: Input<'_>, config: &Config) -> Summary {
    engine::aggregate_to_writer(input, &mut std::io::sink(), config, &Control::new())
        .unwrap_or_else(|e| panic!("generated data must aggregate: {e}"))
}

fn file_input(path: &Path) -> Input<'_> {
    Input::File(path)
}

fn stream_input(data: &[u8]) -> Input<'_> {
    Input::Reader {
        reader: Box::new(data),
        len: Some(data.len() as u64),
    }
}

fn whole_run(c: &mut Criterion) {
    let size = dataset_size().unwrap_or_else(|e| panic!("{e}"));
    for dataset in datasets(size) {
        let data = dataset.generate();
        let mut file = tempfile::NamedTempFile::new().expect("a temporary file");
        file.write_all(&data).expect("write the data set");
        file.flush().expect("flush the data set");
        let modes = [
            ("unbounded", UNBOUNDED),
            ("spill", (data.len() as u64 / 8).max(64 << 10)),
        ];
        let mut group = c.benchmark_group(format!("whole_run/{}", dataset.name));
        group.throughput(Throughput::Bytes(data.len() as u64));
        group.sample_size(10);
        group.warm_up_time(Duration::from_secs(1));
        group.measurement_time(Duration::from_secs(5));
        for (mode, memory_limit) in modes {
            let config = Config {
                memory_limit,
                ..Config::default()
            };
            let summary = run(file_input(file.path()), &config);
            if mode == "spill" && summary.spilled_runs == 0 {
                eprintln!(
                    "warning: whole_run/{}/{mode}: nothing spilled with a {memory_limit} byte budget",
                    dataset.name
                );
            }
            group.bench_function(BenchmarkId::new("file", mode), |b| {
                b.iter(|| black_box(run(file_input(file.path()), &config)))
            });
            group.bench_function(BenchmarkId::new("stream", mode), |b| {
                b.iter(|| black_box(run(stream_input(&data), &config)))
            });
        }
        group.finish();
    }
}

criterion_group!(benches, whole_run);
criterion_main!(benches);
