//! Writes the output on a thread of its own: the merge hands over full buffers and goes on
//! while the writer copies them into the file, double-buffered.

use std::io::Write;
use std::path::PathBuf;

use crate::{Control, Error};

/// Hands a full buffer to the writer, leaving an empty one in its place.
pub(crate) type WriteBuf<'a> = &'a mut dyn FnMut(&mut Vec<u8>) -> Result<(), Error>;

/// Runs `merge` with a function that queues buffers for a writer thread writing to `out`.
/// Returns what `merge` returns and the bytes written. A write error ends the run with that
/// error; cancellation is checked at each buffer.
pub(crate) fn with_writer_thread<T>(
    out: &mut (dyn Write + Send),
    control: &Control,
    merge: impl FnOnce(WriteBuf<'_>) -> Result<T, Error>,
) -> Result<(T, u64), Error> {
    let write_err = |source| Error::Write {
        path: PathBuf::from("<output>"),
        source,
    };
    std::thread::scope(|scope| {
        let (full_tx, full_rx) = crossbeam_channel::bounded::<Vec<u8>>(2);
        let (free_tx, free_rx) = crossbeam_channel::bounded::<Vec<u8>>(4);
        let writer = scope.spawn(move || -> Result<u64, Error> {
            let mut written = 0u64;
            for mut buf in full_rx {
                out.write_all(&buf).map_err(write_err)?;
                written += buf.len() as u64;
                buf.clear();
                let _ = free_tx.try_send(buf);
            }
            out.flush().map_err(write_err)?;
            Ok(written)
        });
        let mut send = |buf: &mut Vec<u8>| -> Result<(), Error> {
            if control.is_cancelled() {
                return Err(Error::Cancelled);
            }
            let empty = free_rx.try_recv().unwrap_or_default();
            let full = std::mem::replace(buf, empty);
            // Fails only when the writer stopped on an error, which `join` reports.
            full_tx.send(full).map_err(|_| Error::Cancelled)
        };
        let merged = merge(&mut send);
        drop(full_tx);
        let written = writer
            .join()
            .map_err(|_| Error::Threads("the output writer panicked".into()))?;
        match (merged, written) {
            (Ok(value), Ok(bytes)) => Ok((value, bytes)),
            (_, Err(write_error)) => Err(write_error),
            (Err(error), Ok(_)) => Err(error),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Failing;

    impl Write for Failing {
        fn write(&mut self, _: &[u8]) -> std::io::Result<usize> {
            Err(std::io::Error::other("disk full"))
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn buffers_arrive_in_order() {
        let mut out = Vec::new();
        let (count, bytes) = with_writer_thread(&mut out, &Control::new(), |send| {
            for i in 0..1000 {
                let mut buf = format!("{i}\n").into_bytes();
                send(&mut buf)?;
                assert!(buf.is_empty());
            }
            Ok(1000)
        })
        .expect("writes");
        let expected: String = (0..1000).map(|i| format!("{i}\n")).collect();
        assert_eq!(count, 1000);
        assert_eq!(bytes as usize, expected.len());
        assert_eq!(String::from_utf8(out).expect("utf8"), expected);
    }

    #[test]
    fn a_write_error_is_the_result() {
        let result = with_writer_thread(&mut Failing, &Control::new(), |send| {
            for _ in 0..100 {
                send(&mut b"row\n".to_vec())?;
            }
            Ok(())
        });
        let err = result.expect_err("disk full");
        assert!(err.to_string().contains("disk full"), "{err}");
    }
}
