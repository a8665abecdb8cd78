use super::*;
use bytes::Bytes;
use engine::Pieces;
use futures_util::TryStreamExt;

fn storage(bucket: Option<Bucket>) -> (tempfile::TempDir, Storage) {
    let dir = tempfile::tempdir().unwrap();
    let storage = Storage::open(dir.path(), bucket).unwrap();
    (dir, storage)
}

/// Reads an input to its end on a blocking thread, as the engine does.
async fn read_all(input: Input) -> std::io::Result<Vec<u8>> {
    match input {
        Input::File(path) => std::fs::read(path),
        Input::Object(mut reader) => tokio::task::spawn_blocking(move || {
            let mut all = Vec::new();
            while let Some(piece) = reader.next_piece()? {
                all.extend_from_slice(&piece);
            }
            Ok(all)
        })
        .await
        .unwrap(),
    }
}

async fn download(storage: &Storage, key: &str) -> Option<Vec<u8>> {
    let download = storage.download(key).await.unwrap()?;
    let chunks: Vec<_> = download.body.try_collect().await.unwrap();
    let all = chunks.concat();
    assert_eq!(all.len() as u64, download.len);
    Some(all)
}

/// Bytes of `len` that are not all the same, over several parts.
fn data(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 7 % 251) as u8).collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_result_goes_to_the_bucket_and_reads_back_whole() {
    let (_dir, storage) = storage(Some(Bucket::in_memory("tasks")));
    let key = "processed_data/a.csv";
    let local = storage.local_path(key).unwrap();
    let bytes = data(2 * crate::PART_BYTES + 12345);
    std::fs::write(&local, &bytes).unwrap();
    storage.commit(key).await.unwrap();
    assert!(!local.exists(), "the local copy is removed once stored");
    assert_eq!(download(&storage, key).await.unwrap(), bytes);
    assert_eq!(
        read_all(storage.input(key).await.unwrap()).await.unwrap(),
        bytes
    );
    storage.remove(key).await.unwrap();
    assert!(download(&storage, key).await.is_none());
    assert!(matches!(
        storage.input(key).await,
        Err(StorageError::NotFound(_))
    ));
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unfinished_upload_leaves_no_object() {
    let bucket = Bucket::in_memory("");
    let mut writer = bucket.writer("raw_data/x.csv").await.unwrap();
    writer.write(data(1000).into()).await.unwrap();
    writer.abort().await;
    assert_eq!(bucket.size("raw_data/x.csv").await.unwrap(), None);
    let mut writer = bucket.writer("raw_data/y.csv").await.unwrap();
    writer.write(data(1000).into()).await.unwrap();
    drop(writer);
    assert_eq!(bucket.size("raw_data/y.csv").await.unwrap(), None);
    let mut writer = bucket.writer("raw_data/z.csv").await.unwrap();
    writer.write(data(10).into()).await.unwrap();
    writer.write(data(20).into()).await.unwrap();
    assert_eq!(writer.finish().await.unwrap(), 30);
    assert_eq!(bucket.size("raw_data/z.csv").await.unwrap(), Some(30));
}

#[tokio::test(flavor = "multi_thread")]
async fn an_empty_object_reads_as_an_empty_input() {
    let (_dir, storage) = storage(Some(Bucket::in_memory("p")));
    let key = "raw_data/empty.csv";
    std::fs::write(storage.local_path(key).unwrap(), b"").unwrap();
    storage.commit(key).await.unwrap();
    assert!(
        read_all(storage.input(key).await.unwrap())
            .await
            .unwrap()
            .is_empty()
    );
}

#[tokio::test]
async fn the_directory_alone_keeps_its_files() {
    let (_dir, storage) = storage(None);
    let key = "processed_data/b.csv";
    std::fs::write(storage.local_path(key).unwrap(), b"abc").unwrap();
    storage.commit(key).await.unwrap();
    assert_eq!(download(&storage, key).await.unwrap(), b"abc");
    assert!(matches!(storage.input(key).await.unwrap(), Input::File(_)));
    storage.remove(key).await.unwrap();
    assert!(download(&storage, key).await.is_none());
    storage.remove(key).await.unwrap();
}

#[test]
fn keys_resolve_under_the_root_only() {
    let storage = Storage {
        root: "/data".into(),
        bucket: None,
    };
    assert_eq!(
        storage.local_path("raw_data/a.csv").unwrap(),
        Path::new("/data/raw_data/a.csv")
    );
    assert_eq!(
        storage.local_path("./processed_data/a.csv").unwrap(),
        Path::new("/data/processed_data/a.csv")
    );
    for bad in [
        "",
        "/etc/passwd",
        "../secret.csv",
        "raw_data/../../x.csv",
        ".",
    ] {
        let err = storage.local_path(bad).unwrap_err();
        assert!(err.to_string().contains("refused key"), "{bad}: {err}");
    }
}

#[test]
fn old_partial_uploads_are_removed_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let storage = Storage::open(dir.path(), None).unwrap();
    let old = storage.upload_temp_file().unwrap().keep().unwrap().1;
    let recent = storage.upload_temp_file().unwrap().keep().unwrap().1;
    let kept = dir.path().join("raw_data/.upload-kept.csv");
    std::fs::write(&kept, "not partial").unwrap();
    let two_days_ago = std::time::SystemTime::now() - 2 * STALE_UPLOAD_AGE;
    for path in [&old, &kept] {
        std::fs::File::options()
            .write(true)
            .open(path)
            .unwrap()
            .set_modified(two_days_ago)
            .unwrap();
    }
    Storage::open(dir.path(), None).unwrap();
    assert!(!old.exists());
    assert!(recent.exists());
    assert!(kept.exists());
}

#[tokio::test(flavor = "multi_thread")]
async fn pieces_of_any_size_make_the_same_object() {
    let (_dir, storage) = storage(Some(Bucket::in_memory("")));
    let bucket = storage.bucket().unwrap();
    let bytes = data(crate::PART_BYTES * 2 + 777);
    let mut writer = bucket.writer("raw_data/odd.csv").await.unwrap();
    let mut rest = bytes.as_slice();
    for size in [1, crate::PART_BYTES - 2, 3, 4_000_001, crate::PART_BYTES]
        .iter()
        .cycle()
    {
        if rest.is_empty() {
            break;
        }
        let (piece, tail) = rest.split_at((*size).min(rest.len()));
        writer.write(Bytes::copy_from_slice(piece)).await.unwrap();
        rest = tail;
    }
    assert_eq!(writer.finish().await.unwrap(), bytes.len() as u64);
    let input = storage.input("raw_data/odd.csv").await.unwrap();
    assert_eq!(read_all(input).await.unwrap(), bytes);
}
