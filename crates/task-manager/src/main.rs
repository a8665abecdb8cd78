//! `task-manager`: the HTTP service. Configured by environment variables and an optional
//! `.env` file; stops gracefully on Ctrl-C or SIGTERM.

use anyhow::Context;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    keep_freed_memory();
    let dotenv = dotenvy::dotenv();
    telemetry::init("info", telemetry::Stream::Stdout)?;
    match dotenv {
        Ok(path) => tracing::info!("read {}", path.display()),
        Err(e) if e.not_found() => {}
        Err(e) => return Err(e).context("reading .env"),
    }
    let settings = task_manager::Settings::from_env()?;
    let server = task_manager::start(settings).await?;
    shutdown_signal().await;
    tracing::info!("stopping");
    server.shutdown().await;
    Ok(())
}

/// Makes glibc's malloc keep freed memory for reuse. By default it gives blocks from 128 KiB
/// (up to 32 MiB, adapting) back to the kernel on free, and frees the top of its heaps beyond
/// twice that: the buffers an upload passes through were then taken fresh again and again,
/// each page faulted in and zeroed anew, a third of the task manager's CPU while it received
/// an upload (measured: about 1.25 -> 0.85 CPU-s per GB; the engine's speed is unchanged).
/// The memory kept is bounded: up to 32 MiB of free space at the top of each heap.
fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes malloc's tuning parameters; it is called before the
    // service starts allocating in earnest, and any time is allowed.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 4 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 32 << 20);
    }
}

/// Waits for Ctrl-C or, on Unix, SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::error!("cannot listen for Ctrl-C: {e}");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(e) => {
                tracing::error!("cannot listen for SIGTERM: {e}");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = terminate => {}
    }
}
