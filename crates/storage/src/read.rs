//! Objects read as streams: as the engine's input ([`ObjectReader`], its pieces of
//! [`PIECE_BYTES`] fed by a task that resumes a broken read where it stopped, from the same
//! version of the object), or as a download's body ([`Download`]).

use std::io;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures_util::stream::BoxStream;
use futures_util::{StreamExt, TryStreamExt};
use object_store::path::Path as ObjectPath;
use object_store::{GetOptions, GetRange, ObjectStore, ObjectStoreExt};
use std::sync::Arc;
use tokio::sync::mpsc;

use crate::{Bucket, StorageError};

/// Size of the pieces handed to the engine (smaller chunks from the network are gathered).
pub const PIECE_BYTES: usize = 1 << 20;
/// Pieces read ahead of the engine, at most.
const PIECES_AHEAD: usize = 8;
/// Reads resumed in a row without a byte between them before the input is given up.
const MAX_RESUMES: u32 = 5;
const FIRST_RESUME_DELAY: Duration = Duration::from_millis(200);

/// An object read as the engine's input, piece by piece.
pub struct ObjectReader {
    pieces: mpsc::Receiver<Piece>,
    len: u64,
    key: String,
    ended: bool,
}

enum Piece {
    Data(Bytes),
    End,
    Failed(String),
}

/// An object read as a download: its size and its bytes.
pub struct Download {
    pub len: u64,
    pub body: BoxStream<'static, io::Result<Bytes>>,
}

impl Bucket {
    /// Starts reading the object `key` for the engine.
    pub async fn reader(&self, key: &str) -> Result<ObjectReader, StorageError> {
        let path = self.path(key);
        let meta = self
            .store
            .head(&path)
            .await
            .map_err(|e| StorageError::object(key, e))?;
        let (sender, pieces) = mpsc::channel(PIECES_AHEAD);
        let feed = Feed {
            store: self.store.clone(),
            path,
            len: meta.size,
            e_tag: meta.e_tag,
            pieces: sender,
        };
        tokio::spawn(feed.run());
        Ok(ObjectReader {
            pieces,
            len: meta.size,
            key: key.to_string(),
            ended: false,
        })
    }

    /// The object `key` as a download; `None` when there is none.
    pub async fn download(&self, key: &str) -> Result<Option<Download>, StorageError> {
        match self.store.get(&self.path(key)).await {
            Ok(result) => Ok(Some(Download {
                len: result.meta.size,
                body: result.into_stream().map_err(io::Error::from).boxed(),
            })),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(StorageError::object(key, e)),
        }
    }
}

impl ObjectReader {
    /// The object's size.
    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl engine::Pieces for ObjectReader {
    fn next_piece(&mut self) -> io::Result<Option<Bytes>> {
        if self.ended {
            return Ok(None);
        }
        match self.pieces.blocking_recv() {
            Some(Piece::Data(bytes)) => Ok(Some(bytes)),
            Some(Piece::End) => {
                self.ended = true;
                Ok(None)
            }
            Some(Piece::Failed(message)) => Err(io::Error::other(format!(
                "cannot read {} from the object storage: {message}",
                self.key
            ))),
            None => Err(io::Error::other(format!(
                "the read of {} stopped before its end",
                self.key
            ))),
        }
    }
}

/// The task that reads an object into an [`ObjectReader`]'s pieces.
struct Feed {
    store: Arc<dyn ObjectStore>,
    path: ObjectPath,
    len: u64,
    e_tag: Option<String>,
    pieces: mpsc::Sender<Piece>,
}

impl Feed {
    async fn run(self) {
        let mut offset = 0u64;
        let mut gathered = BytesMut::new();
        let mut failures = 0;
        let mut delay = FIRST_RESUME_DELAY;
        while offset < self.len {
            let options = GetOptions {
                range: (offset > 0).then_some(GetRange::Offset(offset)),
                // A resumed read continues the same object, or fails.
                if_match: self.e_tag.clone(),
                ..Default::default()
            };
            let error = match self.store.get_opts(&self.path, options).await {
                Ok(result) => {
                    let mut stream = result.into_stream();
                    loop {
                        match stream.next().await {
                            Some(Ok(chunk)) => {
                                offset += chunk.len() as u64;
                                (failures, delay) = (0, FIRST_RESUME_DELAY);
                                if !self.gather(&mut gathered, chunk).await {
                                    return; // the reader is gone
                                }
                            }
                            Some(Err(e)) => break e.to_string(),
                            None if offset >= self.len => break String::new(),
                            None => break format!("the answer stopped at byte {offset}"),
                        }
                    }
                }
                Err(
                    e @ (object_store::Error::NotFound { .. }
                    | object_store::Error::Precondition { .. }),
                ) => {
                    self.send(Piece::Failed(format!(
                        "the object changed or vanished: {e}"
                    )))
                    .await;
                    return;
                }
                Err(e) => e.to_string(),
            };
            if error.is_empty() {
                break;
            }
            failures += 1;
            if failures > MAX_RESUMES {
                self.send(Piece::Failed(error)).await;
                return;
            }
            tracing::warn!(
                object = %self.path,
                offset,
                "reading the object failed, resuming in {delay:?}: {error}"
            );
            tokio::time::sleep(delay).await;
            delay *= 2;
        }
        if !gathered.is_empty() && !self.send(Piece::Data(gathered.split().freeze())).await {
            return;
        }
        self.send(Piece::End).await;
    }

    /// Adds `chunk` to the piece being gathered, and hands it over once it is big enough.
    async fn gather(&self, gathered: &mut BytesMut, chunk: Bytes) -> bool {
        if gathered.is_empty() && chunk.len() >= PIECE_BYTES {
            return self.send(Piece::Data(chunk)).await;
        }
        gathered.extend_from_slice(&chunk);
        if gathered.len() < PIECE_BYTES {
            return true;
        }
        self.send(Piece::Data(gathered.split().freeze())).await
    }

    async fn send(&self, piece: Piece) -> bool {
        self.pieces.send(piece).await.is_ok()
    }
}
