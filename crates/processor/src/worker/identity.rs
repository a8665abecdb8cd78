//! The worker process's id, sent with its reports: `<hostname>-<pid>-<random>`. The task
//! manager records which process holds each task's lease by it; the random part tells a
//! restarted process (same host, maybe the same pid in a container) from the one before.

use uuid::Uuid;

/// A new id for this process.
pub fn worker_id() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|name| name.trim().to_string())
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| "worker".to_string());
    let random = Uuid::new_v4().simple().to_string();
    format!("{host}-{}-{}", std::process::id(), &random[..8])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_name_the_process_and_differ() {
        let (one, two) = (worker_id(), worker_id());
        assert_ne!(one, two);
        assert!(one.contains(&format!("-{}-", std::process::id())), "{one}");
        assert!(one.len() < 255, "{one}");
    }
}
