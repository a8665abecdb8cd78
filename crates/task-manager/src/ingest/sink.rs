//! Where an upload's bytes go: its spool file (the stored upload when the storage is a
//! directory; a scratch copy the embedded engine follows when it is a bucket), its object in
//! the bucket (written as it arrives), or both.

use axum::body::Bytes;
use storage::ObjectWriter;

use super::IngestError;
use super::spool::Spool;

/// An upload's destinations.
pub struct Sink {
    pub spool: Option<Spool>,
    pub object: Option<ObjectWriter>,
}

impl Sink {
    /// Hands `data` to each destination; waits while one is behind.
    pub async fn write(&mut self, data: Bytes) -> Result<(), IngestError> {
        if let Some(spool) = &mut self.spool {
            spool
                .write(data.clone())
                .await
                .map_err(IngestError::Storage)?;
        }
        if let Some(object) = &mut self.object {
            object.write(data).await.map_err(IngestError::Bucket)?;
        }
        Ok(())
    }

    /// Completes the spool (synced when asked to), then the object, which then exists.
    pub async fn finish(&mut self) -> Result<(), IngestError> {
        if let Some(spool) = &mut self.spool {
            spool.finish().await.map_err(IngestError::Storage)?;
        }
        if let Some(object) = self.object.take() {
            object.finish().await.map_err(IngestError::Bucket)?;
        }
        Ok(())
    }
}
